"""The compile table inside `flowdpo report` (paper Table 1): read `eval/table.json` and the per-question
outcomes that `flowdpo eval` wrote, add paired comparisons of the flow-trace model against the other rows,
and render them as markdown and a PNG bar chart. No model, no torch: everything comes from the store.

The paired comparison answers the question the table is for ("does SFT on flow traces beat SFT on
self-generated / ground-truth traces?") more sharply than two overlapping Wilson intervals: both rows answer
the SAME questions, so the per-question differences are paired (normal-approximation CI, as for the
progressive-accuracy baselines).
"""

from __future__ import annotations

import io
from typing import Any

from flowdpo.names import FLOW_TRAINED, FLOW_UNTRAINED, SFT_FLOW_ROW, ZERO_SHOT_SAMPLED
from flowdpo.report.fmt import pct, verdict
from flowdpo.storage.layout import RunLayout
from flowdpo.storage.store import ObjectStore

FIGURE = "compile.png"
FLOW_ROW = SFT_FLOW_ROW


def is_number(x: Any) -> bool:
    """A JSON number (not a boolean)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _cell_ok(c: Any) -> bool:
    ci = c.get("ci95") if isinstance(c, dict) else None
    return (
        isinstance(c, dict)
        and isinstance(c.get("examples"), int)
        and isinstance(c.get("correct"), int)
        and (c.get("accuracy") is None or is_number(c["accuracy"]))
        and (ci is None or (isinstance(ci, list) and len(ci) == 2 and all(map(is_number, ci))))
    )


def read_eval_table(store: ObjectStore) -> dict[str, Any] | None:
    """`eval/table.json` as `flowdpo eval` writes it, or None when the run has not been evaluated; a table
    of another shape (damaged, edited by hand) is a CorruptObjectError naming what is wrong."""
    from flowdpo.storage.store import CorruptObjectError

    table = store.get_json_or(RunLayout.eval_table_json)
    if table is None:
        return None
    problem = None
    rows, sets = (table.get("rows"), table.get("sets")) if isinstance(table, dict) else (None, None)
    if not isinstance(table, dict):
        problem = "not a JSON object"
    elif not isinstance(sets, list) or not all(
        isinstance(x, dict) and isinstance(x.get("id"), str) for x in sets
    ):
        problem = "'sets' is not a list of eval sets with an 'id'"
    elif not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("row"), str) and isinstance(r.get("results"), dict)
        for r in rows
    ):
        problem = "'rows' is not a list of rows with 'row' and 'results'"
    elif not all(_cell_ok(c) for r in rows for c in r["results"].values()):
        problem = "a row's result is not a cell with examples, correct, accuracy and ci95"
    if problem:
        raise CorruptObjectError(f"{store.uri}/{RunLayout.eval_table_json}", problem)
    for r in rows:
        r.setdefault("label", r["row"])
    for x in sets:
        x.setdefault("title", x["id"])
        x.setdefault("questions", None)
    return table


def collect_compile(store: ObjectStore) -> dict[str, Any] | None:
    """The compile section of report.json, or None when the run has not been evaluated (`flowdpo eval`)."""
    from flowdpo.report.stats import clustered_bootstrap_difference, paired_difference

    table = read_eval_table(store)
    if table is None:
        return None
    outcomes: dict[
        tuple[str, str], dict[str, list[bool]]
    ] = {}  # (row, set) -> question -> outcome per sample
    for row in table["rows"]:
        for s in table["sets"]:
            key = RunLayout.eval_outcomes(row["row"], s["id"])
            if store.exists(key):
                per_q: dict[str, list[bool]] = {}
                for r in store.get_jsonl(key):
                    if isinstance(r, dict) and isinstance(r.get("question"), str):
                        per_q.setdefault(r["question"], []).append(bool(r.get("correct")))
                outcomes[(row["row"], s["id"])] = per_q
    rows = {r["row"]: r for r in table["rows"]}
    pairs_to_compare = (
        [
            (FLOW_ROW, other)
            for other in rows
            if other != FLOW_ROW and not other.startswith("flow-") and other != ZERO_SHOT_SAMPLED
        ]
        if FLOW_ROW in rows
        else []
    )
    if FLOW_TRAINED in rows and FLOW_UNTRAINED in rows:
        pairs_to_compare.append((FLOW_TRAINED, FLOW_UNTRAINED))
    for flow_row in (FLOW_TRAINED, FLOW_UNTRAINED):  # the flow against one pass decoded the same way
        if flow_row in rows and ZERO_SHOT_SAMPLED in rows:
            pairs_to_compare.append((flow_row, ZERO_SHOT_SAMPLED))
    comparisons = []
    for first, second in pairs_to_compare:
        for s in table["sets"]:
            a, b = outcomes.get((first, s["id"])), outcomes.get((second, s["id"]))
            if not a or not b:
                continue
            common = sorted(set(a) & set(b))
            if any(len(a[q]) > 1 or len(b[q]) > 1 for q in common):
                # Several samples per question: the question is the independent unit.
                boot = clustered_bootstrap_difference([a[q] for q in common], [b[q] for q in common])
                d = {
                    "examples": len(common),
                    "difference": boot["difference"],
                    "ci95": boot["ci95"],
                    "samplesPerQuestion": boot.get("samplesPerQuestion"),
                    "method": "paired bootstrap clustered by question",
                    "onlyFirstCorrect": sum(
                        1 for q in common if sum(a[q]) / len(a[q]) > sum(b[q]) / len(b[q])
                    ),
                    "onlySecondCorrect": sum(
                        1 for q in common if sum(a[q]) / len(a[q]) < sum(b[q]) / len(b[q])
                    ),
                }
            else:
                d = paired_difference([a[q][0] for q in common], [b[q][0] for q in common])
            comparisons.append(
                {
                    "set": s["id"],
                    "first": first,
                    "firstLabel": rows[first]["label"],
                    "second": second,
                    "secondLabel": rows[second]["label"],
                    **d,
                }
            )
    manifest = store.get_json_or(RunLayout.compile_manifest) or {}
    sources = {
        name: {k: st.get(k) for k in ("questionsSolved", "correctAttempts", "attempts")}
        for name, st in (manifest.get("sources") or {}).items()
    }
    sft = {}
    for row in table["rows"]:
        log_key = row.get("sftLog")
        if log_key and store.exists(log_key):
            lg = store.get_json(log_key)
            sft[row["row"]] = {k: lg.get(k) for k in ("steps", "trainLoss", "seconds", "traces")}
    return {
        "model": table.get("model"),
        "temperature": table.get("temperature"),
        "maxNewTokens": table.get("maxNewTokens"),
        "compileQuestions": manifest.get("compileQuestions"),
        "tracesPerSource": table.get("tracesPerSource"),
        "adapterVersions": table.get("adapterVersions"),
        "traceSources": sources,
        "sft": sft,
        "sets": table["sets"],
        "rows": table["rows"],
        "pairedVsFlow": comparisons,
        "stopDiscrimination": table.get("stopDiscrimination"),
    }



def _cell_text(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{pct(r['accuracy'])} ({r['correct']}/{r['examples']}; 95% CI {pct(lo)}-{pct(hi)})"


def render_compile_markdown(c: dict[str, Any]) -> str:
    from flowdpo.compile.eval_table import markdown_table

    sets = c["sets"]
    lines = [
        "## Compile table",
        "",
        f"![compile table]({FIGURE})",
        "",
        f"One model per trace source, fine-tuned from `{c['model']}` on the SAME {c['tracesPerSource']} compile "
        f"questions (of {c['compileQuestions']}) with identical hyperparameters; greedy decoding"
        if c["temperature"] == 0
        else f"temperature {c['temperature']}",
    ]
    if any(r["row"].startswith("flow-") for r in c["rows"]):
        lines[-1] += " (the flow rows sample with the flow's own settings)"
    lines[-1] += "; evaluation questions are disjoint from training and compile questions (checked)."
    lines += ["", *markdown_table(sets, c["rows"], _cell_text)]
    if c["traceSources"]:
        lines += [
            "",
            "| trace source | compile questions solved | correct attempts | SFT steps | final train loss |",
        ]
        lines.append("|---|---|---|---|---|")
        for name, st in c["traceSources"].items():
            lg = c["sft"].get(f"sft-{name}", {})
            loss = f"{lg['trainLoss']:.4f}" if lg.get("trainLoss") is not None else "-"
            lines.append(
                f"| {name} | {st.get('questionsSolved', '-')} | {st.get('correctAttempts', '-')}/{st.get('attempts', '-')}"
                f" | {lg.get('steps', '-')} | {loss} |"
            )
    if c["pairedVsFlow"]:
        lines += ["", "Paired differences on the same evaluation questions (first row minus second row):", ""]
        for d in c["pairedVsFlow"]:
            if not d["examples"]:
                continue
            ci = d["ci95"]
            ci_s = f"95% CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} pp" if ci else "no CI (n=1)"
            if d.get("samplesPerQuestion"):
                detail = (
                    f"{d['examples']} questions x {d['samplesPerQuestion']} samples, bootstrap clustered by question; "
                    f"the first better on {d['onlyFirstCorrect']} questions, the second on {d['onlySecondCorrect']}"
                )
            else:
                detail = f"only the first correct on {d['onlyFirstCorrect']}, only the second on {d['onlySecondCorrect']}"
            lines.append(
                f"- {d['set']}: {d['firstLabel']} vs {d['secondLabel']}: {100 * d['difference']:+.1f} pp ({ci_s}; "
                f"{detail}): {verdict(ci)}."
            )
    # The Stop decision's discrimination is shown with the held-out endpoints (flowdpo/report/endpoints.py).
    lines.append("")
    return "\n".join(lines)


def render_compile_figure(c: dict[str, Any], run: str) -> bytes:
    """Grouped bars (one group per eval set, one bar per table row) with 95% Wilson intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets, rows = c["sets"], c["rows"]
    fig = Figure(figsize=(max(6, 2.6 * len(sets) + 3), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        xs, ys, lo, hi = [], [], [], []
        for j, s in enumerate(sets):
            r = row["results"].get(s["id"])
            if not r or not r["examples"]:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(r["accuracy"])
            lo.append(r["accuracy"] - r["ci95"][0])
            hi.append(r["ci95"][1] - r["accuracy"])
        bars = ax.bar(xs, ys, width * 0.92, yerr=[lo, hi], capsize=3, color=f"C{i}", label=row["label"])
        ax.bar_label(bars, labels=[f"{100 * y:.1f}" for y in ys], fontsize=7, padding=2)
    ax.set_xticks(range(len(sets)), [f"{s['title']}\n(n={s['questions']})" for s in sets])
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_ylim(
        0,
        min(
            1.0,
            max([0.1] + [r["ci95"][1] for row in rows for r in row["results"].values() if r.get("ci95")])
            + 0.08,
        ),
    )
    ax.set_title(f"{run}: compile table ({c['tracesPerSource']} traces per source)", fontsize=11)
    ax.grid(True, axis="y", alpha=0.25)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
