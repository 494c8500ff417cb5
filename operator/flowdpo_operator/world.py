"""What the reconciler sees and what it asks for: plain immutable values, no I/O.

`k8s` and `progress` turn API objects and progress.json into these observations; `reconcile` turns
observations into actions and a new status; `k8s` carries the actions out. Tests build observations by hand.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class Create:
    body: dict[str, Any]


@dataclass(frozen=True)
class Replace:
    """PUT the desired body; it carries the observed resourceVersion, so a concurrent change makes it fail
    with 409 Conflict instead of being overwritten."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    kind: str  # "Job" | "Deployment"
    name: str


Action = Create | Replace | Delete


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the FlowDPORun (phase transitions, failures)."""

    type: str  # Normal | Warning
    reason: str
    message: str
