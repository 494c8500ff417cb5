"""The run report's figure (progressive accuracy with its baselines) and markdown."""

from __future__ import annotations

import io
from typing import Any

from flowdpo.names import ADAPTERS
from flowdpo.report.fmt import pct, pp, verdict
from flowdpo.report.numbers import version_changes
from flowdpo.report.stats import moving_accuracy, progressive_curve, wilson_interval


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
        ch = version_changes(rows, a)
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


BEHAVIOUR_FIGURE = "behaviour.png"
_ENDS = (
    ("eos", "ended by the Answer LLM (EOS)"),
    ("stop", "stopped by the Stop LLM"),
    ("max_chunks", "token budget spent"),
)


def render_behaviour_figure(behaviour: list[dict[str, Any]], run: str) -> bytes:
    """Per quarter of training: how the trained flow's answers ended (stacked bars), with its accuracy, the
    share without a final answer and the mean P(stop) as lines. What the Stop adapter learns shows here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [b["quarter"] for b in behaviour]
    bottom = [0.0] * len(xs)
    for i, (key, label) in enumerate(_ENDS):
        vals = [b["ends"].get(key, 0.0) for b in behaviour]
        ax.bar(xs, vals, 0.6, bottom=bottom, color=f"C{i}", alpha=0.35, label=label)
        bottom = [a + v for a, v in zip(bottom, vals)]
    ax.plot(xs, [b["accuracy"] for b in behaviour], "o-", color="k", lw=2, label="accuracy")
    ax.plot(xs, [b["noFinalAnswer"] for b in behaviour], "s--", color="C3", label="no final answer")
    p_stop = [
        (x, b["meanStopProbability"]) for x, b in zip(xs, behaviour) if b["meanStopProbability"] is not None
    ]
    if p_stop:
        ax.plot(*zip(*p_stop), "^:", color="C4", lw=1.8, label="mean P(stop) per decision")
    ax.set_xticks(xs, [f"Q{b['quarter']}\n({b['examples']} ex.)" for b in behaviour])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of answers / probability")
    ax.set_title(f"{run}: how the trained flow's answers end, per quarter of training", fontsize=11)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- markdown --------------------------------------------------------------------------------------

def _acc_str(a: dict | None) -> str:
    if not a or not a.get("examples"):
        return "-"
    lo, hi = a["ci95"]
    return f"{pct(a['accuracy'])} ({a['correct']}/{a['examples']}; 95% CI {pct(lo)}-{pct(hi)})"


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
    if N.get("dataSkipped"):
        reasons = "; ".join(f"{n} x {r}" for r, n in sorted(N["dataSkipped"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"- Data rows skipped when the run was prepared: {sum(N['dataSkipped'].values())} ({reasons})."
        )
    if N.get("examplesInProgress") is not None and N["examplesInProgress"] != N["examples"]:
        lines.append(
            f"- Note: progress.json counts {N['examplesInProgress']} examples; this report counts {N['examples']}."
        )
    if N.get("endpoints"):
        from flowdpo.report.endpoints import render_endpoints_markdown

        lines += ["", render_endpoints_markdown(N["endpoints"])]
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
        lines.append(f"| trained flow, last {N['movingWindow']} examples | {pct(N['movingAccuracyLast'])} |")
    lines.append("")
    if not N["baselines"]:
        lines.append("No baselines were recorded for these examples (spec.baselines off).")
    for b in N["baselines"].values():
        d = b["pairedDifference"]
        if not d["examples"]:
            continue
        t = b["trainedOnSameExamples"]
        ci = f" (paired 95% CI {pp(d['ci95'][0])} to {pp(d['ci95'][1])})" if d["ci95"] else ""
        overlap = "overlap" if b["ciOverlap"] else "do not overlap"
        lines.append(
            f"- Trained flow vs {b['label']} on the same {d['examples']} examples: {pct(t['accuracy'])} vs "
            f"{pct(b['accuracy'])}, difference {pp(d['difference'])}{ci}; {verdict(d['ci95'])}. "
            f"Only the trained flow correct on {d['onlyFirstCorrect']}, only the {b['label']} on "
            f"{d['onlySecondCorrect']}. The two Wilson CIs {overlap}."
        )
    d = N.get("untrainedFlowVsZeroShot")
    if d and d["examples"]:
        ci = f" (paired 95% CI {pp(d['ci95'][0])} to {pp(d['ci95'][1])})" if d["ci95"] else ""
        lines.append(
            f"- Untrained flow vs zero-shot single model (both untrained, same sampling and token budget) on the same "
            f"{d['examples']} examples: difference {pp(d['difference'])}{ci}; only the flow correct on "
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
            f"- Token budget: {fit['correct']} of {fit['examples']} zero-shot answers ({pct(fit['accuracy'])}, 95% CI "
            f"{pct(lo)}-{pct(hi)}) ended by themselves inside the flow's budget of {budget} tokens (chunkTokens x "
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
        lines += ["", f"Trained flow, last minus first quarter: {pp(diff)}; the two Wilson CIs {overlap}."]
    else:
        lines += ["", "Too few examples for a first/last quarter comparison."]
    if N.get("behaviour"):
        lines += [
            "",
            "### How the trained flow's answers end, by quarter",
            "",
            f"![how answers end]({BEHAVIOUR_FIGURE})",
            "",
            "| quarter | accuracy | chunks per answer | no final answer | mean P(stop) | ended by EOS | by Stop | by max chunks | rollouts correct |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for b in N["behaviour"]:
            ps = "-" if b["meanStopProbability"] is None else f"{b['meanStopProbability']:.3f}"
            e = b["ends"]
            lines.append(
                f"| {b['quarter']} ({b['examples']}) | {pct(b['accuracy'])} | {b['meanChunks']:.2f} | {pct(b['noFinalAnswer'])} | "
                f"{ps} | {pct(e.get('eos', 0.0))} | {pct(e['stop'])} | {pct(e['max_chunks'])} | {pct(b['rolloutsCorrect'])} |"
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
        cells = [f"`{s}`", str(e["examples"]), f"{pct(e['accuracy'])} ({e['correct']}/{e['examples']})"]
        for b in bnames:
            be = e["baselines"].get(b)
            cells.append(f"{pct(be['accuracy'])} ({be['correct']}/{be['examples']})" if be else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if N.get("compile"):
        from flowdpo.report.compile_table import render_compile_markdown

        lines += ["", render_compile_markdown(N["compile"])]
    lines += ["", "Generated by `flowdpo report`; numbers in report.json.", ""]
    return "\n".join(lines)


# -- entry point -----------------------------------------------------------------------------------
