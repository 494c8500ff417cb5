"""What the reconciler sees and what it asks for: plain immutable values, no I/O.

`k8s` and `progress` turn API objects and progress.json into these observations; `reconcile` turns
observations into actions and a new status; `k8s` carries the actions out. Tests build observations by hand.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class ServerVersion:
    """The API server's Kubernetes version (GET /version), for the Job fields that depend on it. The default is
    the oldest server the operator supports (1.20, the e2e control plane): no Job suspend, TTL or failure policy."""

    major: int = 1
    minor: int = 20

    @classmethod
    def parse(cls, version: Mapping[str, Any]) -> ServerVersion:
        """From the /version body; managed clusters report minors such as "27+" (EKS, GKE)."""
        digits = [("".join(ch for ch in str(version.get(key, "")) if ch.isdigit())) for key in ("major", "minor")]
        if not all(digits):
            raise ValueError(f"cannot read a Kubernetes version from {dict(version)!r}")
        return cls(int(digits[0]), int(digits[1]))

    def at_least(self, minor: int) -> bool:
        return (self.major, self.minor) >= (1, minor)

    @property
    def has_job_suspend(self) -> bool:
        """Job.spec.suspend: beta and on by default from 1.22 (alpha, off by default, in 1.21)."""
        return self.at_least(22)

    @property
    def has_job_ttl(self) -> bool:
        """ttlSecondsAfterFinished: beta and on by default from 1.21 (alpha before: the server drops it)."""
        return self.at_least(21)

    @property
    def has_pod_failure_policy(self) -> bool:
        """Job.spec.podFailurePolicy: beta and on by default from 1.26 (GA in 1.31)."""
        return self.at_least(26)

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}"


class JobState(enum.Enum):
    ACTIVE = "Active"  # created, not finished (pods pending, running, or being retried)
    COMPLETE = "Complete"
    FAILED = "Failed"  # condition Failed: backoffLimit exceeded (or a deadline)
    TERMINATING = "Terminating"  # deleted, waiting for its pods to be gone (foreground deletion)


@dataclass(frozen=True)
class ObservedJob:
    state: JobState
    spec_hash: str | None = None
    reason: str = ""  # of the Failed condition
    message: str = ""
    suspended: bool = False  # spec.suspend (Kubernetes 1.22+)
    failed_pods: int = 0  # status.failed: pods of this Job that failed (each retry is a new pod)
    queued: bool = False  # labelled kueue.x-k8s.io/queue-name: Kueue owns its spec.suspend


@dataclass(frozen=True)
class ObservedDeployment:
    replicas: int
    ready_replicas: int
    spec_hash: str | None
    resource_version: str
    terminating: bool = False


@dataclass(frozen=True)
class ObservedConfigMap:
    run_yaml: str | None  # the run document the pods read (the last accepted spec)
    spec_hash: str | None
    resource_version: str


@dataclass(frozen=True)
class ObservedStorage:
    """The run's object storage as the operator could read it with the run's credentials."""

    secret_missing: bool = False  # spec.storage.secretName names a Secret that does not exist
    # Why the operator did not read the storage at all (no Secret and no ambient identity allowed, or RBAC
    # forbids reading the Secret). Training is then tracked by its Jobs alone; progress is not mirrored.
    not_read: str = ""
    reachable: bool = False
    progress: Mapping[str, Any] | None = None  # progress.json; None: not written yet (or unreadable)
    error: str = ""


@dataclass(frozen=True)
class Observed:
    """The children of one run that are owned by it, plus names of same-named objects owned by someone else
    (e.g. an earlier run of the same name whose children garbage collection has not removed yet)."""

    config: ObservedConfigMap | None = None
    rollout: ObservedDeployment | None = None
    jobs: Mapping[str, ObservedJob] = field(default_factory=dict)  # by step: prepare, trainer, compile, eval
    foreign: tuple[str, ...] = ()  # "Job/x-trainer", ...
    storage: ObservedStorage | None = None  # None: not read (invalid spec)
    server: ServerVersion = field(default_factory=ServerVersion)


@dataclass(frozen=True)
class Create:
    body: dict[str, Any]


@dataclass(frozen=True)
class Replace:
    """PUT the desired body; it carries the observed resourceVersion, so a concurrent change makes it fail
    with 409 Conflict instead of being overwritten."""

    body: dict[str, Any]


@dataclass(frozen=True)
class SuspendJob:
    """Merge-patch a Job's spec.suspend (Kubernetes 1.22+): true stops its pods and keeps the Job, false
    starts them again. The rest of a Job's spec is immutable, so this is a patch, not a Replace."""

    name: str
    suspend: bool


@dataclass(frozen=True)
class Delete:
    kind: str  # "Job" | "Deployment"
    name: str


Action = Create | Replace | SuspendJob | Delete


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the FlowDPORun (phase transitions, failures)."""

    type: str  # Normal | Warning
    reason: str
    message: str
