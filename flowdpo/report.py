"""`flowdpo report`: the progressive-validation-accuracy figure and a markdown/JSON summary of a run.

Everything is read from the run's object store (no model, no torch):

- `results/shard-*.jsonl`: per-example outcomes of the trained flow and of the baselines;
- `trainer/state/LATEST.json` -> the trainer state, whose `consumed` list gives the order in which the
  trainer counted the shards (the order of progressive validation, paper Sec. "progressive validation");
- `progress.json` / the trainer state: pairs, adapter versions, trainer steps, last loss, timing;
- `spec.yaml`: run name and model.

Progressive validation accuracy (Deng & Mineiro, Flow-DPO): Acc_prog(N) = 1/N sum_{i<=N} correct_i, where
example i is answered by the flow *before* it is trained on. The baselines (untrained flow, zero-shot
single model) are scored on the same examples and drawn as cumulative curves too (paper Figs. 3-4).

After `flowdpo compile` + `flowdpo eval`, the report also carries the compile table (paper Table 1:
0-shot, SFT on ground-truth / self-generated / flow traces) as `compile.png`, a markdown section and a
`compile` key in report.json (flowdpo/compile/report.py).

Outputs `report/progress.png`, `report/report.md`, `report/report.json` (+ `report/compile.png`) in the
store and in a local folder.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from flowdpo.stats import moving_accuracy, paired_difference, progressive_curve, wilson_interval
from flowdpo.storage.layout import ADAPTERS, RunLayout
from flowdpo.storage.store import ObjectStore

BASELINE_LABELS = {"untrainedFlow": "untrained flow", "zeroShot": "zero-shot single model"}
FIGURE, MARKDOWN, JSON_NAME = "progress.png", "report.md", "report.json"


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
    progress = store.get_json_or(RunLayout.progress)
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
        for r in store.get_jsonl(RunLayout.results(s)):
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
def _version_changes(rows: list[dict], adapter: str) -> list[int]:
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
        ends = {e: sum(1 for r in part if r.get("endReason") == e) / len(part) for e in ("eos", "stop", "max_chunks")}
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
        "adapterVersionChanges": {a: len(_version_changes(rows, a)) for a in ADAPTERS},
        "trainerSteps": steps,
        "last": last,
        "elapsedSeconds": elapsed,
        "examplesPerHour": eph,
        "bySource": by_source,
    }


# -- figure ----------------------------------------------------------------------------------------
def render_figure(rows: list[dict], numbers: dict[str, Any]) -> bytes:
    """PNG bytes of the progressive-accuracy figure (Agg canvas; does not touch pyplot's global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(rows)
    xs = list(range(1, n + 1))
    correct = [bool(r.get("correct")) for r in rows]
    prog = progressive_curve(correct)

    fig = Figure(figsize=(9, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    lo_band, hi_band = zip(*(wilson_interval(round(p * i), i) for i, p in zip(xs, prog)))
    ax.fill_between(xs, lo_band, hi_band, color="C0", alpha=0.12, linewidth=0, label="trained flow 95% CI")
    pa = numbers["progressiveAccuracy"]
    ax.plot(xs, prog, color="C0", lw=2.2, label=f"trained flow (progressive) {pa['accuracy']:.3f}")

    w = numbers["movingWindow"]
    moving = None
    if n >= w:
        moving = moving_accuracy(correct, w)
        ax.plot(
            xs[w - 1 :],
            moving[w - 1 :],
            color="C0",
            lw=0.9,
            alpha=0.55,
            label=f"trained flow, last {w} examples",
        )

    styles = {"untrainedFlow": ("C1", "--"), "zeroShot": ("C2", ":")}
    curves = [prog]
    for i, (b, info) in enumerate(numbers["baselines"].items()):
        pos = [j for j, r in enumerate(rows, start=1) if b in (r.get("baselines") or {})]
        vals = [bool(rows[j - 1]["baselines"][b]) for j in pos]
        if not vals:
            continue
        curve = progressive_curve(vals)
        curves.append(curve)
        color, ls = styles.get(b, (f"C{3 + i}", "-."))
        ax.plot(
            pos,
            curve,
            color=color,
            ls=ls,
            lw=1.8,
            label=f"{info['label']} (cumulative) {info['accuracy']:.3f}",
        )

    # Light rug ticks where the adapter version used for generation changed.
    for row, (a, color) in enumerate((("answer", "0.35"), ("stop", "C4"))):
        ch = _version_changes(rows, a)
        if ch:
            ax.vlines(
                ch,
                0.01 + 0.035 * row,
                0.035 + 0.035 * row,
                transform=ax.get_xaxis_transform(),
                color=color,
                lw=0.8,
                alpha=0.6,
                label=f"{a} adapter updated ({len(ch)}x)",
            )

    # y range: ignore the first noisy points of the cumulative curves.
    skip = min(n - 1, max(5, n // 20))
    vals = [v for c in curves for v in c[skip:]] + ([v for v in moving[w - 1 :]] if moving else [])
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = max(0.05, 0.1 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad - 0.06), min(1.0, hi + pad))
    ax.set_xlim(1, max(2, n))
    ax.set_xlabel("training examples (in the order the trainer consumed them)")
    ax.set_ylabel("accuracy")
    title = f"{numbers['run']}: progressive validation accuracy"
    if numbers.get("model"):
        title += f"\n{numbers['model']}, {n} examples, phase {numbers['phase']}"
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- markdown --------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _acc_str(a: dict | None) -> str:
    if not a or not a.get("examples"):
        return "-"
    lo, hi = a["ci95"]
    return f"{_pct(a['accuracy'])} ({a['correct']}/{a['examples']}; 95% CI {_pct(lo)}-{_pct(hi)})"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def render_markdown(numbers: dict[str, Any]) -> str:
    N = numbers
    pa = N["progressiveAccuracy"]
    lines = [f"# Flow-DPO run `{N['run']}`", ""]
    if N.get("model"):
        lines.append(f"- Model: `{N['model']}`")
    lines.append(
        f"- Phase: {N['phase']}" + (f" (progress updated {N['updatedAt']})" if N.get("updatedAt") else "")
    )
    total = f" of {N['examplesTotal']}" if N.get("examplesTotal") is not None else ""
    sh = N["shards"]
    sh_total = f" of {sh['total']}" if sh.get("total") is not None else ""
    lines.append(
        f"- Examples counted: **{N['examples']}**{total}, from {sh['counted']}{sh_total} shards, "
        f"in {N['order']}."
    )
    if sh["resultsNotYetConsumed"]:
        lines.append(
            f"- Not counted: {len(sh['resultsNotYetConsumed'])} shard(s) with results the trainer has not consumed yet."
        )
    if sh["consumedWithoutResults"]:
        lines.append(f"- Consumed shards without a results object (skipped): {sh['consumedWithoutResults']}.")
    if N.get("examplesInProgress") is not None and N["examplesInProgress"] != N["examples"]:
        lines.append(
            f"- Note: progress.json counts {N['examplesInProgress']} examples; this report counts {N['examples']}."
        )
    lines += ["", "![progressive validation accuracy](progress.png)", "", "## Accuracy", ""]
    lines.append(
        "Progressive validation accuracy: each example is answered by the flow before the trainer learns from it "
        "(Acc_prog(N) = mean of correct over the first N examples)."
    )
    lines += [
        "",
        "| flow | accuracy (k/n, 95% Wilson CI) |",
        "|---|---|",
        f"| trained flow (progressive) | {_acc_str(pa)} |",
    ]
    for b in N["baselines"].values():
        lines.append(f"| {b['label']} | {_acc_str(b)} |")
    if N["movingAccuracyLast"] is not None:
        lines.append(f"| trained flow, last {N['movingWindow']} examples | {_pct(N['movingAccuracyLast'])} |")
    lines.append("")
    if not N["baselines"]:
        lines.append("No baselines were recorded for these examples (spec.baselines off).")
    for b in N["baselines"].values():
        d = b["pairedDifference"]
        if not d["examples"]:
            continue
        t = b["trainedOnSameExamples"]
        ci = f" (paired 95% CI {_pp(d['ci95'][0])} to {_pp(d['ci95'][1])})" if d["ci95"] else ""
        if d["ci95"] and d["ci95"][0] > 0:
            verdict = "the paired CI is above zero"
        elif d["ci95"] and d["ci95"][1] < 0:
            verdict = "the paired CI is below zero"
        else:
            verdict = "the paired CI includes zero"
        overlap = "overlap" if b["ciOverlap"] else "do not overlap"
        lines.append(
            f"- Trained flow vs {b['label']} on the same {d['examples']} examples: {_pct(t['accuracy'])} vs "
            f"{_pct(b['accuracy'])}, difference {_pp(d['difference'])}{ci}; {verdict}. "
            f"Only the trained flow correct on {d['onlyFirstCorrect']}, only the {b['label']} on "
            f"{d['onlySecondCorrect']}. The two Wilson CIs {overlap}."
        )
    d = N.get("untrainedFlowVsZeroShot")
    if d and d["examples"]:
        ci = f" (paired 95% CI {_pp(d['ci95'][0])} to {_pp(d['ci95'][1])})" if d["ci95"] else ""
        lines.append(
            f"- Untrained flow vs zero-shot single model (both untrained, same sampling and token budget) on the same "
            f"{d['examples']} examples: difference {_pp(d['difference'])}{ci}; only the flow correct on "
            f"{d['onlyFirstCorrect']}, only the single pass on {d['onlySecondCorrect']}."
        )
    tb = N.get("tokenBudget")
    if tb:
        fit, budget = tb["fit"], tb["budgetTokens"]
        lo, hi = fit["ci95"]
        over = f"> {budget}" if budget else "> budget"
        p50 = over if tb["p50"] is None else str(tb["p50"])
        p90 = over if tb["p90"] is None else str(tb["p90"])
        lines.append(
            f"- Token budget: {fit['correct']} of {fit['examples']} zero-shot answers ({_pct(fit['accuracy'])}, 95% CI "
            f"{_pct(lo)}-{_pct(hi)}) ended by themselves inside the flow's budget of {budget} tokens (chunkTokens x "
            f"maxChunks; aim for >= 90%); one-pass answer lengths p50 {p50}, p90 {p90} tokens."
        )
    q = N["quarters"]
    if q:
        lines += ["", f"### First vs last quarter ({q['size']} examples each)", ""]
        cols = ["trained"] + list(N["baselines"])
        heads = ["trained flow"] + [N["baselines"][b]["label"] for b in N["baselines"]]
        lines += ["| quarter | " + " | ".join(heads) + " |", "|---" * (len(cols) + 1) + "|"]
        for name in ("first", "last"):
            lines.append(f"| {name} | " + " | ".join(_acc_str(q[name].get(c)) for c in cols) + " |")
        diff = q["last"]["trained"]["accuracy"] - q["first"]["trained"]["accuracy"]
        a, b = q["first"]["trained"]["ci95"], q["last"]["trained"]["ci95"]
        overlap = "overlap" if a[0] <= b[1] and b[0] <= a[1] else "do not overlap"
        lines += ["", f"Trained flow, last minus first quarter: {_pp(diff)}; the two Wilson CIs {overlap}."]
    else:
        lines += ["", "Too few examples for a first/last quarter comparison."]
    if N.get("behaviour"):
        lines += [
            "",
            "### How the trained flow's answers end, by quarter",
            "",
            "| quarter | accuracy | chunks per answer | no final answer | mean P(stop) | ended by EOS | by Stop | by max chunks | rollouts correct |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for b in N["behaviour"]:
            ps = "-" if b["meanStopProbability"] is None else f"{b['meanStopProbability']:.3f}"
            e = b["ends"]
            lines.append(
                f"| {b['quarter']} ({b['examples']}) | {_pct(b['accuracy'])} | {b['meanChunks']:.2f} | {_pct(b['noFinalAnswer'])} | "
                f"{ps} | {_pct(e.get('eos', 0.0))} | {_pct(e['stop'])} | {_pct(e['max_chunks'])} | {_pct(b['rolloutsCorrect'])} |"
            )

    lines += [
        "",
        "## Training",
        "",
        "| adapter | version | version changes in results | pairs mined | pairs trained | trainer steps | last loss | last margin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in ADAPTERS:
        p = (N["pairs"] or {}).get(a) or {}
        last = (N["last"] or {}).get(a) or {}
        loss = f"{last['loss']:.4f}" if "loss" in last else "-"
        margin = f"{last['margin']:+.3f}" if "margin" in last else "-"
        lines.append(
            f"| {a} | v{N['adapterVersions'].get(a, '-')} | {N['adapterVersionChanges'][a]} | "
            f"{p.get('mined', '-')} | {p.get('trained', '-')} | {N['trainerSteps'].get(a, '-')} | {loss} | {margin} |"
        )
    el, eph = N["elapsedSeconds"], N["examplesPerHour"]
    if el is not None:
        lines += [
            "",
            f"Trainer elapsed time {el / 3600:.2f} h ({el:.0f} s); "
            + (f"{eph:.0f} examples/hour." if eph else "rate unknown."),
        ]

    lines += ["", "## By source", ""]
    bnames = list(N["baselines"])
    heads = ["source", "examples", "trained flow"] + [N["baselines"][b]["label"] for b in bnames]
    lines += ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for s, e in N["bySource"].items():
        cells = [f"`{s}`", str(e["examples"]), f"{_pct(e['accuracy'])} ({e['correct']}/{e['examples']})"]
        for b in bnames:
            be = e["baselines"].get(b)
            cells.append(f"{_pct(be['accuracy'])} ({be['correct']}/{be['examples']})" if be else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if N.get("compile"):
        from flowdpo.compile.report import render_compile_markdown

        lines += ["", render_compile_markdown(N["compile"])]
    lines += ["", "Generated by `flowdpo report`; numbers in report.json.", ""]
    return "\n".join(lines)


# -- entry point -----------------------------------------------------------------------------------
def write_report(store: ObjectStore, out_dir: Path | None = None) -> dict[str, str]:
    """Write progress.png, report.md and report.json under `report/` in the store and in a local folder.

    Local folder: `out_dir` if given, else `<local run folder>/report` for a file:// store, else
    `./<run>-report`. Returns local paths: {"markdown", "figure", "json"} (+ "compileFigure" once the run is
    evaluated). ValueError if nothing to report.
    """
    from flowdpo.compile.report import FIGURE as COMPILE_FIGURE
    from flowdpo.compile.report import collect_compile, render_compile_figure

    data = collect(store)
    numbers = compute(data)
    numbers["compile"] = collect_compile(store)
    png = render_figure(data["rows"], numbers)
    md = render_markdown(numbers)
    files = {FIGURE: png}
    if numbers["compile"] is not None:
        files[COMPILE_FIGURE] = render_compile_figure(numbers["compile"], numbers["run"])
    js = (json.dumps(numbers, indent=1, sort_keys=True) + "\n").encode()
    files.update({MARKDOWN: md.encode(), JSON_NAME: js})
    for name, blob in files.items():
        store.put(f"{RunLayout.report_dir}/{name}", blob)

    if out_dir is not None:
        local = Path(out_dir)
    elif store.local_root is not None:
        local = store.local_root / RunLayout.report_dir
    else:
        local = Path.cwd() / f"{numbers['run']}-report"
    local = local.expanduser().resolve()
    local.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        path = local / name
        if not (path.exists() and path.read_bytes() == blob):
            path.write_bytes(blob)
    out = {"markdown": str(local / MARKDOWN), "figure": str(local / FIGURE), "json": str(local / JSON_NAME)}
    if COMPILE_FIGURE in files:
        out["compileFigure"] = str(local / COMPILE_FIGURE)
    return out
