"""One sync of one FlowDPORun: read the world, decide (`reconcile`, pure), act, write the status.

    run object (fresh GET) ─> validate ─> observe children ─> read progress.json ─> reconcile ─> actions
                                                                                             └─> status (if changed)

Every trigger (create, update, resume, the periodic timer) calls `sync`; it re-reads the run instead of
trusting the handler's body, so a timer and an event handler that race (serialized per run by the
handlers) decide from the same, current object.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping

from flowdpo.spec import RunDocument
from flowdpo_operator.metrics import OperatorMetrics

from .builders import Owner
from .k8s import Cluster
from .progress import read_progress
from .reconcile import Decision, RunState, is_settled, reconcile
from .validation import validate
from .world import ObservedStorage

log = logging.getLogger(__name__)

ProgressReader = Callable[[str, Mapping[str, str] | None], ObservedStorage]


def rfc3339(now: dt.datetime) -> str:
    return now.astimezone(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Controller:
    cluster: Cluster
    metrics: OperatorMetrics
    progress_reader: ProgressReader = read_progress
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
    # Read the storage of runs that name no Secret with the operator's own identity (its environment,
    # workload identity, instance metadata). Off by default: a run's creator must not borrow the operator's
    # access to buckets (chart: ambientStorageCredentials).
    ambient_credentials: bool = False

    def sync(self, namespace: str, name: str, logger: logging.Logger | logging.LoggerAdapter = log) -> Decision | None:
        """Bring one run a step closer to its spec. None: the run is gone or settled (nothing to do)."""
        body = self.cluster.get_run(namespace, name)
        if body is None:
            return None
        meta = body["metadata"]
        generation = int(meta.get("generation", 0))
        status = body.get("status") or {}
        if is_settled(status, generation):
            self.metrics.set_phase(namespace, name, status["phase"])
            return None
        validation = validate(body)
        observed = self.cluster.observe(namespace, name, meta["uid"])
        if validation.doc is not None:
            observed = dataclasses.replace(observed, storage=self._storage(namespace, validation.doc))
        run = RunState(Owner(name, namespace, meta["uid"]), generation, status, validation)
        decision = reconcile(run, observed, now=rfc3339(self.clock()))
        for action in decision.actions:
            logger.info(self.cluster.apply(namespace, action))
        if decision.status_changed:
            self.cluster.patch_status(namespace, name, decision.status)
        self.metrics.set_phase(namespace, name, decision.status["phase"])
        result = "invalid" if decision.invalid else "blocked" if decision.blocked else "ok"
        self.metrics.reconciles.labels(result).inc()
        return decision

    def _storage(self, namespace: str, doc: RunDocument) -> ObservedStorage:
        secret_name = doc.spec.storage.secret_name
        env = None
        if secret_name:
            env = self.cluster.read_secret(namespace, secret_name)
            if env is None:
                return ObservedStorage(secret_missing=True)
        elif not self.ambient_credentials:
            return ObservedStorage(no_credentials=True)
        return self.progress_reader(doc.storage_uri(), env)
