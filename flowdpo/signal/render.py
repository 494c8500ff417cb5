"""The signal check's report: the summary record, its markdown and its figure, written next to each other."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

from flowdpo.names import ADAPTERS
from flowdpo.report.fmt import auc_text, num, pct

MIN_HELDOUT_PAIRS = 10  # fewer held-out pairs than this: too few to tell


def _stop_verdict(verdict: str, held: list[dict], stop: dict | None) -> str:
    """The Stop verdict, qualified: pairs that all prefer one side ("do not stop yet") can be learned as a
    prior (never stop) with perfect held-out accuracy, which says nothing about telling complete partial
    answers from incomplete ones; the AUC of P(yes) on held-out nodes does, when both kinds were held out."""
    yes = sum(1 for p in held if p.get("chosenText") == "yes")
    if verdict.startswith("learnable") and yes in (0, len(held)):
        side = "yes" if yes else "no"
        verdict = (
            f"one-sided: every held-out Stop pair prefers '{side}', so the held-out accuracy shows a learned prior "
            f"({'always' if yes else 'never'} stop), not that the adapter tells complete answers from incomplete ones"
        )
    auc, ci = (stop or {}).get("auc"), (stop or {}).get("aucCi95")
    if auc is not None and ci:
        shown = "discriminates" if ci[0] > 0.5 else "no discrimination shown"
        verdict += f"; {shown} (AUC of P(yes) {auc:.2f}, 95% CI {ci[0]:.2f}-{ci[1]:.2f})"
    return verdict


def summarize(doc, settings, key, lengths, results, pairs, train, held, fits, base_stop) -> dict:
    n = len(results)
    counts = {a: sum(1 for p in pairs if p["adapter"] == a) for a in ADAPTERS}
    yes_chosen = sum(1 for p in pairs if p["adapter"] == "stop" and p.get("chosenText") == "yes")
    verdict, best = {}, {}
    for a in ADAPTERS:
        held_a = [p for p in held if p["adapter"] == a]
        finals = [f for f in fits[a] if f["epochs"]]
        if len(held_a) < MIN_HELDOUT_PAIRS or not finals:
            verdict[a] = f"too few pairs to tell ({len(held_a)} held out; mine more --questions)"
            continue
        top = max(finals, key=lambda f: (f["epochs"][-1]["heldout"]["accuracy"] or 0, -f["lr"]))
        acc = top["epochs"][-1]["heldout"]
        best[a] = {"lr": top["lr"], **acc}
        if acc["ci95"][0] > 0.5:
            verdict[a] = "learnable signal: held-out pair accuracy above 50% (lower bound of its interval)"
        else:
            verdict[a] = "no detectable signal: held-out pair accuracy not distinguishable from 50%"
        if a == "stop":
            verdict[a] = _stop_verdict(verdict[a], held_a, top.get("stop"))
    return {
        "run": doc.name,
        "key": key,
        "settings": asdict(settings),
        "questions": n,
        "lengths": {k: v for k, v in lengths.items() if k != "lengths"} | {"histogram": _histogram(lengths)},
        "mined": {
            "flowAccuracy": sum(r["correct"] for r in results) / n if n else None,
            "rollouts": sum(r["rollouts"] for r in results),
            "rolloutsCorrect": sum(r["rolloutsCorrect"] for r in results),
            "pairs": counts,
            "stopPairsChosenYes": yes_chosen,
            "stopPairsChosenNo": counts["stop"] - yes_chosen,
            "trainPairs": {a: sum(1 for p in train if p["adapter"] == a) for a in ADAPTERS},
            "heldoutPairs": {a: sum(1 for p in held if p["adapter"] == a) for a in ADAPTERS},
        },
        "stopBase": base_stop,
        "fits": fits,
        "best": best,
        "verdict": verdict,
    }


def _histogram(lengths: dict) -> dict:
    raw = lengths.get("lengths") or []
    if not raw:
        return {"edges": [], "counts": []}
    step = max(8, lengths["budget"] // 8)
    edges = list(range(0, max(raw) + step, step))
    counts = [sum(1 for x in raw if lo <= x < lo + step) for lo in edges[:-1]]
    return {"edges": edges, "counts": counts}


# -- output ------------------------------------------------------------------------------------------------
def render_markdown(report: dict) -> str:
    ln, m = report["lengths"], report["mined"]
    lines = [
        f"# Signal check: {report['run']}",
        "",
        (
            f"{report['questions']} questions not used for training (key `{report['key']}`); the untrained flow answered "
            f"{pct(m['flowAccuracy'])} correctly."
        ),
        "",
        "## Natural answer lengths (base model, one pass)",
        "",
        (
            f"{ln['questions']} answers with up to {ln['cap']} tokens: p50 {ln['p50']:.0f}, p90 {ln['p90']:.0f}, "
            f"p95 {ln['p95']:.0f} tokens; **{pct(ln['fitsBudget'])} end inside the flow's budget of {ln['budget']} "
            f"tokens** (aim for >= 90%). One-pass accuracy {pct(ln['accuracy'])}."
        ),
        "",
        "## Pairs mined",
        "",
        (
            f"answer {m['pairs']['answer']}, stop {m['pairs']['stop']} (chosen yes {m['stopPairsChosenYes']}, "
            f"chosen no {m['stopPairsChosenNo']}); {m['rolloutsCorrect']}/{m['rollouts']} rollouts correct. "
            f"Train / held out: answer {m['trainPairs']['answer']}/{m['heldoutPairs']['answer']}, "
            f"stop {m['trainPairs']['stop']}/{m['heldoutPairs']['stop']}."
        ),
        "",
        "## Held-out pair accuracy after offline DPO",
        "",
        "| adapter | lr | passes | train loss | held-out pair accuracy (95% CI) | Stop AUC (95% CI) | mean P(yes) complete / incomplete |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = report.get("stopBase")
    if base:
        lines.append(
            f"| stop | untrained | - | - | - | {auc_text(base)} | {num(base['meanPYesComplete'])} / {num(base['meanPYesIncomplete'])} |"
        )
    for a in ADAPTERS:
        for f in report["fits"][a]:
            last = f["epochs"][-1]
            h = last["heldout"]
            stop = f.get("stop")
            lines.append(
                f"| {a} | {f['lr']:.3g} | {last['epoch']} | {num(last['trainLoss'])} | {pct(h['accuracy'])} "
                f"({pct(h['ci95'][0])}-{pct(h['ci95'][1])}, n={h['pairs']}) | {auc_text(stop) if stop else '-'} | "
                f"{(num(stop['meanPYesComplete']) + ' / ' + num(stop['meanPYesIncomplete'])) if stop else '-'} |"
            )
    lines += ["", "## Verdict", ""]
    for a in ADAPTERS:
        lines.append(f"- **{a}**: {report['verdict'].get(a, 'not trained')}")
    lines += [
        "",
        (
            "Pairs of one question are correlated and the intervals treat pairs as independent, so read them as "
            "optimistic; the best of several learning rates is reported with a Bonferroni-widened interval."
        ),
        "",
    ]
    return "\n".join(lines)


def render_figure(report: dict) -> bytes:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, a in zip(axes[:2], ADAPTERS):
        for f in report["fits"][a]:
            xs = [e["epoch"] for e in f["epochs"]]
            ys = [e["heldout"]["accuracy"] for e in f["epochs"]]
            lo = [max(0.0, y - e["heldout"]["ci95"][0]) for y, e in zip(ys, f["epochs"])]
            hi = [max(0.0, e["heldout"]["ci95"][1] - y) for y, e in zip(ys, f["epochs"])]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"lr {f['lr']:.3g}")
        ax.axhline(0.5, color="grey", ls="--", lw=1, label="no signal")
        ax.set_ylim(0, 1)
        ax.set_xlabel("passes over the training pairs")
        ax.set_ylabel("held-out pair accuracy")
        verdict = report["verdict"].get(a, "not trained").split(":")[0].split("(")[0].strip()
        ax.set_title(f"{a} adapter: {verdict}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(loc="lower right", fontsize=8)
    ln = report["lengths"]
    h = ln["histogram"]
    ax = axes[2]
    if h["counts"]:
        ax.bar(
            h["edges"][:-1], h["counts"], width=h["edges"][1] - h["edges"][0], align="edge", color="#4c72b0"
        )
    ax.axvline(
        ln["budget"],
        color="#c44e52",
        lw=2,
        label=f"flow budget {ln['budget']} ({pct(ln['fitsBudget'])} fit)",
    )
    ax.set_xlabel("tokens of a one-pass answer")
    ax.set_ylabel("answers")
    ax.set_title("natural answer lengths (base model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(report: dict, out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "signal.json",
        "markdown": out_dir / "signal.md",
        "figure": out_dir / "signal.png",
    }
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    paths["markdown"].write_text(render_markdown(report))
    paths["figure"].write_bytes(render_figure(report))
    return {k: str(v) for k, v in paths.items()}



