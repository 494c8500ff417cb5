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
from .k8s import ApiError, Cluster
from .progress import read_progress
from .reconcile import Decision, RunState, is_settled, reconcile
from .status import Conditions
from .validation import validate
from .world import ObservedStorage

log = logging.getLogger(__name__)

class OperatorBug(RuntimeError):
    """A reconcile failed for a reason other than the Kubernetes API; recorded on the run as OperatorError."""


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
    # Image prefixes run pods may use (chart: allowedImages); empty: any. Creating a FlowDPORun creates pods.
    allowed_images: tuple[str, ...] = ()

    def sync(self, namespace: str, name: str, logger: logging.Logger | logging.LoggerAdapter = log) -> Decision | None:
        """Bring one run a step closer to its spec. None: the run is gone or settled (nothing to do).

        API errors propagate (the caller retries). Any other exception is a bug or an input the operator did
        not foresee: it ends as condition OperatorError=True on the run (with the error) and is raised as
        OperatorBug, so it is never a silent retry loop."""
        try:
            return self._sync(namespace, name, logger)
        except ApiError:
            raise
        except Exception as e:
            logger.exception("reconciling %s/%s failed", namespace, name)
            self.metrics.reconciles.labels("error").inc()
            message = f"{type(e).__name__}: {str(e)[:500]} (an error of flowdpo-operator; its log has the traceback)"
            try:
                self._record_error(namespace, name, message)
            except ApiError as api:
                logger.warning("could not record the error on %s/%s: %s", namespace, name, api)
            raise OperatorBug(message) from e

    def _record_error(self, namespace: str, name: str, message: str) -> None:
        body = self.cluster.get_run(namespace, name)
        if body is None:
            return
        status = dict(body.get("status") or {})
        conds = Conditions(
            status.get("conditions"), now=rfc3339(self.clock()), generation=int(body["metadata"].get("generation", 0))
        )
        conds.set("OperatorError", True, "InternalError", message)
        self.cluster.patch_status(namespace, name, {**status, "conditions": conds.as_list()})

    def _sync(self, namespace: str, name: str, logger: logging.Logger | logging.LoggerAdapter) -> Decision | None:
        body = self.cluster.get_run(namespace, name)
        if body is None:
            return None
        meta = body["metadata"]
        generation = int(meta.get("generation", 0))
        status = body.get("status") or {}
        if is_settled(status, generation):
            self.metrics.set_phase(namespace, name, status["phase"])
            return None
        validation = validate(body, self.allowed_images, self.cluster.server_version())
        observed = self.cluster.observe(namespace, name, meta["uid"])
        self.metrics.set_failed_pods(namespace, name, {step: j.failed_pods for step, j in observed.jobs.items()})
        if validation.doc is not None:
            observed = dataclasses.replace(observed, storage=self._storage(namespace, validation.doc))
        run = RunState(Owner(name, namespace, meta["uid"]), generation, status, validation)
        decision = reconcile(run, observed, now=rfc3339(self.clock()))
        for action in decision.actions:
            logger.info(self.cluster.apply(namespace, action))
        if decision.status_changed:
            self.cluster.patch_status(namespace, name, decision.status)
        self.metrics.set_phase(namespace, name, decision.status["phase"])
        if "examples" in decision.status:
            self.metrics.examples.labels(namespace, name).set(decision.status["examples"])
        result = "invalid" if decision.invalid else "blocked" if decision.blocked else "ok"
        self.metrics.reconciles.labels(result).inc()
        return decision

    def _storage(self, namespace: str, doc: RunDocument) -> ObservedStorage:
        secret_name = doc.spec.storage.secret_name
        env = None
        if secret_name:
            try:
                env = self.cluster.read_secret(namespace, secret_name)
            except ApiError as e:
                if e.status != 403:
                    raise
                return ObservedStorage(
                    not_read=f"the operator may not read Secret {secret_name!r} in namespace {namespace!r} (RBAC). "
                    "Grant it (chart: watchNamespaces, or rbac.clusterWideSecrets: true) to mirror progress"
                )
            if env is None:
                return ObservedStorage(secret_missing=True)
        elif not self.ambient_credentials:
            return ObservedStorage(
                not_read="spec.storage.secretName is not set and the operator does not use its own identity for "
                "runs; name a Secret, or let the operator use its identity (chart: ambientStorageCredentials: true)"
            )
        return self.progress_reader(doc.storage_uri(), env)
