"""The PromQL metric-name lexer the dashboard check relies on, on the constructs it must see through."""

from __future__ import annotations

import pytest

from tests.observe.promql import PromQLSyntaxError, exposed_names, grafana_query_names, metric_names

CASES = {
    'sum(probe_success{probe=~"$probe"}) / count(probe_success{probe=~"$probe"})': {"probe_success"},
    "histogram_quantile(0.95, sum by (le, probe) (rate(probe_duration_seconds_bucket[$__rate_interval])))":
        {"probe_duration_seconds_bucket"},
    "sum without (instance) (rate(a_total[5m] offset 1h)) > bool 0": {"a_total"},
    "time() - max(process_start_time_seconds * on(instance, job) group_left(version) tracecanary_build_info)":
        {"process_start_time_seconds", "tracecanary_build_info"},
    "count(tracecanary_alert_state == 2) or vector(0)": {"tracecanary_alert_state"},
    "a unless on (job) b and ignoring (x) c": {"a", "b", "c"},
    'max_over_time(up{job="x by (y)"}[1h:5m] @ end())': {"up"},
    '{__name__="probe_success", probe="a"} + {__name__ = \'other\'}': {"probe_success", "other"},
    "topk(3, sum(rate(x:recorded:rate5m[${__range}]))) # comment names_nothing": {"x:recorded:rate5m"},
    "avg_over_time(probe_success[$__range]) * 100 + 1e3 - 0x1f + Inf - NaN": {"probe_success"},
    "sum(rate(m[5m])) by (le) / ignoring(le) group_right sum(n)": {"m", "n"},
    "label_replace(up, \"dst\", \"$1\", \"src\", \"(.*)\")": {"up"},
    "quantile(0.9, x) / count_values(\"v\", y)": {"x", "y"},
}


@pytest.mark.parametrize("expr", CASES)
def test_metric_names(expr: str) -> None:
    assert metric_names(expr) == CASES[expr]


def test_grafana_variable_queries() -> None:
    assert grafana_query_names("label_values(tracecanary_alert_state, probe)") == {"tracecanary_alert_state"}
    assert grafana_query_names('label_values(probe_success{kind="http"}, probe)') == {"probe_success"}
    assert grafana_query_names("label_values(probe)") == set()
    assert grafana_query_names("query_result(topk(5, probe_success))") == {"probe_success"}
    assert grafana_query_names("rate(x_total[5m])") == {"x_total"}


def test_unclosed_input_is_an_error() -> None:
    for expr in ('up{job="x}', "rate(x[5m)", "sum(x{a='b')"):
        with pytest.raises(PromQLSyntaxError):
            metric_names(expr)


def test_exposed_names_count_families_without_series() -> None:
    text = ("# HELP a_seconds A.\n# TYPE a_seconds histogram\n# TYPE b gauge\nb 1.0\n"
            "# TYPE c_total counter\nc_total{x=\"1\"} 2.0\n")
    assert exposed_names(text) == {"a_seconds_bucket", "a_seconds_sum", "a_seconds_count", "a_seconds_created",
                                   "b", "c_total"}
