"""The held-out evaluation of the flow inside `flowdpo report`: did training make the flow better?

After `flowdpo eval` with `compile.evaluation.flowRows`, every eval set was answered by the FINAL trained flow,
the untrained flow (both adapters at zero) and one pass of the base model sampled like the flow, each question
`flowSamples` times from the same sampling seeds. This module reads those stored outcomes and gives:

- the headline comparison, trained flow minus untrained flow on each set (paired bootstrap clustered by
  question, 95% interval; from the compile section's comparisons), with a verdict that follows the interval;
- how each flow's answers end (EOS, the Stop LLM, the token budget with or without a final answer);
- the Stop decision's discrimination on the untrained flow's held-out partial answers: AUC of P(yes) and the
  ROC curves of the untrained and the trained Stop adapter (`eval/stop-discrimination.json`);

and renders them as a markdown section and `endpoints.png`. No model, no torch: everything comes from the
store.
"""

from __future__ import annotations

import io
from typing import Any

from flowdpo.names import FLOW_TRAINED, FLOW_UNTRAINED, ZERO_SHOT_SAMPLED
from flowdpo.report.compile_table import is_number
from flowdpo.report.fmt import auc_text, pct, verdict
from flowdpo.report.stats import roc_curve
from flowdpo.storage.layout import RunLayout
from flowdpo.storage.store import ObjectStore

FIGURE = "endpoints.png"
FLOW_ROWS = (FLOW_TRAINED, FLOW_UNTRAINED, ZERO_SHOT_SAMPLED)
# How an answer ended: the flow's end reasons (flowdpo/flow/engine.py), the budget split by whether a final
# answer was found before it ran out. One-pass answers end by EOS or the budget.
END_KINDS = {
    "eos": "ended by the Answer LLM (EOS)",
    "stop": "stopped by the Stop LLM",
    "budgetAnswered": "token budget, with a final answer",
    "budgetTruncated": "token budget, no final answer",
}


def _end_kind(r: dict, budget: int | None) -> str:
    reason = r.get("endReason")
    if reason is None and budget and isinstance(r.get("tokens"), int):
        # A one-pass answer stored without its end reason: it ran out when it used the whole budget.
        reason = "length" if r["tokens"] >= budget else "eos"
    if reason in ("max_chunks", "length"):
        return "budgetAnswered" if r.get("extracted") is not None else "budgetTruncated"
    return str(reason or "eos")


def how_answers_end(outcomes: list[dict], budget: int | None = None) -> dict[str, Any]:
    """Share of answers per END_KINDS entry, mean tokens and chunks (when recorded). `budget`: the token
    budget, to tell how one-pass answers stored without an end reason ended."""
    n = len(outcomes)
    kinds: dict[str, int] = dict.fromkeys(END_KINDS, 0)
    for r in outcomes:
        k = _end_kind(r, budget)
        kinds[k] = kinds.get(k, 0) + 1
    tokens = [r["tokens"] for r in outcomes if isinstance(r.get("tokens"), (int, float))]
    chunks = [r["chunks"] for r in outcomes if isinstance(r.get("chunks"), (int, float))]
    return {
        "answers": n,
        "ends": {k: v / n for k, v in kinds.items()} if n else {},
        "noFinalAnswer": sum(1 for r in outcomes if r.get("extracted") is None) / n if n else None,
        "meanTokens": sum(tokens) / len(tokens) if tokens else None,
        "meanChunks": sum(chunks) / len(chunks) if chunks else None,
    }


def _stop_section(store: ObjectStore, compile_section: dict) -> dict[str, Any] | None:
    stored = store.get_json_or(RunLayout.eval_stop)
    stored = stored if isinstance(stored, dict) else {}
    summary = compile_section.get("stopDiscrimination")
    if not isinstance(summary, dict):
        summary = {k: v for k, v in stored.items() if k not in ("fingerprint", "scores")}
    if not (
        isinstance(summary.get("untrained"), dict)
        and isinstance(summary.get("partials"), int)
        and isinstance(summary.get("complete"), int)
    ):
        return None  # not evaluated, or not in the shape `flowdpo eval` writes: no Stop section
    out: dict[str, Any] = {"partials": summary["partials"], "complete": summary["complete"]}
    for name in ("untrained", "trained"):  # only numbers of the shape `flowdpo eval` writes are shown
        m = summary.get(name)
        if isinstance(m, dict):
            kept = {k: m.get(k) for k in ("auc", "meanPYesComplete", "meanPYesIncomplete")}
            out[name] = {k: v if is_number(v) else None for k, v in kept.items()}
            ci = m.get("aucCi95")
            ok = isinstance(ci, list) and len(ci) == 2 and all(map(is_number, ci))
            out[name]["aucCi95"] = ci if ok else None
    scores = stored.get("scores") if isinstance(stored.get("scores"), dict) else {}
    labels = scores.get("complete")
    if not (isinstance(labels, list) and all(isinstance(c, bool) for c in labels)):
        labels = None  # damaged or absent: the table keeps its AUCs, the figure says there is no curve
    for name in ("untrained", "trained"):
        p = scores.get(name)
        valid = isinstance(p, list) and all(is_number(x) and 0.0 <= x <= 1.0 for x in p)
        if labels and valid and len(p) == len(labels) and isinstance(out.get(name), dict):
            pos = [x for x, c in zip(p, labels) if c]
            neg = [x for x, c in zip(p, labels) if not c]
            out[name] = {**out[name], "roc": roc_curve(pos, neg)}
    return out


def collect_endpoints(store: ObjectStore, compile_section: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `endpoints` key of report.json, or None when the run has no evaluated flow rows."""
    if not compile_section:
        return None
    labels = {r["row"]: r["label"] for r in compile_section["rows"]}
    present = [row for row in FLOW_ROWS if row in labels]
    if FLOW_TRAINED not in present:
        return None
    sets = []
    for s in compile_section["sets"]:
        rows = {}
        for row in present:
            key = RunLayout.eval_outcomes(row, s["id"])
            if not store.exists(key):
                continue
            outcomes = [r for r in store.get_jsonl(key) if isinstance(r, dict)]
            cell = next(r for r in compile_section["rows"] if r["row"] == row)["results"].get(s["id"]) or {}
            rows[row] = {
                "label": labels[row],
                **{k: cell.get(k) for k in ("accuracy", "ci95", "samplesPerQuestion")},
                **how_answers_end(outcomes, compile_section.get("maxNewTokens")),
            }
        comparisons = [
            {**c, "verdict": verdict(c.get("ci95"))}
            for c in compile_section.get("pairedVsFlow") or []
            if c["set"] == s["id"] and c["first"] in FLOW_ROWS and c["second"] in FLOW_ROWS
        ]
        sets.append(
            {
                "set": s["id"],
                "title": s.get("title", s["id"]),
                "questions": s.get("questions"),
                "rows": rows,
                "comparisons": comparisons,
            }
        )
    primary = next(
        (
            c
            for st in sets
            for c in st["comparisons"]
            if (c["first"], c["second"]) == (FLOW_TRAINED, FLOW_UNTRAINED)
        ),
        None,
    )
    return {"primary": primary, "sets": sets, "stop": _stop_section(store, compile_section)}


# -- markdown --------------------------------------------------------------------------------------
def _diff_text(c: dict) -> str:
    ci = c.get("ci95")
    ci_s = f"95% CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} pp" if ci else "no CI"
    n = c.get("examples") or c.get("questions")
    k = c.get("samplesPerQuestion")
    unit = f"{n} questions x {k} samples, bootstrap clustered by question" if k else f"{n} questions, paired"
    return f"{100 * c['difference']:+.1f} pp ({ci_s}; {unit})"


def render_endpoints_markdown(e: dict[str, Any]) -> str:
    lines = [
        "## Held-out evaluation: does the trained flow beat the untrained one?",
        "",
        f"![held-out evaluation]({FIGURE})",
        "",
    ]
    p = e.get("primary")
    if p:
        lines.append(
            f"**Trained flow minus untrained flow** on `{p['set']}`: **{_diff_text(p)}**; {verdict(p.get('ci95'))}. "
            "Both flows answer every question from the same sampling seeds; the trained flow uses the final "
            "Answer and Stop adapters."
        )
    else:
        lines.append("The untrained flow was not evaluated, so there is no trained-vs-untrained comparison.")
    for s in e["sets"]:
        others = [c for c in s["comparisons"] if c is not p]
        if others:
            lines.append("")
            for c in others:
                lines.append(
                    f"- `{s['set']}`: {c['firstLabel']} minus {c['secondLabel']}: {_diff_text(c)}; {c['verdict']}."
                )
        if s["rows"]:
            lines += [
                "",
                f"How the answers end on `{s['set']}` ({s['title']}, {s['questions']} questions):",
                "",
                "| row | accuracy | " + " | ".join(END_KINDS.values()) + " | mean tokens |",
                "|---" * (len(END_KINDS) + 3) + "|",
            ]
            for r in s["rows"].values():
                tokens = "-" if r["meanTokens"] is None else f"{r['meanTokens']:.0f}"
                ends = " | ".join(pct(r["ends"].get(k)) for k in END_KINDS)
                lines.append(f"| {r['label']} | {pct(r['accuracy'])} | {ends} | {tokens} |")
    st = e.get("stop")
    if st:
        lines += [
            "",
            (
                f"The Stop decision on the untrained flow's {st['partials']} held-out partial answers "
                f"({st['complete']} already right: stopping there would be graded correct). AUC 0.5 = no "
                'discrimination; a Stop adapter that only learned a prior ("never stop") moves both means and '
                "keeps the AUC near 0.5."
            ),
            "",
            "| Stop model | AUC of P(yes) (95% CI) | mean P(yes), right / not yet |",
            "|---|---|---|",
        ]
        for name in ("untrained", "trained"):
            m = st.get(name) or {}
            auc_s = auc_text(m)
            means = " / ".join(
                "-" if m.get(k) is None else f"{m[k]:.3f}" for k in ("meanPYesComplete", "meanPYesIncomplete")
            )
            lines.append(f"| {name} | {auc_s} | {means} |")
    lines.append("")
    return "\n".join(lines)


# -- figure ----------------------------------------------------------------------------------------
def draw_differences(ax, items: list[tuple[str, float, list[float] | None]], fontsize: float = 7) -> None:
    """A forest plot on `ax`: one row per (label, difference, 95% interval), first item on top, in points;
    green where the interval lies above zero, red below, grey where it includes zero."""
    for y, (_, diff, ci) in enumerate(reversed(items)):
        lo, hi = ci or (diff, diff)
        color = "C2" if lo > 0 else "C3" if hi < 0 else "0.4"
        ax.plot([100 * lo, 100 * hi], [y, y], color=color, lw=2.5)
        ax.plot([100 * diff], [y], "o", color=color, ms=7)
        ax.annotate(f"{100 * diff:+.1f}", (100 * diff, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(items)), [label for label, _, _ in reversed(items)], fontsize=fontsize)
    ax.grid(True, axis="x", alpha=0.25)
    if items:
        ax.set_ylim(-0.7, len(items) - 0.3)


def render_endpoints_figure(e: dict[str, Any], run: str) -> bytes:
    """Three panels: the paired differences with their intervals, the Stop ROC curves, how answers end."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax_d, ax_roc, ax_end = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))

    comps = [(s["set"], c) for s in e["sets"] for c in s["comparisons"]]
    draw_differences(
        ax_d,
        [(f"{c['firstLabel']}\nminus {c['secondLabel']}\n({s})", c["difference"], c.get("ci95")) for s, c in comps],
        fontsize=7,
    )
    ax_d.set_xlabel("accuracy difference, pp (95% CI, clustered by question)")
    ax_d.set_title("paired differences on held-out questions", fontsize=10)

    st = e.get("stop") or {}
    ax_roc.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="no discrimination")
    drawn = False
    for name, color in (("untrained", "C1"), ("trained", "C0")):
        m = st.get(name) or {}
        if m.get("roc"):
            xs, ys = zip(*m["roc"])
            auc_s = auc_text({"auc": m.get("auc")})
            ax_roc.plot(xs, ys, color=color, lw=2, label=f"{name} Stop adapter, AUC {auc_s}")
            drawn = True
    if not drawn:
        msg = (
            "no Stop scores stored"
            if not st
            else "per-partial scores not stored\n(evaluated by an older flowdpo)"
        )
        ax_roc.text(0.5, 0.5, msg, ha="center", va="center", fontsize=9, color="0.3")
    ax_roc.set_xlabel("false-positive rate (partials not yet right)")
    ax_roc.set_ylabel("true-positive rate (partials already right)")
    title = "Stop decision: ROC of P(yes)"
    if st.get("partials"):
        title += f"\n{st['partials']} held-out partials, {st['complete']} already right"
    ax_roc.set_title(title, fontsize=10)
    ax_roc.set_aspect("equal")
    ax_roc.legend(fontsize=7, loc="lower right", frameon=False)

    first = next((s for s in e["sets"] if s["rows"]), None)
    if first:
        names = list(first["rows"])
        left = [0.0] * len(names)
        for i, (kind, label) in enumerate(END_KINDS.items()):
            vals = [first["rows"][r]["ends"].get(kind, 0.0) for r in names]
            ax_end.barh(range(len(names)), vals, left=left, color=f"C{i}", label=label)
            left = [a + b for a, b in zip(left, vals)]
        ax_end.set_yticks(range(len(names)), [first["rows"][r]["label"] for r in names], fontsize=8)
        ax_end.invert_yaxis()
        ax_end.set_xlim(0, 1)
        ax_end.set_xlabel("share of answers")
        ax_end.set_title(f"how answers end ({first['set']})", fontsize=10)
        ax_end.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.4, -0.14), ncol=2, frameon=False)
    fig.suptitle(f"{run}: held-out evaluation", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
