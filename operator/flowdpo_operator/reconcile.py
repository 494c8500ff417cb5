"""The run's state machine: (run, observed world) -> (actions, new status). Pure: no I/O, no clock.

Level-based: every call starts from what exists now (children owned by the run, progress.json, the
previous status for the sticky milestones), so a restarted operator computes the same decision from the
same world and creates nothing twice. The pipeline is a list of steps, each done when its Job completed:

    weights ──> prepare ──> trainer (+ rollout Deployment) ──> compile ──> eval
    Preparing   Preparing   Training                           Compiling               then Succeeded
    (weights: kubernetes.modelCache with prefetch; compile/eval: runCompile)

The current step is the first one not done. Its Job is created when absent; the rollout Deployment exists
exactly while the trainer step is current (then it is deleted: its GPUs are free for compile). A Job that
failed (backoffLimit exceeded) makes the run Failed; deleting that Job retries the step. `spec.suspend`
scales the rollout to 0 and stops the current step's Job: on servers with Job.spec.suspend (1.22+) by setting
it (the Job stays; resuming unsets it), on older ones, and for Jobs Kueue manages (Kueue owns their
spec.suspend: it would start an admitted Job again), by deleting the Job; resuming recreates it. Either way
the step resumes from object storage.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowdpo.spec import RunDocument

from . import builders
from .builders import Owner, child_name
from .placement import PREFETCH, kueue_managed
from .status import MILESTONES, Conditions, progress_fields, summary, without_nulls
from .validation import Validation, immutable_changes
from .world import (
    Action,
    Create,
    Delete,
    Event,
    JobState,
    Observed,
    ObservedJob,
    ObservedStorage,
    Replace,
    SuspendJob,
)

PHASE_OF_STEP = {
    PREFETCH: "Preparing", "prepare": "Preparing", "trainer": "Training", "compile": "Compiling", "eval": "Compiling"
}
STEP_TITLE = {PREFETCH: "Prefetch", "prepare": "Prepare", "trainer": "Trainer", "compile": "Compile", "eval": "Eval"}


@dataclass(frozen=True)
class RunState:
    """The FlowDPORun as read from the API: who it is, which generation, its status, its validated spec."""

    owner: Owner
    generation: int
    status: Mapping[str, Any]
    validation: Validation


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    status: dict[str, Any]
    events: tuple[Event, ...] = ()
    invalid: tuple[str, ...] = ()  # the spec's errors (the handler raises kopf.PermanentError)
    blocked: str = ""  # what progress waits for outside the operator (the handler retries later)
    previous_status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status_changed(self) -> bool:
        return self.status != dict(self.previous_status)


def is_settled(status: Mapping[str, Any], generation: int) -> bool:
    """A Succeeded run whose current spec was seen: nothing left to observe or do."""
    return status.get("phase") == "Succeeded" and status.get("observedGeneration") == generation


def steps_of(doc: RunDocument) -> list[str]:
    k = doc.spec.kubernetes
    prefetch = [PREFETCH] if k.model_cache is not None and k.model_cache.prefetch else []
    return [*prefetch, "prepare", "trainer", *(["compile", "eval"] if k.run_compile else [])]


def reconcile(run: RunState, observed: Observed, *, now: str) -> Decision:
    """Decide what to create/replace/delete and what the status says. `now`: RFC 3339 time for conditions
    that flip in this call."""
    previous = dict(run.status or {})
    status = copy.deepcopy(previous)
    status["observedGeneration"] = run.generation
    conds = Conditions(previous.get("conditions"), now=now, generation=run.generation)
    conds.clear("OperatorError", "Recovered", "the operator reconciled this run again without an error")
    doc = run.validation.doc
    errors = list(run.validation.errors)
    if doc is not None and observed.config is not None:
        errors += immutable_changes(observed.config.run_yaml, doc)
    if errors or doc is None:
        message = "; ".join(errors) or "invalid spec"
        conds.set("Valid", False, "InvalidSpec", message)
        conds.set("Failed", True, "InvalidSpec", "the spec is invalid (see condition Valid); fix the fields it names")
        return _finish(previous, status, conds, "Failed", (), message, invalid=tuple(errors) or (message,))
    conds.set("Valid", True, "Accepted", "the spec is valid")
    return _Run(run, doc, observed, status, conds).decide(previous)


class _Run:
    """One reconcile of a valid run (a helper object so the steps below read top to bottom)."""

    def __init__(self, run: RunState, doc: RunDocument, observed: Observed, status: dict, conds: Conditions):
        self.run, self.doc, self.observed, self.status, self.conds = run, doc, observed, status, conds
        self.owner = run.owner
        self.storage = observed.storage or ObservedStorage()
        self.progress = self.storage.progress
        self.suspended = doc.spec.suspend
        # Suspend by Job.spec.suspend where the server has it and Kueue does not own that field (new Jobs get
        # the queue label with spec.kubernetes.queueName; a Job's own label decides for that Job).
        self.patch_suspend = observed.server.has_job_suspend and not kueue_managed(doc)

    def name(self, component: str) -> str:
        return child_name(self.doc.name, component)

    def decide(self, previous: dict[str, Any]) -> Decision:
        self._storage_condition()
        if self.progress:
            self.status.update(progress_fields(self.progress))
            self._adapters_in_sync(self.progress.get("adaptersInSync"))
        steps = steps_of(self.doc)
        done = {step: self._done(step) for step in steps}
        current = next((s for s in steps if not done[s]), None)
        job = self.observed.jobs.get(current) if current else None
        failed = job is not None and job.state is JobState.FAILED
        blocked = self._blocked()

        actions = self._actions(current, failed, blocked)
        self._step_conditions(steps, done, current, failed, blocked)
        self.conds.set(
            "Suspended",
            self.suspended,
            "SuspendedBySpec" if self.suspended else "NotSuspended",
            f"spec.suspend is true: rollout scaled to 0 and the running step's Job {self._stopped_how()}; set it "
            "to false to resume (every step resumes from object storage)"
            if self.suspended
            else "spec.suspend is false",
        )
        if failed:
            assert current is not None and job is not None
            name = self.name(current)
            message = (
                f"Job {name} failed ({job.reason or 'Failed'}: {job.message or 'see its pods'}); see `kubectl logs "
                f"-n {self.owner.namespace} job/{name}`; delete the Job to retry the step (it resumes from object "
                "storage)"
            )
            self.conds.set("Failed", True, f"{STEP_TITLE[current]}Failed", message)
            phase = "Failed"
        elif current is None:
            self.conds.clear("Failed", "Recovered", "the failure was resolved")
            message = f"run finished: {summary(self.progress)}"
            if not self.conds.is_true("Succeeded"):
                self.conds.set("Succeeded", True, "AllStepsCompleted", message)
            phase = "Succeeded"
        else:
            self.conds.clear("Failed", "Recovered", "the failure was resolved")
            message = self.conds.message(MILESTONES[current])
            phase = PHASE_OF_STEP[current]
            created = any(isinstance(a, Create) and a.body["kind"] == "Job" for a in actions)
            if current == steps[0] and job is None and not created and previous.get("phase") != "Preparing":
                phase = "Pending"  # nothing started yet: suspended, or waiting for a Secret
        return _finish(previous, self.status, self.conds, phase, tuple(actions), message, blocked=blocked)

    # -- observations ---------------------------------------------------------------------------------------
    def _storage_condition(self) -> None:
        uri = self.doc.storage_uri()
        if self.storage.secret_missing:
            self.conds.set("StorageReady", False, "SecretNotFound", self._secret_message())
        elif self.storage.not_read:
            self.conds.set(
                "StorageReady",
                False,
                "NotRead",
                f"{uri}: not read, so progress is not mirrored into this status (training is followed by its Jobs): "
                f"{self.storage.not_read}",
            )
        elif self.storage.reachable and not self.storage.error:
            what = "progress.json read" if self.progress else "reachable, no progress.json yet"
            self.conds.set("StorageReady", True, "Reachable", f"{uri}: {what}")
        else:
            self.conds.set(
                "StorageReady",
                False,
                "StorageError",
                f"cannot read {uri}/progress.json: {self.storage.error or 'unknown error'}; check the keys in "
                "spec.storage.secretName and that the operator can reach the endpoint",
            )

    def _secret_message(self) -> str:
        return (
            f"Secret {self.doc.spec.storage.secret_name!r} (spec.storage.secretName) not found in namespace "
            f"{self.owner.namespace!r}; create it with the storage credentials (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...)"
        )

    def _done(self, step: str) -> bool:
        if self.conds.is_true(MILESTONES[step]):
            return True
        job = self.observed.jobs.get(step)
        complete = job is not None and job.state is JobState.COMPLETE
        if step == "trainer":
            # The trainer exits 0 only after publishing progress.json with phase Succeeded; wait for it so
            # the final numbers are in the status when the run moves on.
            # (Without access to the storage, the Job's completion is all there is to go by.)
            mirrored = bool(self.progress) and self.progress.get("phase") == "Succeeded"
            return complete and (mirrored or bool(self.storage.not_read))
        return complete

    def _blocked(self) -> str:
        if self.observed.foreign:
            return (
                f"{', '.join(self.observed.foreign)} exist(s) but belong to another owner (an earlier FlowDPORun "
                "of the same name being garbage-collected?); waiting for them to go, or delete them"
            )
        if self.storage.secret_missing:
            return self._secret_message()
        return ""

    def _patchable(self, job: ObservedJob) -> bool:
        """Whether suspend/resume of this Job goes through its spec.suspend (else: delete and recreate)."""
        return self.observed.server.has_job_suspend and not job.queued

    def _stopped_how(self) -> str:
        return "suspended (Job.spec.suspend)" if self.patch_suspend else "deleted"

    # -- actions --------------------------------------------------------------------------------------------
    def _actions(self, current: str | None, failed: bool, blocked: str) -> list[Action]:
        """Creates only when nothing blocks; replaces (scale to 0) and deletes (suspend) always."""
        doc, owner, observed = self.doc, self.owner, self.observed
        actions: list[Action] = []
        cm = observed.config
        actions += _ensure(builders.config_map(doc, owner), cm and (cm.spec_hash, cm.resource_version), blocked)
        for step in builders.JOB_STEPS:
            job = observed.jobs.get(step)
            if job is None:
                if step == current and not failed and not self.suspended and not blocked:
                    actions.append(Create(builders.job(doc, owner, step, observed.server)))
            elif job.state is not JobState.ACTIVE:
                continue
            elif not self._patchable(job):
                if self.suspended:
                    actions.append(Delete("Job", self.name(step)))
            elif job.suspended != self.suspended:
                # Also resumes a Job suspended before queueName was removed (Kueue no longer starts it).
                actions.append(SuspendJob(self.name(step), self.suspended))
        rollout = observed.rollout
        if rollout is not None and rollout.terminating:
            pass  # deleted earlier; recreated (if still wanted) once it is gone
        elif current == "trainer" and not failed:
            body = builders.rollout_deployment(doc, owner)
            if rollout is not None or not self.suspended:
                actions += _ensure(body, rollout and (rollout.spec_hash, rollout.resource_version), blocked)
        elif rollout is not None:
            actions.append(Delete("Deployment", self.name(builders.ROLLOUT)))
        return actions

    # -- conditions -----------------------------------------------------------------------------------------
    def _adapters_in_sync(self, check) -> None:
        """AdaptersInSync from progress.json's `adaptersInSync` (the workers' canary checks of each adapter
        load, flowdpo/run/progress.py `adapters_in_sync`); absent until a worker has checked a load."""
        if not isinstance(check, dict):
            return
        if check.get("inSync"):
            self.conds.set("AdaptersInSync", True, "CanaryMatched",
                           f"{check.get('workers')} worker(s) serve the published adapter versions")  # fmt: skip
        else:
            self.conds.set("AdaptersInSync", False, "CanaryMismatch",
                           f"not serving the adapter versions as trained: {', '.join(check.get('notInSync') or [])} "
                           f"(canary log-probs off by up to {check.get('maxDeviation')}); see the worker logs")  # fmt: skip

    def _step_conditions(
        self, steps: list[str], done: dict[str, bool], current: str | None, failed: bool, blocked: str
    ) -> None:
        for i, step in enumerate(steps):
            type_ = MILESTONES[step]
            name = self.name(step)
            if done[step]:
                if not self.conds.is_true(type_):
                    extra = f": {summary(self.progress)}" if step == "trainer" else ""
                    self.conds.set(type_, True, "JobComplete", f"Job {name} completed{extra}")
            elif step != current:
                self.conds.set(type_, False, "NotStarted", f"waiting for {MILESTONES[steps[i - 1]]}")
            elif failed:
                self.conds.set(type_, False, "JobFailed", f"Job {name} failed")
            elif self.suspended:
                self.conds.set(type_, False, "Suspended", f"Job {name} {self._stopped_how()} while spec.suspend is true")
            elif blocked:
                self.conds.set(type_, False, "Waiting", blocked)
            else:
                self.conds.set(type_, False, "InProgress", self._in_progress(step))

    def _in_progress(self, step: str) -> str:
        name = self.name(step)
        job = self.observed.jobs.get(step)
        if job is not None and job.state is JobState.TERMINATING:
            return f"Job {name} is being deleted; it is created again once its pods are gone"
        if job is not None and job.suspended and job.queued:
            queue = self.doc.spec.kubernetes.queue_name
            return f"Job {name} waits for Kueue to admit it (LocalQueue {queue!r}; `kubectl get workloads`)"
        if step == PREFETCH:
            return f"Job {name} is downloading {self.doc.spec.model.name!r} into the model cache volume"
        if step == "prepare":
            return f"Job {name} is writing example shards to {self.doc.storage_uri()}"
        if step == "trainer":
            if job is not None and job.state is JobState.COMPLETE:
                said = (self.progress or {}).get("phase", "nothing")
                return f"Job {name} completed; waiting for progress.json to say Succeeded (it says {said})"
            rollout = self.observed.rollout
            wanted = 0 if self.suspended else self.doc.spec.rollout.replicas
            ready = f"{rollout.ready_replicas}/{rollout.replicas}" if rollout else f"0/{wanted}"
            return f"Job {name}: {summary(self.progress)}; rollout workers ready {ready}"
        if step == "compile":
            return f"Job {name} is generating traces and fine-tuning one model per trace source"
        return f"Job {name} is evaluating the compiled models"


def _ensure(body: dict[str, Any], seen: tuple[str | None, str] | None, blocked: str) -> list[Action]:
    """Create `body` if absent (unless blocked); replace it if its content hash differs from the observed one."""
    if not seen:
        return [] if blocked else [Create(body)]
    observed_hash, resource_version = seen
    if observed_hash == body["metadata"]["annotations"][builders.SPEC_HASH_ANNOTATION]:
        return []
    replaced = copy.deepcopy(body)
    replaced["metadata"]["resourceVersion"] = resource_version
    return [Replace(replaced)]


def _finish(
    previous: Mapping[str, Any],
    status: dict[str, Any],
    conds: Conditions,
    phase: str,
    actions: tuple[Action, ...],
    message: str,
    *,
    invalid: tuple[str, ...] = (),
    blocked: str = "",
) -> Decision:
    status["phase"] = phase
    status["conditions"] = conds.as_list()
    status = without_nulls(status)
    events: tuple[Event, ...] = ()
    if previous.get("phase") != phase:
        kind = "Warning" if phase == "Failed" else "Normal"
        reason = next(
            (c["reason"] for c in status["conditions"] if c["type"] == "Failed" and c["status"] == "True"), phase
        )
        events = (Event(kind, reason if phase == "Failed" else phase, _phase_message(phase, status, message)),)
    return Decision(actions, status, events, invalid=invalid, blocked=blocked, previous_status=previous)


def _phase_message(phase: str, status: Mapping[str, Any], fallback: str) -> str:
    if phase == "Failed":
        failed = next((c for c in status["conditions"] if c["type"] == "Failed"), None)
        valid = next((c for c in status["conditions"] if c["type"] == "Valid"), None)
        if valid is not None and valid["status"] == "False":
            return f"invalid spec: {valid['message']}"
        return failed["message"] if failed else fallback
    return f"phase {phase}: {fallback}"
