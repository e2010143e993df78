"""Load YAML suites and daemon settings into typed models; every error names file:line and path.

``load_config(path)`` takes a file or a directory (all ``*.yaml``/``*.yml`` merged, sorted by name)
and either returns a ``Config`` or raises ``ConfigError`` listing every problem at once:

    config/demo.yaml:14 probes[orders-webhook].expect.trace.tree[0].span: …

``${VAR}`` / ``${VAR:-default}`` expand from ``environ`` (default ``os.environ``) and ``${file:/path}``
reads a secret file, at load; ``{{ … }}`` templates are left for the run (but compiled now). Every
value so expanded is a secret (``Config.secrets()``) unless written ``${public:VAR}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from tracecanary.assertions.units import Duration
from tracecanary.daemon.config.checks import RawProbe, credential_errors, cross_checks, template_errors
from tracecanary.daemon.config.secrets import Secrets
from tracecanary.daemon.config.settings import DaemonSettings, ExtraSections
from tracecanary.daemon.config.suite_schema import schema
from tracecanary.daemon.config.yaml_doc import (
    ADDRESSES,
    Doc,
    Loc,
    UnsetVariableError,
    compose,
    expand_env,
    line_of,
    located,
    message,
    pydantic_errors,
    render_loc,
    shown,
)
from tracecanary.errors import ConfigError
from tracecanary.integrations import Integrations
from tracecanary.model import credential_values
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.registry import PROBES


# --- the model -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigWarning:
    """Something that loads but will not do what it seems to. ``validate`` prints it; it is never an
    error and never changes an exit code."""

    where: str
    """``file:line path`` like an error's."""
    message: str

    def __str__(self) -> str:
        return f"{self.where}: warning: {self.message}"


class Config(BaseModel):
    """A whole configuration: probes plus daemon settings, integrations, links and alerts."""

    model_config = {"arbitrary_types_allowed": True}

    probes: list[ProbeSpec] = Field(default_factory=list)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    integrations: Integrations = Field(default_factory=Integrations)
    extra: ExtraSections = Field(default_factory=ExtraSections)
    sources: list[str] = Field(default_factory=list)
    warnings: list[ConfigWarning] = Field(default_factory=list)
    """What loaded but looks wrong (printed by ``validate``)."""
    substituted: list[str] = Field(default_factory=list, repr=False, exclude=True)
    """Values ``${VAR}``/``${file:…}`` put in the files: secrets by provenance."""
    _secrets: Secrets | None = PrivateAttr(None)

    def probe(self, probe_id: str) -> ProbeSpec:
        for p in self.probes:
            if p.id == probe_id:
                return p
        raise KeyError(probe_id)

    def secrets(self) -> Secrets:
        """Every value that must not leave the daemon in clear: each ``${VAR}``/``${file:…}`` value, every
        credential field's value (auth, headers, signing secrets, tokens) and the store URL's password."""
        if self._secrets is None:
            values = [*self.substituted, *credential_values(self)]
            store_password = urlsplit(self.daemon.store).password
            if store_password:
                values.append(unquote(store_password))
            self._secrets = Secrets(values)
        return self._secrets

    def uses_github_webhooks(self) -> bool:
        """Whether a probe is a github_webhook probe or watches GitHub (reads /hooks/github deliveries)."""
        return any(p.kind == "github_webhook" or any(e.kind == "github" for e in p.expect.side_effects)
                   for p in self.probes)


TOP_LEVEL = ("probes", "daemon", "integrations", "links", "alerts", "demo")
SECTIONS = TOP_LEVEL[1:]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        try:
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        except OSError as e:
            raise ConfigError([f"{path}: cannot read directory: {e.strerror}"]) from e
        if not found:
            raise ConfigError([f"{path}: no *.yaml files in directory"])
        return found
    if not path.exists():
        raise ConfigError([f"{path}: no such file or directory"])
    return [path]


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Load a file or directory; raise ConfigError with every problem (file:line path: message).

    ``${VAR}`` references resolve from ``environ`` (default ``os.environ``). Every file is checked to
    the end, and every section of it, so one pass reports every error.
    """
    errors: list[str] = []
    env = os.environ if environ is None else environ
    docs = _read(Path(path), env, errors)
    errors.extend(_unset_errors(docs, env))
    sections: dict[str, tuple[Doc, Any]] = {}
    raw_probes: list[RawProbe] = []
    for doc in docs:
        raw_probes.extend(_top_level(doc, sections, errors))
    loaded = [(raw, _load_probe(raw, errors)) for raw in raw_probes]
    cfg_kwargs: dict[str, Any] = {}
    for key, model in (("daemon", DaemonSettings), ("integrations", Integrations)):
        if key in sections:
            doc, value = sections[key]
            try:
                cfg_kwargs[key] = model.model_validate(value)
            except ValidationError as e:
                errors.extend(pydantic_errors(e, doc, (key,)))
    extra = _extra_sections(sections, errors)
    errors.extend(cross_checks(loaded, sections))
    errors.extend(e for raw in raw_probes for e in template_errors(raw))
    errors.extend(credential_errors(sections, cfg_kwargs.get("integrations")))
    if errors:
        # An error quotes the offending value: never in clear when it came from ${VAR} or ${file:…}.
        substituted = Secrets(v for d in docs for v in d.substituted)
        raise ConfigError([substituted.mask_text(e) for e in sorted(dict.fromkeys(errors), key=_error_order)])
    return Config(
        probes=[p for _, p in loaded if p is not None], extra=extra, sources=[d.path for d in docs],
        substituted=[v for d in docs for v in d.substituted],
        warnings=_warnings([(raw.doc, raw.index, p) for raw, p in loaded if p is not None])
        + _source_warnings([(raw.doc, raw.index, p) for raw, p in loaded if p is not None],
                           cfg_kwargs.get("integrations") or Integrations()), **cfg_kwargs,
    )


def _read(path: Path, environ: Mapping[str, str], errors: list[str]) -> list[Doc]:
    docs: list[Doc] = []
    for f in _files(path):
        try:
            text = f.read_bytes().decode("utf-8")
        except OSError as e:
            errors.append(f"{f}: cannot read: {e.strerror}")
            continue
        except UnicodeDecodeError as e:
            line = e.object[:e.start].count(b"\n") + 1
            errors.append(f"{f}:{line}: not a text file: byte 0x{e.object[e.start]:02x} is not UTF-8")
            continue
        doc = compose(str(f), text, errors, environ)
        if doc is not None:
            docs.append(doc)
    return docs


def _required_env(doc: Doc) -> dict[int, set[str]]:
    """Each probe's ``requires.env`` names as written, by index in the file's ``probes:`` list."""
    out: dict[int, set[str]] = {}
    for i, probe in enumerate(_probe_list(doc)):
        requires = probe.get("requires") if isinstance(probe, dict) else None
        names = requires.get("env") if isinstance(requires, dict) else None
        out[i] = {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()
    return out


def _unset_errors(docs: list[Doc], environ: Mapping[str, str]) -> list[str]:
    """A ``${NAME}`` left unset is an error unless a ``requires.env`` names it — the probe's own for a
    value inside a probe, any probe's elsewhere (an integration token): then it expands to "" (the run
    is skipped: an empty variable is an unmet precondition), and a ``requires.reachable``/``files``
    entry built from it is left out (it names nothing while the variable is missing)."""
    by_doc = {id(doc): _required_env(doc) for doc in docs}
    anywhere = {n for names in by_doc.values() for ns in names.values() for n in ns}
    errors: list[str] = []
    for doc in docs:
        for unset in doc.unset:
            in_probe = unset.loc[:1] == ("probes",) and len(unset.loc) > 1 and isinstance(unset.loc[1], int)
            excused = by_doc[id(doc)].get(int(unset.loc[1]), set()) if in_probe else anywhere
            env = {**environ, **{n: "" for n in excused if n not in environ}}
            try:
                value = expand_env(unset.text, env, None if unset.loc in ADDRESSES else doc.substituted)
            except (UnsetVariableError, ValueError) as e:
                errors.append(f"{doc.path}:{line_of(doc, unset.loc)} {render_loc(unset.loc, doc.data)}: {e}")
                doc.unresolved.add(unset.loc)
                continue
            if in_probe and unset.loc[2:3] == ("requires",) and unset.loc[3:4] in (("reachable",), ("files",)):
                _set_at(doc.data, unset.loc, _LEFT_OUT)
            else:
                _set_at(doc.data, unset.loc, value)
        for probe in _probe_list(doc):
            requires = probe.get("requires") if isinstance(probe, dict) else None
            for key in ("reachable", "files"):
                if isinstance(requires, dict) and isinstance(requires.get(key), list):
                    requires[key] = [v for v in requires[key] if v is not _LEFT_OUT]
    return errors


_LEFT_OUT = object()


def _probe_list(doc: Doc) -> list[Any]:
    listed = doc.data.get("probes") if isinstance(doc.data, dict) else None
    return listed if isinstance(listed, list) else []


def _set_at(data: Any, loc: Loc, value: Any) -> None:
    for part in loc[:-1]:
        data = data[part]
    data[loc[-1]] = value


def _top_level(doc: Doc, sections: dict[str, tuple[Doc, Any]], errors: list[str]) -> list[RawProbe]:
    """Check a file's top level; keep its sections and its probes (every known part, whatever else is wrong)."""
    if not isinstance(doc.data, dict):
        errors.append(f"{doc.path}:1: expected a mapping with probes:, daemon:, integrations:, …, got {shown(doc.data)}")
        return []
    for key, value in doc.data.items():
        where = f"{doc.path}:{line_of(doc, (key,))} {key}"
        if key not in TOP_LEVEL:
            errors.append(f"{where}: unknown key {key!r} (known: {', '.join(TOP_LEVEL)})")
        elif value is not None and key in SECTIONS and not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {shown(value)}")
        elif key in SECTIONS and value is not None:
            if key in sections:
                errors.append(f"{where}: also set in {sections[key][0].path}; set each section in one file")
            else:
                sections[key] = (doc, value)
    listed = doc.data.get("probes")
    if listed is None:
        return []
    if not isinstance(listed, list):
        errors.append(f"{doc.path}:{line_of(doc, ('probes',))} probes: expected a list, got {shown(listed)}")
        return []
    return [RawProbe(doc, i, raw) for i, raw in enumerate(listed)]


def _extra_sections(sections: dict[str, tuple[Doc, Any]], errors: list[str]) -> ExtraSections:
    """``links:``, ``alerts:`` and ``demo:`` validated together (alerts refer to each other)."""
    extra_raw = {k: sections[k][1] for k in ("links", "alerts", "demo") if k in sections}
    if not extra_raw:
        return ExtraSections()
    try:
        return ExtraSections.model_validate(extra_raw)
    except ValidationError as e:
        by_top: dict[str, list[Any]] = {}
        for err in e.errors():
            by_top.setdefault(str(err["loc"][0]), []).append({**err, "loc": err["loc"][1:], "full": err})
        for top, errs in by_top.items():
            doc = sections[top][0]
            for inner, err in located(errs, sections[top][1], ()):
                loc = (top, *inner)
                errors.append(f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}: {message(err['full'])}")
        return ExtraSections()


def _error_order(line: str) -> tuple[str, int]:
    m = re.match(r"^(.*?):(\d+)[ :]", line)
    return (m.group(1), int(m.group(2))) if m else (line, 0)


def _load_probe(raw: RawProbe, errors: list[str]) -> ProbeSpec | None:
    doc, loc = raw.doc, raw.loc
    where = f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}"
    if not isinstance(raw.data, dict):
        errors.append(f"{where}: expected a mapping, got {shown(raw.data)}")
        return None
    kind = raw.data.get("kind")
    if not isinstance(kind, str) or kind not in PROBES:  # a list or a mapping is no key of PROBES
        kloc = (*loc, "kind")
        known = ", ".join(sorted(PROBES))
        what = f"unknown probe kind {kind!r}" if kind is not None else "kind is required"
        errors.append(f"{doc.path}:{line_of(doc, kloc)} {render_loc(kloc, doc.data)}: {what} (known: {known})")
        return None
    try:
        # the context lets a kind resolve files relative to its config file (a grpc probe's proto_file)
        return PROBES[kind].model_validate(raw.data, context={"config_path": doc.path})
    except ValidationError as e:
        errors.extend(pydantic_errors(e, doc, loc))
        return None


EVENTS_API_THREAD = (
    "deliver: events_api sends a synthetic app_mention whose ts is no message in a real workspace; a "
    "reply threaded under it has no parent (conversations.replies answers thread_not_found), so "
    "in_thread: true can only pass against an emulator. Use deliver: post, set thread: to a real "
    "thread ts, or drop in_thread (docs/slack-github.md)"
)


def _synthetic_mention(spec: ProbeSpec) -> bool:
    """Whether the run's Slack mention (the probe's, or a steps probe's last) is a synthetic
    events_api callback with no real thread to answer in."""
    from tracecanary.probes.slack import SlackMentionProbe
    from tracecanary.probes.steps import StepsProbe

    fields: Mapping[str, Any] = {}
    if isinstance(spec, SlackMentionProbe):
        fields = {"deliver": spec.deliver, "thread": spec.thread}
    elif isinstance(spec, StepsProbe):
        mentions = [s.slack_mention for s in spec.steps if s.slack_mention is not None]
        fields = mentions[-1] if mentions else {}
    return fields.get("deliver") == "events_api" and not fields.get("thread")


def _warnings(probes: list[tuple[Doc, int, ProbeSpec]]) -> list[ConfigWarning]:
    found: list[ConfigWarning] = []
    for doc, i, spec in probes:
        if not _synthetic_mention(spec):
            continue
        for j, effect in enumerate(spec.expect.side_effects):
            if effect.slack is not None and effect.slack.in_thread:
                loc: Loc = ("probes", i, "expect", "side_effects", j, "slack", "in_thread")
                found.append(ConfigWarning(f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}",
                                           EVENTS_API_THREAD))
    return found


def _source_warnings(probes: list[tuple[Doc, int, ProbeSpec]], integrations: Integrations) -> list[ConfigWarning]:
    """A pulled ``expect.trace.source`` whose integration is not configured (here or in another file of
    the directory): each run would end in error."""
    from tracecanary.daemon.spans.sources import NEEDS, PULLED, configured

    ready = set(configured(integrations))
    found: list[ConfigWarning] = []
    for doc, i, spec in probes:
        source = spec.expect.trace.source if spec.expect.trace is not None else "buffer"
        if source in PULLED and source not in ready:
            loc: Loc = ("probes", i, "expect", "trace", "source")
            found.append(ConfigWarning(f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}",
                                       f"source {source} needs {NEEDS[source]}: each run ends in error until it is set"))
    return found


__all__ = ["Config", "ConfigError", "ConfigWarning", "Duration", "expand_env", "load_config", "schema"]
