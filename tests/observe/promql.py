"""The metric names a PromQL expression selects: a small lexer for dashboard and alert-rule checks.

It follows the PromQL grammar's tokens: strings ('…', "…", `…`) and comments are skipped; label
matchers ``{…}`` are skipped except ``__name__="…"``, which names a metric; ``[…]`` (ranges,
subqueries) are skipped; numbers, durations and ``@`` / ``offset`` modifiers are skipped; an identifier
followed by ``(`` is a function; aggregation operators, set and binary keywords and the label lists of
``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` are skipped; any other identifier
is a metric name. Grafana's ``$var``, ``${var}`` and ``[[var]]`` are skipped too.
"""

from __future__ import annotations

import re

AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
NUMBER = re.compile(r"(0x[0-9a-fA-F]+|[0-9][0-9_]*(\.[0-9_]*)?([eE][+-]?[0-9]+)?|\.[0-9]+)[a-zA-Z0-9_]*")
VARIABLE = re.compile(r"\$(\{[^}]*\}|[a-zA-Z0-9_]+)|\[\[[^\]]*\]\]")
NAME_MATCHER = re.compile(r"""__name__\s*=\s*(["'`])((?:\\.|(?!\1).)*)\1""")
GRAFANA_QUERY = re.compile(r"^\s*(label_values|query_result)\s*\((.*)\)\s*$", re.S)


class PromQLSyntaxError(ValueError):
    """The lexer met something it cannot place (an unclosed string, bracket or brace)."""


def _string_end(text: str, i: int) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\" and quote != "`":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    raise PromQLSyntaxError(f"unclosed string at {i}: {text!r}")


def _close(text: str, i: int, opening: str, closing: str) -> int:
    """Index after the bracket matching ``text[i]`` (strings inside skipped)."""
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c in "\"'`":
            j = _string_end(text, j)
            continue
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise PromQLSyntaxError(f"unclosed {opening!r} at {i}: {text!r}")


def _next_char(text: str, i: int) -> str:
    while i < len(text) and text[i].isspace():
        i += 1
    return text[i] if i < len(text) else ""


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (by name or by ``__name__="…"``)."""
    names: set[str] = set()
    i, n = 0, len(expr)
    skip_list = False  # the next parenthesised list holds label names (after by, on …)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":
            end = expr.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'`":
            i = _string_end(expr, i)
        elif (m := VARIABLE.match(expr, i)) is not None:
            i = m.end()
        elif c == "{":
            end = _close(expr, i, "{", "}")
            names.update(m.group(2) for m in NAME_MATCHER.finditer(expr, i, end))
            i = end
        elif c == "[":
            i = _close(expr, i, "[", "]")
        elif c == "(" and skip_list:
            i, skip_list = _close(expr, i, "(", ")"), False
        elif (m := NUMBER.match(expr, i)) is not None and not IDENT.match(expr, i):
            i = m.end()
        elif (m := IDENT.match(expr, i)) is not None:
            word, i = m.group(), m.end()
            lower = word.lower()
            if lower in LABEL_LISTS:
                skip_list = _next_char(expr, i) == "("
            elif lower in AGGREGATIONS or lower in KEYWORDS or _next_char(expr, i) == "(":
                pass  # an operator or a function call
            else:
                names.add(word)
        else:
            i += 1  # operators, commas, parentheses, @
    return names


def grafana_query_names(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus query: PromQL, or a template variable's ``label_values(selector,
    label)`` / ``label_values(label)`` / ``query_result(expr)``."""
    m = GRAFANA_QUERY.match(query)
    if m is None:
        return metric_names(query)
    func, inner = m.groups()
    if func == "query_result":
        return metric_names(inner)
    selector, comma, _label = inner.rpartition(",")
    return metric_names(selector) if comma else set()


SUFFIXES = {"counter": ("",), "gauge": ("",), "untyped": ("",), "info": ("",), "stateset": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("", "_sum", "_count", "_created"),
            "gaugehistogram": ("_bucket", "_gsum", "_gcount")}


def exposed_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition offers, from its ``# TYPE`` lines (so a family with no
    series yet counts too) and its samples."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.update(name + suffix for suffix in SUFFIXES.get(kind.strip(), ("",)))
        elif line and not line.startswith("#"):
            match = IDENT.match(line)
            if match is not None:
                names.add(match.group())
    return names


def dashboard_queries(dashboard: dict[str, object]) -> list[str]:
    """Every Prometheus query of a Grafana dashboard: panel targets (rows' nested panels too) and template
    variable queries."""
    queries: list[str] = []

    def panels(items: object) -> None:
        for panel in items if isinstance(items, list) else []:
            if not isinstance(panel, dict):
                continue
            queries.extend(str(t["expr"]) for t in panel.get("targets", []) if isinstance(t, dict) and t.get("expr"))
            panels(panel.get("panels"))

    panels(dashboard.get("panels"))
    templating = dashboard.get("templating")
    for var in templating.get("list", []) if isinstance(templating, dict) else []:
        query = var.get("query") if var.get("type") == "query" else None
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and query:
            queries.append(query)
    return queries
