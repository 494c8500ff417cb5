"""The shape of progress.json, checked before anything reads it (`flowdpo status`, the report, the operator).

Light on purpose (no torch, no training code): the operator and the report import it."""

from __future__ import annotations

import math

from flowdpo.names import ADAPTERS
from flowdpo.storage import CorruptObjectError, ObjectStore, RunLayout


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v, none_ok: bool = True) -> bool:
    if v is None:
        return none_ok
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def progress_problem(p) -> str | None:
    """What makes `p` not a progress record of the shape `build_progress` writes (None: it is one).

    Everything that reads progress.json (`flowdpo status`, the report, the operator's status) checks it with
    this first, so a damaged or foreign object is named instead of failing deep inside a formatter. Only `run`
    and `phase` must be there (a record of an older or newer flowdpo may lack others); what is there must have
    the type the trainer writes."""
    if not isinstance(p, dict):
        return "not a JSON object"
    problems: list[str] = []

    def need(key: str, ok, what: str, required: bool = False) -> None:
        if key not in p:
            if required:
                problems.append(f"{key!r} missing")
        elif not ok(p[key]):
            problems.append(f"{key!r} is not {what}")

    def table(v, fields: dict) -> bool:
        return isinstance(v, dict) and all(k not in v or ok(v[k]) for k, ok in fields.items())

    counts = {"mined": _count, "trained": _count}
    for key in ("run", "phase"):
        need(key, lambda v: isinstance(v, str), "a string", required=True)
    need("updatedAt", lambda v: isinstance(v, str), "a string")
    for key in ("examples", "examplesTotal", "correct"):
        need(key, _count, "a count")
    need("progressiveAccuracy", lambda v: _number(v) and (v is None or 0 <= v <= 1), "null or a number in [0, 1]")
    need("elapsedSeconds", _number, "a number")
    for key in ("examplesPerHour", "etaSeconds"):
        need(key, _number, "null or a number")
    need(
        "baselines",
        lambda v: isinstance(v, dict)
        and all(table(b, {"examples": _count, "correct": _count, "accuracy": _number}) for b in v.values()),
        "{name: {examples, correct, accuracy}}",
    )
    need("pairs", lambda v: isinstance(v, dict) and all(table(v.get(a, {}), counts) for a in ADAPTERS),
         "{adapter: {mined, trained}}")  # fmt: skip
    for key in ("adapterVersions", "trainerSteps"):
        need(key, lambda v: isinstance(v, dict) and all(_count(v.get(a, 0)) for a in ADAPTERS), "{adapter: count}")
    need("last", lambda v: isinstance(v, dict) and all(table(x, {"loss": _number, "margin": _number}) for x in v.values()),
         "{adapter: {loss, margin}}")  # fmt: skip
    need("shards", lambda v: table(v, {"total": _count, "consumed": _count}), "{total, consumed}")
    need("dataSkipped", lambda v: isinstance(v, dict) and all(_count(n) for n in v.values()), "{reason: count}")
    need("live", lambda v: table(v, {"examplesRolledOut": _count, "examplesInRunningShard": _count,
                                     "tokensPerSecond": _number}), "{examplesRolledOut, ...}")  # fmt: skip
    need(
        "adaptersInSync",
        lambda v: v is None
        or table(v, {"inSync": lambda x: isinstance(x, bool), "workers": _count, "maxDeviation": _number,
                     "notInSync": lambda x: isinstance(x, list) and all(isinstance(w, str) for w in x)}),
        "{inSync, workers, notInSync, maxDeviation}",
    )  # fmt: skip
    return "; ".join(problems) or None


def read_progress(store: ObjectStore) -> dict | None:
    """progress.json of the run in `store` (None when there is none yet); CorruptObjectError when it is not one."""
    p = store.get_json_or(RunLayout.progress)
    if p is None:
        return None
    problem = progress_problem(p)
    if problem:
        raise CorruptObjectError(f"{store.uri}/{RunLayout.progress}", f"not a progress record ({problem})")
    return p
