"""A run's report numbers from its stored records: progressive accuracy, baselines on the same examples, pairs, adapter versions, flow behaviour and the token budget."""

from __future__ import annotations

from typing import Any

from flowdpo.names import ADAPTERS, MAIN_CHAIN_ENDS
from flowdpo.report.stats import moving_accuracy, paired_difference, wilson_interval
from flowdpo.run.records import read_progress, read_results
from flowdpo.storage.layout import RunLayout
from flowdpo.storage.store import ObjectStore

BASELINE_LABELS = {"untrainedFlow": "untrained flow", "zeroShot": "zero-shot single model"}


# -- pure helpers (reusable) -------------------------------------------------------------------------
def _acc(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n)
    return {"examples": n, "correct": k, "accuracy": k / n if n else None, "ci95": [lo, hi] if n else None}


# -- reading the store -----------------------------------------------------------------------------
def _shard_indices_with_results(store: ObjectStore) -> list[int]:
    out = set()
    for key in store.list("results/"):
        try:
            out.add(RunLayout.shard_index(key))
        except ValueError:
            continue
    return sorted(out)


def _trainer_state(store: ObjectStore) -> dict | None:
    pointer = store.get_json_or(RunLayout.trainer_latest)
    if not pointer or "key" not in pointer:
        return None
    return store.get_json_or(pointer["key"])


def _spec(store: ObjectStore) -> dict:
    try:
        import yaml

        doc = yaml.safe_load(store.get(RunLayout.spec).decode())
        return doc if isinstance(doc, dict) else {}
    except KeyError:
        return {}
    except Exception:  # noqa: BLE001 - a malformed spec must not prevent a report
        return {}


def collect(store: ObjectStore) -> dict[str, Any]:
    """Everything the report needs, with examples in the trainer's consumption order."""
    progress = read_progress(store)
    state = _trainer_state(store)
    spec = _spec(store)
    with_results = _shard_indices_with_results(store)

    if state is not None:
        consumed = [int(s) for s in state.get("consumed", [])]
        order_note = "trainer consumption order (trainer/state)"
    else:
        consumed = list(with_results)
        order_note = "shard index order (no trainer state yet)"
    have = set(with_results)
    used = [s for s in consumed if s in have]
    missing = [s for s in consumed if s not in have]
    pending = [s for s in with_results if s not in set(consumed)]

    rows: list[dict] = []
    for s in used:
        for r in read_results(store, s):
            r = dict(r)
            r["_shard"] = s
            rows.append(r)

    if not rows:
        where = store.uri
        if progress is None and not with_results:
            raise ValueError(
                f"no results in {where} yet: neither progress.json nor results/shard-*.jsonl exist. "
                "Is this a run folder/URI, and has the run finished its first shard? (`flowdpo status` shows progress)"
            )
        raise ValueError(
            f"no counted examples in {where} yet: {len(with_results)} result shard(s), "
            f"{len(consumed)} consumed by the trainer. Wait until the trainer consumes a shard, then rerun `flowdpo report`."
        )

    run = (
        (progress or {}).get("run")
        or (spec.get("metadata") or {}).get("name")
        or (store.local_root.name if store.local_root else "run")
    )
    return {
        "run": str(run),
        "progress": progress,
        "state": state,
        "spec": spec,
        "rows": rows,
        "shardsUsed": used,
        "shardsMissing": missing,
        "shardsPending": pending,
        "order": order_note,
    }


# -- numbers ---------------------------------------------------------------------------------------
def version_changes(rows: list[dict], adapter: str) -> list[int]:
    """1-based example positions where the adapter version used for generation changed."""
    out, prev = [], None
    for i, r in enumerate(rows, start=1):
        v = (r.get("adapterVersions") or {}).get(adapter)
        if v is None:
            continue
        if prev is not None and v != prev:
            out.append(i)
        prev = v
    return out


def flow_behaviour(rows: list[dict]) -> list[dict[str, Any]]:
    """How the trained flow's main chains end, per quarter of the run (in consumption order): what the Stop
    adapter learns shows here before it shows in accuracy — e.g. fewer answers cut off before a final answer.
    Ends (flowdpo/flow/engine.py): `eos` (the Answer LLM ended its answer), `stop` (the Stop LLM said yes),
    `max_chunks` (the token budget ran out: the answer may be cut off)."""
    n = len(rows)
    if n < 4:
        return []
    out = []
    for i in range(4):
        part = rows[i * n // 4 : (i + 1) * n // 4]
        p_stop = [p for r in part for p in (r.get("pStop") or [])]
        ends = {e: sum(1 for r in part if r.get("endReason") == e) / len(part) for e in MAIN_CHAIN_ENDS}
        out.append(
            {
                "quarter": i + 1,
                "examples": len(part),
                "accuracy": sum(bool(r.get("correct")) for r in part) / len(part),
                "meanChunks": sum(r.get("chunks", 0) for r in part) / len(part),
                "noFinalAnswer": sum(1 for r in part if r.get("extracted") is None) / len(part),
                "meanStopProbability": sum(p_stop) / len(p_stop) if p_stop else None,
                "ends": ends,
                "rolloutsCorrect": sum(r.get("rolloutsCorrect", 0) for r in part) / max(1, sum(r.get("rollouts", 0) for r in part)),
            }
        )
    return out


def token_budget(rows: list[dict], spec_doc: dict) -> dict[str, Any] | None:
    """Does the flow's token budget (chunkTokens x maxChunks) hold the model's natural answers? The zero-shot
    baseline answers each question in one pass with exactly that budget and no Stop LLM, so its answers that
    ended with EOS fit and those that ran to the budget did not. Lengths are censored at the budget: a
    percentile is reported only when at least that share of answers fit (otherwise it is "> budget")."""
    from flowdpo.spec import FlowSpec

    ended = [d for r in rows if (d := (r.get("baselineDetails") or {}).get("zeroShot")) and "tokens" in d]
    if not ended:
        return None
    try:
        flow = FlowSpec.model_validate((spec_doc.get("spec") or {}).get("flow") or {})
        budget = flow.chunk_tokens * flow.max_chunks
    except ValueError:
        budget = None
    fit = sum(1 for d in ended if d.get("endReason") == "eos")
    lengths = sorted(int(d["tokens"]) for d in ended if d.get("endReason") == "eos")
    n = len(ended)

    def pct(q: float) -> int | None:
        i = max(0, int(q * n + 0.999999) - 1)  # nearest rank
        return lengths[i] if i < len(lengths) else None

    return {"answers": n, "budgetTokens": budget, "fit": _acc(fit, n), "p50": pct(0.5), "p90": pct(0.9)}


def compute(data: dict[str, Any]) -> dict[str, Any]:
    rows = data["rows"]
    progress = data["progress"] or {}
    state = data["state"] or {}
    n = len(rows)
    correct = [bool(r.get("correct")) for r in rows]
    k = sum(correct)

    names = [b for b in BASELINE_LABELS if any(b in (r.get("baselines") or {}) for r in rows)]
    names += sorted({b for r in rows for b in (r.get("baselines") or {})} - set(names))

    baselines: dict[str, Any] = {}
    for b in names:
        idx = [i for i, r in enumerate(rows) if b in (r.get("baselines") or {})]
        base = [bool(rows[i]["baselines"][b]) for i in idx]
        trained = [correct[i] for i in idx]
        acc = _acc(sum(base), len(base))
        t_acc = _acc(sum(trained), len(trained))
        overlap = (
            acc["ci95"] is not None
            and t_acc["ci95"] is not None
            and acc["ci95"][0] <= t_acc["ci95"][1]
            and t_acc["ci95"][0] <= acc["ci95"][1]
        )
        baselines[b] = {
            "label": BASELINE_LABELS.get(b, b),
            **acc,
            "trainedOnSameExamples": t_acc,
            "pairedDifference": paired_difference(trained, base),
            "ciOverlap": overlap,
        }

    # The flow itself against one pass of the same model, both untrained, same sampling and token budget:
    # is cutting the answer into chunks with a Stop LLM a handicap before any training?
    flow_vs_single = None
    if "untrainedFlow" in names and "zeroShot" in names:
        both = [r for r in rows if {"untrainedFlow", "zeroShot"} <= set(r.get("baselines") or {})]
        flow_vs_single = paired_difference(
            [bool(r["baselines"]["untrainedFlow"]) for r in both], [bool(r["baselines"]["zeroShot"]) for r in both]
        )

    q = n // 4
    quarters: dict[str, Any] | None = None
    if q >= 1:
        quarters = {"size": q}
        for name, sl in (("first", slice(0, q)), ("last", slice(n - q, n))):
            part = rows[sl]
            entry = {"trained": _acc(sum(bool(r.get("correct")) for r in part), len(part))}
            for b in names:
                vals = [bool(r["baselines"][b]) for r in part if b in (r.get("baselines") or {})]
                entry[b] = _acc(sum(vals), len(vals))
            quarters[name] = entry

    behaviour = flow_behaviour(rows)

    sources: dict[str, Any] = {}
    for r in rows:
        s = str(r.get("source") or "unknown")
        e = sources.setdefault(s, {"examples": 0, "correct": 0, "baselines": {}})
        e["examples"] += 1
        e["correct"] += int(bool(r.get("correct")))
        for b, ok in (r.get("baselines") or {}).items():
            bn, bc = e["baselines"].get(b, [0, 0])
            e["baselines"][b] = [bn + 1, bc + int(bool(ok))]
    by_source = {
        s: {
            **_acc(e["correct"], e["examples"]),
            "baselines": {b: _acc(c, m) for b, (m, c) in sorted(e["baselines"].items())},
        }
        for s, e in sorted(sources.items())
    }

    pairs_mined_rows = {a: sum(int((r.get("pairs") or {}).get(a, 0)) for r in rows) for a in ADAPTERS}
    pairs = progress.get("pairs") or {
        a: {
            "mined": (state.get("pairs_mined") or {}).get(a, pairs_mined_rows[a]),
            "trained": (state.get("pairs_trained") or {}).get(a),
        }
        for a in ADAPTERS
    }
    versions = progress.get("adapterVersions") or state.get("versions") or {}
    steps = progress.get("trainerSteps") or state.get("steps") or {}
    last = progress.get("last") or state.get("last") or {}
    elapsed = progress.get("elapsedSeconds", state.get("elapsed_seconds"))
    eph = progress.get("examplesPerHour")
    if eph is None and elapsed:
        eph = round(progress.get("examples", n) / elapsed * 3600, 1)

    w = max(10, n // 10)
    model = ((data["spec"].get("spec") or {}).get("model") or {}).get("name")
    return {
        "run": data["run"],
        "model": model,
        "phase": progress.get("phase") or ("Succeeded" if state.get("finished") else "unknown"),
        "updatedAt": progress.get("updatedAt"),
        "order": data["order"],
        "examples": n,
        "examplesTotal": progress.get("examplesTotal"),
        "dataSkipped": progress.get("dataSkipped") or {},
        "examplesInProgress": progress.get("examples"),
        "shards": {
            "counted": len(data["shardsUsed"]),
            "total": (progress.get("shards") or {}).get("total"),
            "consumedWithoutResults": data["shardsMissing"],
            "resultsNotYetConsumed": data["shardsPending"],
        },
        "progressiveAccuracy": _acc(k, n),
        "baselines": baselines,
        "untrainedFlowVsZeroShot": flow_vs_single,
        "tokenBudget": token_budget(rows, data["spec"] or {}),
        "quarters": quarters,
        "behaviour": behaviour,
        "movingWindow": w,
        "movingAccuracyLast": moving_accuracy(correct, w)[-1] if n >= w else None,
        "pairs": pairs,
        "pairsMinedInCountedResults": pairs_mined_rows,
        "adapterVersions": versions,
        "adapterVersionChanges": {a: len(version_changes(rows, a)) for a in ADAPTERS},
        "trainerSteps": steps,
        "last": last,
        "elapsedSeconds": elapsed,
        "examplesPerHour": eph,
        "bySource": by_source,
    }


# -- figure ----------------------------------------------------------------------------------------
