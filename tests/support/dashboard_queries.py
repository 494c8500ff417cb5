"""The Grafana dashboard shipped in the chart, read the way Grafana reads it: its panels, their PromQL
targets, the template variables they use, and the metric names and labels those queries need. Shared by
tests/packaging/test_dashboard.py (static checks against flowdpo.metrics) and tests/integration/test_prometheus_scrape.py (every
query against a real Prometheus scraping a real run)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from flowdpo.metrics import Metrics
from flowdpo_operator.metrics import OperatorMetrics
from tests.support.paths import ROOT

CHART = ROOT / "charts" / "flowdpo"
DASHBOARD_DIR = CHART / "dashboards"
DASHBOARD = DASHBOARD_DIR / "flowdpo.json"

# Labels Prometheus adds to every scraped series (a PodMonitor: namespace, pod, container, endpoint).
TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "job", "instance"})

_METRIC_RE = re.compile(r"\bflowdpo_[a-zA-Z0-9_]*[a-zA-Z0-9]")
_VARIABLE_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES_RE = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Target:
    panel: str
    ref_id: str
    expr: str
    datasource: dict | None

    def __str__(self) -> str:
        return f"panel {self.panel!r} query {self.ref_id}: {self.expr}"


@dataclass(frozen=True)
class Family:
    """One metric family of flowdpo.metrics: the series names it exports and its label names."""

    name: str
    kind: str
    labels: tuple[str, ...]

    @property
    def series_names(self) -> frozenset[str]:
        if self.kind == "counter":
            return frozenset({f"{self.name}_total"})
        if self.kind == "histogram":
            return frozenset({f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count"})
        return frozenset({self.name})

    def labels_of(self, series: str) -> frozenset[str]:
        return frozenset(self.labels) | ({"le"} if series.endswith("_bucket") else set())


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def all_targets(dashboard: dict) -> list[Target]:
    return [
        Target(p["title"], t["refId"], t["expr"], t.get("datasource"))
        for p in panels(dashboard)
        for t in p.get("targets", [])
        if "expr" in t
    ]


def targets(dashboard: dict) -> list[Target]:
    """The queries of flowdpo's own metrics (flowdpo_*)."""
    return [t for t in all_targets(dashboard) if metric_names(t.expr)]


def external_targets(dashboard: dict) -> list[Target]:
    """The queries of other exporters' metrics: the GPUs (dcgm-exporter, DCGM_*) and the vLLM servers (vllm:*)."""
    return [t for t in all_targets(dashboard) if not metric_names(t.expr)]


_EXTERNAL_RE = re.compile(r"\b(DCGM_FI_[A-Z0-9_]+|vllm:[a-z0-9_:]+)")


def external_metric_names(expr: str) -> set[str]:
    return set(_EXTERNAL_RE.findall(expr))


def variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def metric_names(expr: str) -> set[str]:
    return set(_METRIC_RE.findall(expr))


def substitute(expr: str, values: dict[str, str], rate_interval: str = "15s") -> str:
    """The query Grafana sends: template variables and $__rate_interval replaced. An unknown variable raises,
    so a query using a variable the dashboard does not define cannot pass."""
    values = {"__rate_interval": rate_interval, **values}

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"query uses ${name}, which is not a template variable: {expr}")
        return values[name]

    return _VARIABLE_RE.sub(repl, expr)


def label_values_query(definition: str) -> tuple[str, str]:
    """`label_values(selector, label)` of a query variable -> (selector, label)."""
    m = _LABEL_VALUES_RE.match(definition.strip())
    if not m:
        raise ValueError(f"not a label_values() variable query: {definition}")
    return m.group("selector").strip(), m.group("label")


def aggregation_labels(expr: str) -> list[tuple[set[str], str]]:
    """Each `by (labels) (body)` of an expression as (labels, body): the labels must exist on the body's
    metrics."""
    out = []
    for m in re.finditer(r"\bby\s*\(([^)]*)\)\s*\(", expr):
        labels = {x.strip() for x in m.group(1).split(",") if x.strip()}
        depth, i = 1, m.end()
        while depth and i < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        out.append((labels, expr[m.end() : i - 1]))
    return out


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """Each `metric{matchers}` of an expression as (metric, label names matched)."""
    return [
        (m.group(1), set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2))))
        for m in re.finditer(r"\b(flowdpo_\w+)\{([^}]*)\}", expr)
    ]


def metric_families(*, operator: bool = True) -> dict[str, Family]:
    """Series name -> family, for every metric of flowdpo.metrics (on fresh registries): the pods' `Metrics`
    and, with `operator`, the operator's `OperatorMetrics`. A name both define (flowdpo_run_phase) gets the
    union of their labels."""
    instances = [Metrics("dashboard-test", registry=CollectorRegistry())]
    if operator:
        instances.append(OperatorMetrics(registry=CollectorRegistry()))
    families: dict[str, Family] = {}
    for instance in instances:
        for value in vars(instance).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            # prometheus_client keeps a family's label names only on the wrapper (no public accessor).
            family = Family(value._name, value._type, tuple(value._labelnames))
            for series in family.series_names:
                known = families.get(series)
                if known is not None:
                    assert known.kind == family.kind, f"{series} is a {known.kind} and a {family.kind}"
                    labels = tuple(dict.fromkeys(known.labels + family.labels))
                    family = Family(family.name, family.kind, labels)
                families[series] = family
    return families
