"""The learning experiment's figures, drawn from recorded.json (the numbers recorded when each endpoint was
computed; the stored rows behind them are gone, see README.md). Before drawing, every recorded number that
can be re-derived is checked against the others: each Wilson interval is recomputed from its counts, each
recorded difference must equal the difference of its rows' counts, and the end-reason counts must add up to
the rows' totals. A transcription error fails here instead of reaching a figure.

    .venv/bin/python docs/results/learning-experiment/figures.py        # writes results.png, behaviour.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from flowdpo.report.endpoints import draw_differences
from flowdpo.report.render import render_behaviour_figure
from flowdpo.report.stats import wilson_interval

# Recorded values carry 3 decimals (0.1 point); a recomputed value may differ by half a unit of that.
TOLERANCE = 0.0005 + 1e-9


def check(rec: dict) -> list[str]:
    """Every inconsistency among the recorded numbers, as a sentence; empty when they agree."""
    problems = []
    for section in (rec["heldout"], rec["compile"]):
        rows = section["rows"]
        for name, r in rows.items():
            lo, hi = wilson_interval(r["correct"], r["answers"])
            if abs(lo - r["wilson95"][0]) > TOLERANCE or abs(hi - r["wilson95"][1]) > TOLERANCE:
                problems.append(
                    f"{name}: recorded Wilson interval {r['wilson95']} but {r['correct']}/{r['answers']} gives [{lo:.4f}, {hi:.4f}]"
                )
        for d in section["differences"]:
            a, b = rows[d["first"]], rows[d["second"]]
            if a["answers"] != b["answers"]:
                problems.append(f"{d['id']}: rows of different sizes ({a['answers']} vs {b['answers']})")
                continue
            exact = (a["correct"] - b["correct"]) / a["answers"]
            if abs(exact - d["difference"]) > TOLERANCE:
                problems.append(f"{d['id']}: recorded {d['difference']} but the counts give {exact:.4f}")
            lo, hi = d["ci95"]
            if not lo <= d["difference"] <= hi:
                problems.append(
                    f"{d['id']}: the estimate {d['difference']} lies outside its interval {d['ci95']}"
                )
    for name in ("trainedFlow", "untrainedFlow"):
        e, r = rec["ends"][name], rec["heldout"]["rows"][name]
        parts = [e[k] for k in ("eos", "stop", "budget")]
        if sum(n for n, _ in parts) != r["answers"] or sum(k for _, k in parts) != r["correct"]:
            problems.append(f"ends of {name} do not add up to {r['correct']}/{r['answers']}")
    beh = rec["behaviourMain"]
    per_quarter = round(sum(b["accuracy"] * b["examples"] for b in beh))
    if per_quarter != rec["progressive"]["main"]["correct"]:
        problems.append(
            f"per-quarter accuracies give {per_quarter} correct, progressive says {rec['progressive']['main']['correct']}"
        )
    return problems


def results_figure(rec: dict) -> bytes:
    """Three panels: every recorded paired difference with its interval; the accuracies with Wilson
    intervals; how the held-out answers of the untrained and the trained flow ended."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 5.4), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 3, width_ratios=(1.25, 1.1, 0.9))
    ax_d, ax_a, ax_e = (fig.add_subplot(grid[0, i]) for i in range(3))
    labels = {
        **{k: r["label"] for k, r in rec["heldout"]["rows"].items()},
        **{k: r["label"] for k, r in rec["compile"]["rows"].items()},
    }

    diffs = rec["heldout"]["differences"] + rec["compile"]["differences"]
    draw_differences(
        ax_d,
        [
            (
                f"{labels[d['first']]}\nminus {labels[d['second']]}\n[{d['endpoint']}]",
                d["difference"],
                d["ci95"],
            )
            for d in diffs
        ],
        fontsize=6.5,
    )
    ax_d.set_xlabel("accuracy difference, points (95% CI)")
    ax_d.set_title("paired differences, 400 held-out questions", fontsize=10)

    bars = [(labels[k], r) for k, r in rec["heldout"]["rows"].items()] + [
        (labels[k], r) for k, r in rec["compile"]["rows"].items()
    ]
    for y, (label, r) in enumerate(reversed(bars)):
        acc = r["correct"] / r["answers"]
        lo, hi = wilson_interval(r["correct"], r["answers"])
        color = "C0" if r["answers"] > rec["compile"]["questions"] else "C1"
        ax_a.barh(y, 100 * acc, color=color, alpha=0.55)
        ax_a.plot([100 * lo, 100 * hi], [y, y], color="k", lw=1.5)
        ax_a.annotate(
            f"{100 * acc:.1f}%", (100 * hi, y), textcoords="offset points", xytext=(4, -3), fontsize=8
        )
    ax_a.set_yticks(range(len(bars)), [label for label, _ in reversed(bars)], fontsize=7)
    ax_a.set_xlim(0, 100)
    ax_a.set_xlabel("held-out accuracy, % (Wilson 95%)")
    ax_a.set_title("blue: T 0.7, 4 samples per question; orange: greedy, one model per row", fontsize=9)

    kinds = (
        ("eos", "ended by the Answer LLM (EOS)"),
        ("stop", "stopped by the Stop LLM"),
        ("budget", "token budget spent"),
    )
    flows = ("untrainedFlow", "trainedFlow")
    for i, (key, label) in enumerate(kinds):
        left = [sum(rec["ends"][f][k][0] for k, _ in kinds[:i]) for f in flows]
        n = [rec["ends"][f][key][0] for f in flows]
        right = [rec["ends"][f][key][1] for f in flows]
        ax_e.barh(range(len(flows)), n, left=left, color=f"C{i}", alpha=0.35, label=label)
        ax_e.barh(range(len(flows)), right, left=left, color=f"C{i}", alpha=0.9, height=0.35)
    for y, f in enumerate(flows):
        ax_e.annotate(f"no final answer: {rec['ends'][f]['noFinalAnswer']}", (0, y + 0.42), fontsize=8)
    ax_e.set_yticks(range(len(flows)), ["untrained\nflow", "trained\nflow"], fontsize=8)
    ax_e.set_xlabel("held-out answers (dark: graded right)")
    ax_e.set_title("how the 1,600 answers ended", fontsize=10)
    ax_e.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recorded", default=str(HERE / "recorded.json"))
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    try:
        rec = json.loads(Path(args.recorded).read_text())
        problems = check(rec)
    except (OSError, ValueError) as e:
        print(f"{args.recorded}: cannot read it as JSON ({e})", file=sys.stderr)
        return 1
    except (KeyError, TypeError, IndexError, AttributeError, ZeroDivisionError) as e:
        print(
            f"{args.recorded}: not a recorded-results file like recorded.json ({type(e).__name__}: {e})",
            file=sys.stderr,
        )
        return 1
    if problems:
        print("recorded.json is inconsistent:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    out = Path(args.out)
    (out / "results.png").write_bytes(results_figure(rec))
    (out / "behaviour.png").write_bytes(render_behaviour_figure(rec["behaviourMain"], "main run (run.yaml)"))
    print(f"checked recorded.json; wrote {out / 'results.png'} and {out / 'behaviour.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
