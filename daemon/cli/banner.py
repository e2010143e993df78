"""What ``tracecanary run`` says when it starts and when it stops: one line each, key=value in text,
the same keys as fields in JSON."""

from __future__ import annotations

import logging
import os
import platform
from urllib.parse import urlsplit, urlunsplit

from tracecanary import __version__
from tracecanary.daemon.config.load import Config
from tracecanary.daemon.config.settings import DaemonSettings
from tracecanary.daemon.engine import Overrides

log = logging.getLogger("tracecanary.daemon")
MASK = "***"


def mask_url_password(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (``postgresql://u:***@db/tc``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def cluster_mode(settings: DaemonSettings) -> str:
    """The cluster mode the daemon runs in (``daemon.cluster.mode``)."""
    return str(settings.cluster.mode)


def start_fields(config_path: str, cfg: Config, overrides: Overrides) -> dict[str, object]:
    """The start banner's fields: version, config files, store URL (password masked), cluster mode and
    the configured listen addresses (the bound ones follow in the ``daemon ready`` line)."""
    d = cfg.daemon
    otlp_http = overrides.otlp_http or d.otlp.http or "none"
    otlp_grpc = overrides.otlp_grpc or d.otlp.grpc or "none"
    store = cfg.secrets().mask_text(mask_url_password(overrides.store or d.store))
    return {"version": __version__, "python": platform.python_version(), "pid": os.getpid(),
            "config": config_path, "files": ",".join(cfg.sources) or config_path, "store": store,
            "cluster": cluster_mode(d), "listen": overrides.listen or d.listen, "otlp_http": otlp_http,
            "otlp_grpc": otlp_grpc, "probes": len(cfg.probes)}


def log_start(config_path: str, cfg: Config, overrides: Overrides) -> None:
    log.info("tracecanary starting", extra={"fields": start_fields(config_path, cfg, overrides)})


def log_exit(code: int, reason: str) -> None:
    """The last line of ``run``: its exit code and why it stopped."""
    level = logging.INFO if code == 0 else logging.ERROR
    log.log(level, "tracecanary exiting", extra={"fields": {"code": code, "reason": reason}})
