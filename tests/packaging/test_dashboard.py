"""The Grafana dashboard (charts/flowdpo/dashboards/flowdpo.json) queries only what flowdpo exports.

Every PromQL metric name exists in flowdpo.metrics (counter `_total`, histogram `_bucket/_sum/_count`),
every label a query matches on or aggregates by exists on its metric, every panel reads the `${datasource}`
variable, and every metric family flowdpo defines has a panel. tests/integration/test_prometheus_scrape.py runs the same
queries against a real Prometheus scraping a real run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.dashboard_queries import (
    DASHBOARD,
    DASHBOARD_DIR,
    TARGET_LABELS,
    aggregation_labels,
    external_metric_names,
    external_targets,
    label_values_query,
    load_dashboard,
    metric_families,
    metric_names,
    panels,
    selector_labels,
    substitute,
    targets,
    variables,
)

DASHBOARD_JSON = load_dashboard()
FAMILIES = metric_families()
TARGETS = targets(DASHBOARD_JSON)

# What DESIGN.md ("Observability") and issue #4 ask the dashboard to show, by the series that carries it.
REQUIRED = {
    "examples scored (examples/hour)": "flowdpo_examples_total",
    "progressive accuracy": "flowdpo_progressive_accuracy",
    "baseline accuracies": "flowdpo_baseline_accuracy",
    "pairs mined by adapter": "flowdpo_pairs_mined_total",
    "tokens generated (tokens/s)": "flowdpo_tokens_generated_total",
    "trainer steps": "flowdpo_trainer_steps_total",
    "DPO loss": "flowdpo_dpo_loss",
    "DPO reward margin": "flowdpo_dpo_reward_margin",
    "adapter versions": "flowdpo_adapter_version",
    "adapter version lag": "flowdpo_adapter_version_lag",
    "adapter load latency": "flowdpo_adapter_load_seconds_bucket",
    "shard latency": "flowdpo_shard_seconds_bucket",
    "run phase": "flowdpo_run_phase",
    "pending shards": "flowdpo_pending_shards",
    "shard claims": "flowdpo_shard_claims_total",
}


def test_every_dashboard_file_is_a_grafana_dashboard():
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert DASHBOARD in files
    uids = []
    for path in files:
        board = json.loads(path.read_text())
        assert board["schemaVersion"] >= 36, f"{path.name}: export it from Grafana 10 (schemaVersion >= 36)"
        assert board["id"] is None, f"{path.name}: a provisioned dashboard must not carry a database id"
        assert board["title"] and board["uid"]
        uids.append(board["uid"])
    assert len(set(uids)) == len(uids), "dashboard uids must be unique"


def test_the_dashboard_has_queries():
    assert len(TARGETS) >= 20


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_every_metric_name_exists_in_flowdpo_metrics(target):
    names = metric_names(target.expr)
    assert names, f"{target}: queries no flowdpo_ metric"
    unknown = names - FAMILIES.keys()
    assert not unknown, f"{target}: {sorted(unknown)} not exported by flowdpo.metrics.Metrics"


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_every_label_a_query_uses_exists_on_its_metric(target):
    for metric, matched in selector_labels(target.expr):
        missing = matched - FAMILIES[metric].labels_of(metric) - TARGET_LABELS
        assert not missing, f"{target}: {metric} has no label(s) {sorted(missing)}"
    for grouping, body in aggregation_labels(target.expr):
        for metric in metric_names(body):
            missing = grouping - FAMILIES[metric].labels_of(metric) - TARGET_LABELS
            assert not missing, f"{target}: `by` {sorted(missing)} is not a label of {metric}"


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_every_query_selects_the_dashboards_run_and_namespace(target):
    """Pods' series carry the run's namespace as `namespace`; the operator's as `run_namespace`."""
    for metric, matched in selector_labels(target.expr):
        assert "run" in matched and matched & {"namespace", "run_namespace"}, (
            f"{target}: {metric} ignores the run/namespace variables"
        )


def test_every_panel_reads_the_datasource_variable():
    assert variables(DASHBOARD_JSON)["datasource"]["type"] == "datasource"
    assert variables(DASHBOARD_JSON)["datasource"]["query"] == "prometheus"
    for panel in panels(DASHBOARD_JSON):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"], f"{panel['title']} {t['refId']}"
    for name in ("namespace", "run"):
        assert variables(DASHBOARD_JSON)[name]["datasource"]["uid"] == "${datasource}"


def test_run_and_namespace_variables_list_label_values_of_flowdpo_metrics():
    for name in ("namespace", "run"):
        var = variables(DASHBOARD_JSON)[name]
        selector, label = label_values_query(var["definition"])
        assert label == name
        assert metric_names(selector) <= FAMILIES.keys() and metric_names(selector)
        assert var["query"]["query"] == var["definition"]
        # "All" must match series without the label too (a plain Prometheus scrape config has no namespace).
        assert var["includeAll"] and var["allValue"] == ".*"


def test_every_query_uses_only_defined_variables():
    values = {name: "x" for name in variables(DASHBOARD_JSON)}
    for target in TARGETS:
        assert "$" not in substitute(target.expr, values), target


@pytest.mark.parametrize("what", REQUIRED)
def test_what_the_design_asks_for_is_on_a_panel(what):
    series = REQUIRED[what]
    assert series in FAMILIES, f"{series} ({what}) is no longer defined in flowdpo/metrics.py"
    assert any(series in metric_names(t.expr) for t in TARGETS), f"no panel shows {what} ({series})"


def test_every_run_metric_flowdpo_defines_is_on_a_panel():
    """Every metric of worker and trainer pods (flowdpo.metrics.Metrics); the operator's own are optional."""
    used = {FAMILIES[name].name for t in TARGETS for name in metric_names(t.expr)}
    unused = {f.name for f in metric_families(operator=False).values()} - used
    assert not unused, f"metrics without a panel: {sorted(unused)}; add a panel to {DASHBOARD.name}"


def test_panels_are_laid_out_without_overlap():
    cells: dict[tuple[int, int], str] = {}
    ids = [p["id"] for p in panels(DASHBOARD_JSON)]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for panel in panels(DASHBOARD_JSON):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{panel['title']} is outside the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(set(refs)) == len(refs), f"{panel['title']}: duplicate refIds"


# The GPU and vLLM panels read other exporters' series. DCGM fields: dcgm-exporter's default counters (and the
# DCP profiling field for tensor activity); vLLM names: the ones its metrics code declares (checked below).
DCGM_FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
}
EXTERNAL = external_targets(DASHBOARD_JSON)


def test_gpu_and_vllm_panels_exist():
    names = {n for t in EXTERNAL for n in external_metric_names(t.expr)}
    assert DCGM_FIELDS <= names, "the GPU panels (DCGM)"
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:generation_tokens_total",
            "vllm:time_to_first_token_seconds_bucket"} <= names, "the vLLM server panels"
    assert all(external_metric_names(t.expr) for t in EXTERNAL), "every query reads flowdpo, DCGM or vLLM series"


@pytest.mark.parametrize("target", EXTERNAL, ids=str)
def test_external_metric_names_are_real(target):
    """vLLM names: declared in the installed vLLM's metrics code (counters get `_total`, histograms
    `_bucket`); DCGM names: the fields listed above."""
    import importlib.util

    for name in external_metric_names(target.expr):
        if name.startswith("DCGM_"):
            assert name in DCGM_FIELDS, f"{target}: {name} is not a DCGM field this dashboard knows"
            continue
        spec = importlib.util.find_spec("vllm")
        if spec is None:
            pytest.skip("vLLM is not installed: its metric names cannot be checked")
        source = "".join(p.read_text() for p in (Path(spec.origin).parent / "v1" / "metrics").glob("*.py"))
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in source, f"{target}: vLLM declares no metric {base!r}"


@pytest.mark.parametrize("target", EXTERNAL, ids=str)
def test_external_queries_select_the_runs_pods(target):
    """Other exporters know no `run`: the queries select the run's pods by name (<run>-<component>-...)."""
    assert 'namespace=~"$namespace"' in target.expr and 'pod=~"($run)-' in target.expr, target
    values = {name: "x" for name in variables(DASHBOARD_JSON)}
    assert "$" not in substitute(target.expr, values), target
