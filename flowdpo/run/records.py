"""The shapes of the records other processes read: progress.json (`flowdpo status`, the report, compile, the
operator), a shard's results rows (the trainer, the report) and its DPO pairs (the trainer). A damaged or foreign object is named with what is
wrong, instead of failing deep inside a formatter or a training step.

Light on purpose (no torch, no training code): the operator and the report import it."""

from __future__ import annotations

import math
import re

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
    this first, so a damaged or foreign object is named instead of failing deep inside a formatter. Only `phase`
    must be there (a record of an older or newer flowdpo may lack others); what is there must have
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
    need("phase", lambda v: isinstance(v, str), "a string", required=True)
    need("run", lambda v: isinstance(v, str), "a string")
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


def _all(v, kind) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and kind(x) for k, x in v.items())


# A results row (flowdpo/run/shard.py writes them): field -> check. exampleId and correct must be there; the
# trainer also needs attempt (read_pairs).
_RESULT_FIELDS = {
    "exampleId": lambda v: isinstance(v, str),
    "correct": lambda v: isinstance(v, bool),
    "attempt": lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v) is not None,  # a key part
    "baselines": lambda v: _all(v, lambda x: isinstance(x, bool)),
    "baselineDetails": lambda v: _all(v, lambda x: isinstance(x, dict)),
    "pairs": lambda v: _all(v, _count),
    "adapterVersions": lambda v: _all(v, _count),
    "pStop": lambda v: isinstance(v, list) and all(_number(x, none_ok=False) for x in v),
    "chunks": _count,
    "tokens": _count,
    "rollouts": _count,
    "rolloutsCorrect": _count,
    "shard": _count,
    "endReason": lambda v: isinstance(v, str),
    "extracted": lambda v: v is None or isinstance(v, str),
    "source": lambda v: v is None or isinstance(v, str),
}
_RESULT_REQUIRED = ("exampleId", "correct")


def result_problem(row) -> str | None:
    """What makes `row` not a results row (None: it is one)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    problems = [f"{k!r} missing" for k in _RESULT_REQUIRED if k not in row]
    problems += [f"{k!r} has the wrong type or form" for k, ok in _RESULT_FIELDS.items() if k in row and not ok(row[k])]
    return "; ".join(problems) or None


def read_results(store: ObjectStore, shard: int) -> list[dict]:
    """A shard's results rows; CorruptObjectError naming the object and line when one is not a results row."""
    key = RunLayout.results(shard)
    rows = store.get_jsonl(key)
    for n, row in enumerate(rows, 1):
        problem = result_problem(row)
        if problem:
            raise CorruptObjectError(f"{store.uri}/{key} row {n}", f"not a results row ({problem})")
    return rows


def _ids(v, vocab: int | None) -> bool:
    return (
        isinstance(v, list)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 and (vocab is None or t < vocab) for t in v)
    )


# The pair scorings the DPO step knows (flowdpo/flow/rollouts.py SCORING_*).
PAIR_SCORINGS = ("sequence", "token-set")


def pair_problem(pair, vocab: int | None = None) -> str | None:
    """What makes `pair` not a DPO pair the trainer can train on (None: it is one). `vocab`: the model's
    vocabulary size, which every token id must be below (an id past it would fail inside the embedding)."""
    if not isinstance(pair, dict):
        return "not a JSON object"
    problems = []
    if pair.get("adapter") not in ADAPTERS:
        problems.append(f"'adapter' is not one of {list(ADAPTERS)}")
    if not isinstance(pair.get("pairId"), str):
        problems.append("'pairId' is not a string")
    if pair.get("scoring", "sequence") not in PAIR_SCORINGS:
        problems.append(f"'scoring' is not one of {list(PAIR_SCORINGS)}")
    for key in ("promptIds", "chosenIds", "rejectedIds"):
        if not _ids(pair.get(key), vocab):
            problems.append(f"{key!r} is not a list of token ids" + ("" if vocab is None else f" below {vocab}"))
        elif key != "promptIds" and not pair[key] and pair.get("scoring") == "token-set":
            problems.append(f"{key!r} is empty (a token-set score of no tokens is -inf)")
    return "; ".join(problems) or None


def check_pairs(pairs: list[dict], where: str, vocab: int | None = None) -> list[dict]:
    """`pairs` unchanged; CorruptObjectError naming `where` and the row when one is not a trainable pair."""
    for n, pair in enumerate(pairs, 1):
        problem = pair_problem(pair, vocab)
        if problem:
            raise CorruptObjectError(f"{where} row {n}", f"not a DPO pair ({problem})")
    return pairs
