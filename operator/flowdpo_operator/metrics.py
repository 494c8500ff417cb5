"""The operator's own Prometheus metrics (the run processes' metrics are `flowdpo.metrics.Metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from flowdpo.names import PHASES


class OperatorMetrics:
    """The operator's own metrics (`flowdpo-operator --metrics-port`): the phase of every FlowDPORun it
    manages (workers and trainer stop exporting theirs when training ends; the operator knows Compiling,
    Succeeded and Failed too) and the outcome of its reconciles. `run_namespace`, not `namespace`: scrape
    configs add `namespace` for the operator pod's own namespace."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.phase = Gauge(
            "flowdpo_run_phase", "1 for the run's current phase", ["run_namespace", "run", "phase"], registry=r
        )
        self.reconciles = Counter(
            "flowdpo_operator_reconciles_total",
            "Reconciles of a FlowDPORun by outcome (ok, invalid, blocked, error)",
            ["result"],
            registry=r,
        )
        for result in ("ok", "invalid", "blocked", "error"):
            self.reconciles.labels(result)
        self.failed_pods = Gauge(
            "flowdpo_job_failed_pods",
            "Failed pods of a run's step Job (status.failed; each retry under backoffLimit is a new pod)",
            ["run_namespace", "run", "step"],
            registry=r,
        )
        self._steps: dict[tuple[str, str], set[str]] = {}
        self.examples = Gauge(
            "flowdpo_run_examples",
            "Examples scored, as mirrored from progress.json into the run's status (stays while pods come and go)",
            ["run_namespace", "run"],
            registry=r,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def set_phase(self, namespace: str, run: str, phase: str) -> None:
        for p in PHASES:
            self.phase.labels(namespace, run, p).set(1.0 if p == phase else 0.0)

    def set_failed_pods(self, namespace: str, run: str, by_step: dict[str, int]) -> None:
        """One series per Job that exists; a deleted Job's series goes (a retried step starts again at 0)."""
        for step in self._steps.get((namespace, run), set()) - set(by_step):
            self.failed_pods.remove(namespace, run, step)
        for step, count in by_step.items():
            self.failed_pods.labels(namespace, run, step).set(count)
        self._steps[(namespace, run)] = set(by_step)

    def forget(self, namespace: str, run: str) -> None:
        """Drop a deleted run's series."""
        self.set_failed_pods(namespace, run, {})
        self._steps.pop((namespace, run), None)
        try:
            self.examples.remove(namespace, run)
        except KeyError:
            pass
        for p in PHASES:
            try:
                self.phase.remove(namespace, run, p)
            except KeyError:
                pass
