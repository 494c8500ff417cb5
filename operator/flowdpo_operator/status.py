"""The FlowDPORun status: phase, standard conditions, observedGeneration, and progress mirrored from
progress.json. Pure helpers over plain dicts (the status as read from and written to the API).

Phases: Pending -> Preparing -> Training -> Compiling -> Succeeded | Failed.

Conditions (`type, status, reason, message, lastTransitionTime, observedGeneration`; the time changes only
when `status` flips, so `kubectl describe` shows when something became true):

    Valid         the spec is accepted (False: the message names each field to fix)
    StorageReady  the run's storage Secret exists and progress.json could be read (or is not written yet)
    ModelCached   Job <run>-weights completed: the model is in the cache volume (only with kubernetes.modelCache)
    Prepared      Job <run>-prepare completed (example shards are in object storage)
    Trained       Job <run>-trainer completed and progress.json says Succeeded
    Compiled      Job <run>-compile completed            (only with kubernetes.runCompile)
    Evaluated     Job <run>-eval completed               (only with kubernetes.runCompile)
    Suspended     spec.suspend is true: rollout scaled to 0, the running step's Job suspended (1.22+) or deleted
    Succeeded     every step is done (set once reached; `kubectl wait --for=condition=Succeeded fdr/<run>`)
    Failed        the spec is invalid or a step's Job failed (set once it happened; False again after a retry)

ModelCached / Prepared / Trained / Compiled / Evaluated are milestones: once True they stay True, so deleting a finished
Job later does not make the run redo a step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from flowdpo.names import ADAPTERS

CONDITION_TYPES = (
    "Valid", "StorageReady", "ModelCached", "Prepared", "Trained", "Compiled", "Evaluated", "Suspended", "Succeeded", "Failed",
    "OperatorError",
)  # fmt: skip
MILESTONES = {"weights": "ModelCached", "prepare": "Prepared", "trainer": "Trained", "compile": "Compiled", "eval": "Evaluated"}


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or ():
        if c.get("type") == type_:
            return c
    return None


def is_true(status: Mapping[str, Any], type_: str) -> bool:
    c = condition(status, type_)
    return c is not None and c.get("status") == "True"


class Conditions:
    """Edits the conditions of a status copy: `set` keeps lastTransitionTime unless the status flips;
    the list is kept in the fixed CONDITION_TYPES order so an unchanged world gives an equal status."""

    def __init__(self, previous: list[dict[str, Any]] | None, *, now: str, generation: int):
        self._by_type = {c["type"]: dict(c) for c in previous or () if "type" in c}
        self._now = now
        self._generation = generation

    def set(self, type_: str, value: bool, reason: str, message: str) -> None:
        if not message:
            # Every condition explains itself (and some API servers turn "" into null in merge patches).
            raise ValueError(f"condition {type_}: a message is required")
        status = "True" if value else "False"
        old = self._by_type.get(type_)
        changed = old is None or old.get("status") != status
        self._by_type[type_] = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": self._now if changed else old.get("lastTransitionTime", self._now),
            "observedGeneration": self._generation,
        }

    def clear(self, type_: str, reason: str, message: str) -> None:
        """Set False only if the condition is present (for conditions that appear once they happened)."""
        if type_ in self._by_type:
            self.set(type_, False, reason, message)

    def drop(self, type_: str) -> None:
        self._by_type.pop(type_, None)

    def is_true(self, type_: str) -> bool:
        c = self._by_type.get(type_)
        return c is not None and c["status"] == "True"

    def message(self, type_: str) -> str:
        c = self._by_type.get(type_)
        return c.get("message", "") if c else ""

    def as_list(self) -> list[dict[str, Any]]:
        known = [self._by_type[t] for t in CONDITION_TYPES if t in self._by_type]
        other = [c for t, c in sorted(self._by_type.items()) if t not in CONDITION_TYPES]
        return known + other


def without_nulls(value: Any) -> Any:
    """`value` with every None inside mappings dropped. The status is written as a JSON merge patch, where
    null means "delete this key": a status holding None would never equal what the API server stores, and
    the operator would rewrite it on every tick."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def progress_fields(progress: Mapping[str, Any]) -> dict[str, Any]:
    """The status fields mirrored from progress.json (flowdpo.run.progress.build_progress)."""
    pairs = {a: dict(progress.get("pairs", {}).get(a, {"mined": 0, "trained": 0})) for a in ADAPTERS}
    versions = {a: int(progress.get("adapterVersions", {}).get(a, 0)) for a in ADAPTERS}
    return {
        "progressiveAccuracy": progress.get("progressiveAccuracy"),
        "examples": int(progress.get("examples", 0)),
        "examplesTotal": int(progress.get("examplesTotal", 0)),
        "pairs": pairs,
        "pairsTotal": sum(int(p.get("mined", 0)) for p in pairs.values()),
        "adapterVersions": versions,
        "adapterVersion": f"a{versions['answer']}/s{versions['stop']}",
        # The rest of progress.json as is (shards, baselines, last loss/margin, rate, ETA, updatedAt).
        "progress": {
            k: copy.deepcopy(v)
            for k, v in progress.items()
            if k not in ("run", "progressiveAccuracy", "examples", "examplesTotal", "pairs", "adapterVersions")
        },
    }


def summary(progress: Mapping[str, Any] | None) -> str:
    """One line for condition messages: `12/40 examples, accuracy 0.583, 31 pairs, adapters a3/s2`."""
    if not progress:
        return "no progress.json yet"
    f = progress_fields(progress)
    acc = f["progressiveAccuracy"]
    return (
        f"{f['examples']}/{f['examplesTotal']} examples, progressive accuracy "
        f"{'-' if acc is None else f'{acc:.3f}'}, {f['pairsTotal']} pairs, adapters {f['adapterVersion']}"
    )
