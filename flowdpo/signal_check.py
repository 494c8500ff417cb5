"""`flowdpo signal RUN.yaml`: do this run's DPO pairs carry a learnable signal at all?

Run it before spending GPU-hours; it takes minutes to an hour on the hardware the run would use.

1. **Natural answer lengths.** The base model answers `lengthQuestions` questions in one pass with four
   times the flow's budget (chunkTokens x maxChunks); reported: the length distribution and the share of
   answers that end inside the budget. A budget that cuts most answers off teaches truncation, not math.
2. **Mine pairs once** with the untrained flow (both adapters at version 0) on `questions` questions of the
   run's data that are not training questions (procedural tasks: a separate seed stream, also disjoint from
   the held-out evaluation questions; datasets: the rows after the training and compile windows).
3. **Offline DPO** on the pairs of 80% of the questions, for each adapter and each learning rate of a small
   sweep (default: the run's rate x 1/3, 1, 3), `epochs` passes in the run's batch size, from fresh
   adapters each time. After every pass: **held-out pair accuracy**, the share of the other 20% of the
   questions' pairs whose chosen side the adapter now prefers more than the base model does (reward margin
   > 0; 95% Wilson interval, Bonferroni-widened for the number of learning rates). ~50% means the pairs
   carry no signal the adapter can learn; well above means they do.
4. **The Stop adapter's discrimination**: on the held-out Stop nodes, each partial answer is labelled
   complete (stopping there was right: the pair's chosen side is "yes") or incomplete; reported: the AUC of
   the Stop decision's P(yes) for complete vs incomplete before and after training, and the mean P(yes) of
   each class (a Stop adapter that only learned a prior drives both means to 0 or 1 and its AUC stays ~0.5).

Everything is stored under `signal/<key>/` in the run's storage (`<key>` hashes what the mined pairs depend
on), so an interrupted check resumes and a repeated one reuses what it has; the summary is printed and
written as signal.json, signal.md and signal.png.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flowdpo.spec import RunDocument
from flowdpo.stats import auc, auc_interval, wilson_interval
from flowdpo.storage import ObjectStore, RunLayout
from flowdpo.storage.layout import ADAPTERS

log = logging.getLogger(__name__)

MIN_HELDOUT_PAIRS = 10  # fewer held-out pairs than this: too few to tell


@dataclass
class SignalSettings:
    questions: int = 64
    learning_rates: list[float] | None = None  # None: the run's rate x (1/3, 1, 3), per adapter
    epochs: int = 3
    holdout: float = 0.2
    length_questions: int = 64
    length_factor: int = 4  # natural lengths are sampled with this many times the flow's budget
    seed: int = 0

    def __post_init__(self):
        if self.questions < 2:
            raise ValueError("--questions must be at least 2 (pairs of 80% train, the rest is held out)")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError("--holdout must be between 0 and 1")
        if self.epochs < 1:
            raise ValueError("--epochs must be at least 1")
        if self.learning_rates is not None and any(not 0 < lr < 1 for lr in self.learning_rates):
            raise ValueError("learning rates must be in (0, 1)")

    def rates(self, base: float) -> list[float]:
        return list(self.learning_rates) if self.learning_rates else [base / 3, base, base * 3]


@dataclass
class FitResult:
    adapter: str
    lr: float
    settings: dict
    epochs: list[dict] = field(default_factory=list)  # per pass: trainLoss, heldout accuracy
    stop: dict | None = None  # Stop adapter: P(yes) discrimination after training
    seconds: float = 0.0


# -- questions --------------------------------------------------------------------------------------------
def signal_questions(doc: RunDocument, n: int):
    """`n` questions of the run's data that training (and, for procedural tasks, evaluation) never sees."""
    from flowdpo.data import load_examples, load_heldout_examples

    spec = doc.spec
    data = spec.data
    window = data.model_copy(update={"num_examples": data.num_examples + spec.compile.num_questions})
    if data.source == "reasoning-gym":
        exclude: set[str] = set()
        for es in spec.compile.evaluation.resolved_sets(data):
            if es.name == "heldout" and es.num_questions:
                exclude |= {ex.question for ex in load_heldout_examples(window, es.num_questions)}
        return load_heldout_examples(window, n, stream="signal", exclude=exclude)
    examples, _ = load_examples(data, limit=n, offset=window.num_examples)
    if len(examples) < n:
        raise ValueError(
            f"the signal check needs {n} questions after the {window.num_examples} training and compile "
            f"questions of {data.path or data.source}, found {len(examples)}: use fewer --questions"
        )
    return examples


def mining_key(doc: RunDocument, settings: SignalSettings) -> str:
    """What the mined pairs depend on: model, adapters' shape, flow, data, questions and seed."""
    spec = doc.spec
    ident = {
        "model": spec.model.model_dump(mode="json"),
        "lora": spec.lora.model_dump(mode="json"),
        "flow": spec.flow.model_dump(mode="json"),
        "data": spec.data.model_dump(mode="json"),
        "compileQuestions": spec.compile.num_questions,
        # the held-out evaluation questions the signal questions avoid
        "heldout": [es.num_questions for es in spec.compile.evaluation.resolved_sets(spec.data) if es.name == "heldout"],
        "batchExamples": spec.rollout.batch_examples,
        "questions": settings.questions,
        "lengthQuestions": settings.length_questions,
        "lengthFactor": settings.length_factor,
        "seed": settings.seed,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


# -- steps ------------------------------------------------------------------------------------------------
def natural_lengths(backend, prompts, examples, flow, factor: int, seed: int) -> dict:
    """One-pass answers of the base model with `factor` x the flow's budget: lengths and budget coverage."""
    import torch

    from flowdpo.grading import grade

    budget = flow.chunk_tokens * flow.max_chunks
    torch.manual_seed(seed)
    outs = backend.generate(
        [prompts.answer_prompt(ex.question) for ex in examples],
        None,
        budget * factor,
        flow.temperature,
        flow.top_p,
    )
    eos = prompts.eos_ids
    lengths = [len(o) for o in outs]
    finished = [bool(o) and o[-1] in eos for o in outs]
    correct = [
        grade(prompts.decode([t for t in o if t not in eos]), ex.answer).correct
        for o, ex in zip(outs, examples)
    ]
    n = len(outs)
    inside = sum(1 for ln, f in zip(lengths, finished) if f and ln <= budget)
    q = statistics.quantiles(lengths, n=20) if n > 1 else [lengths[0]] * 19
    return {
        "questions": n,
        "budget": budget,
        "cap": budget * factor,
        "lengths": lengths,
        "finished": sum(finished),
        "p50": q[9],
        "p90": q[17],
        "p95": q[18],
        "fitsBudget": inside / n if n else None,
        "accuracy": sum(correct) / n if n else None,
        "accuracyFinishedInsideBudget": (
            sum(c for c, ln, f in zip(correct, lengths, finished) if f and ln <= budget) / n if n else None
        ),
    }


def mine(
    store: ObjectStore, key: str, backend, prompts, doc: RunDocument, examples, seed: int, on_example=None
):
    """Outcomes and pairs of the untrained flow on `examples`, one stored object per batch (resumable)."""
    import torch

    from flowdpo.flow.rollouts import mine_pairs, rollout_examples

    spec = doc.spec
    size = spec.rollout.batch_examples
    results: list[dict] = []
    pairs: list[dict] = []
    for b, start in enumerate(range(0, len(examples), size)):
        k = RunLayout.signal_mined(key, b)
        rows = store.get_jsonl(k) if store.exists(k) else None
        if rows is None:
            batch = examples[start : start + size]
            rng = random.Random(seed * 1_000_003 + b)
            torch.manual_seed(seed * 1_000_003 + b)
            backend.reset()
            lineage = {"run": doc.name, "shard": -1 - b, "adapterVersions": backend.versions()}
            rows = []
            for r in rollout_examples(batch, backend, prompts, spec.flow, rng):
                res, prs = mine_pairs(r, prompts, lineage)
                rows.append({"result": res, "pairs": prs})
                if on_example is not None:
                    on_example()
            store.create_jsonl(k, rows)
        elif on_example is not None:
            for _ in rows:
                on_example()
        for row in rows:
            results.append(row["result"])
            pairs.extend(row["pairs"])
    return results, pairs


def split_by_question(pairs: list[dict], holdout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train / held-out pairs with no question on both sides (pairs of one question are correlated)."""
    ids = sorted({p["exampleId"] for p in pairs})
    random.Random(seed).shuffle(ids)
    n_held = max(1, round(holdout * len(ids))) if len(ids) > 1 else 0
    held = set(ids[:n_held])
    return [p for p in pairs if p["exampleId"] not in held], [p for p in pairs if p["exampleId"] in held]


def p_yes(
    model, prompts, stop_prompts: list[list[int]], temperature: float, pad_id: int, batch: int = 8
) -> list[float]:
    """The Stop decision's P(yes) under the active adapter (`engine.stop_probability`, computed in torch)."""
    import torch

    from flowdpo.train.dpo import next_token_logps, set_logsumexp

    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(stop_prompts), batch):
            logp = next_token_logps(model, stop_prompts[i : i + batch], pad_id)
            n = logp.shape[0]
            yes = set_logsumexp(logp, [prompts.yes_ids] * n)
            no = set_logsumexp(logp, [prompts.no_ids] * n)
            out.extend(torch.sigmoid((yes - no) / temperature).tolist())
    return out


def stop_discrimination(
    model, prompts, heldout_stop: list[dict], temperature: float, pad_id: int, adapter_on: bool
):
    """AUC of P(yes) for complete (chosen = yes) vs incomplete held-out Stop nodes, and each class's mean."""
    if not heldout_stop:
        return None
    yes_set = prompts.decision_ids(True)
    if adapter_on:
        model.set_adapter("stop")
        scores = p_yes(model, prompts, [p["promptIds"] for p in heldout_stop], temperature, pad_id)
    else:
        with model.disable_adapter():
            scores = p_yes(model, prompts, [p["promptIds"] for p in heldout_stop], temperature, pad_id)
    complete = [s for s, p in zip(scores, heldout_stop) if list(p["chosenIds"]) == yes_set]
    incomplete = [s for s, p in zip(scores, heldout_stop) if list(p["chosenIds"]) != yes_set]
    ci = auc_interval(complete, incomplete)
    return {
        "complete": len(complete),
        "incomplete": len(incomplete),
        "auc": auc(complete, incomplete),
        "aucCi95": list(ci) if ci else None,
        "meanPYesComplete": sum(complete) / len(complete) if complete else None,
        "meanPYesIncomplete": sum(incomplete) / len(incomplete) if incomplete else None,
    }


def heldout_accuracy(model, adapter: str, pairs: list[dict], pad_id: int, beta: float, z: float) -> dict:
    from flowdpo.train.dpo import reward_margins

    model.set_adapter(adapter)
    margins = reward_margins(model, pairs, pad_id, beta).tolist()
    wins = sum(1 for m in margins if m > 0) + 0.5 * sum(1 for m in margins if m == 0)
    n = len(margins)
    lo, hi = wilson_interval(round(wins), n, z=z) if n else (0.0, 1.0)
    return {
        "pairs": n,
        "accuracy": wins / n if n else None,
        "ci95": [lo, hi],
        "meanMargin": sum(margins) / n if n else None,
    }


def fit(
    model,
    tok,
    prompts,
    doc: RunDocument,
    adapter: str,
    lr: float,
    train: list[dict],
    held: list[dict],
    settings: SignalSettings,
    initial: dict,
    z: float,
) -> FitResult:
    """Offline DPO of one fresh adapter on `train` at `lr`; held-out pair accuracy after every pass."""
    import torch

    from flowdpo.train.adapters import adapter_parameters, load_adapter_weights
    from flowdpo.train.dpo import dpo_step

    t0 = time.monotonic()
    spec = doc.spec
    training = spec.training
    load_adapter_weights(model, adapter, initial[adapter])
    opt = torch.optim.AdamW(adapter_parameters(model, adapter), lr=lr, weight_decay=training.weight_decay)
    result = FitResult(adapter, lr, _fit_settings(doc, settings))
    step = 0
    for epoch in range(settings.epochs):
        order = list(train)
        random.Random(settings.seed * 7919 + epoch).shuffle(order)
        losses = []
        for i in range(0, len(order), training.batch_size):
            stats = dpo_step(
                model,
                adapter,
                order[i : i + training.batch_size],
                opt,
                training,
                tok.pad_token_id,
                settings.seed * 1_000_003 + step,
            )
            losses.append(stats["loss"])
            step += 1
        result.epochs.append(
            {
                "epoch": epoch + 1,
                "steps": step,
                "trainLoss": sum(losses) / len(losses) if losses else None,
                "heldout": heldout_accuracy(model, adapter, held, tok.pad_token_id, training.beta, z),
            }
        )
        log.info(
            "signal %s lr %.3g pass %d: held-out pair accuracy %s",
            adapter,
            lr,
            epoch + 1,
            result.epochs[-1]["heldout"]["accuracy"],
        )
    if adapter == "stop":
        result.stop = stop_discrimination(
            model, prompts, held, spec.flow.stop_temperature, tok.pad_token_id, True
        )
    load_adapter_weights(model, adapter, initial[adapter])
    result.seconds = time.monotonic() - t0
    return result


def _fit_settings(doc: RunDocument, settings: SignalSettings) -> dict:
    t = doc.spec.training
    return {
        "epochs": settings.epochs,
        "holdout": settings.holdout,
        "seed": settings.seed,
        "batchSize": t.batch_size,
        "microBatchSize": t.micro_batch_size,
        "beta": t.beta,
        "gradClip": t.grad_clip,
        "weightDecay": t.weight_decay,
    }


# -- the whole check ------------------------------------------------------------------------------------
def run_signal(doc: RunDocument, settings: SignalSettings, *, show_progress: bool = True) -> dict:
    """Run (or resume) the signal check of `doc`; returns the report (also stored)."""
    import torch

    from flowdpo.flow.backend import TransformersBackend
    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.models import load_base_model
    from flowdpo.storage import open_store
    from flowdpo.train.adapters import adapter_files, attach_adapters

    spec = doc.spec
    store = open_store(doc.storage_uri())
    key = mining_key(doc, settings)
    examples = signal_questions(doc, settings.questions)
    model, tok = load_base_model(spec.model, spec.device)
    model = attach_adapters(model, spec.lora, spec.seed)
    prompts = PromptBuilder(tok, spec.flow)
    backend = TransformersBackend(model, tok, prompts.eos_ids)
    initial = {a: adapter_files(model, a)["adapter_model.safetensors"] for a in ADAPTERS}

    if store.exists(RunLayout.signal_lengths(key)):
        lengths = store.get_json(RunLayout.signal_lengths(key))
    else:
        _say(
            show_progress,
            f"natural answer lengths: {min(settings.length_questions, len(examples))} one-pass answers",
        )
        backend.reset()
        lengths = natural_lengths(
            backend,
            prompts,
            examples[: settings.length_questions],
            spec.flow,
            settings.length_factor,
            settings.seed,
        )
        store.put_json(RunLayout.signal_lengths(key), lengths)

    bar = _bar(show_progress, len(examples), "mining pairs")
    results, pairs = mine(
        store, key, backend, prompts, doc, examples, settings.seed, (lambda: bar.update(1)) if bar else None
    )
    if bar is not None:
        bar.close()
    train, held = split_by_question(pairs, settings.holdout, settings.seed)
    by_adapter = {
        a: ([p for p in train if p["adapter"] == a], [p for p in held if p["adapter"] == a]) for a in ADAPTERS
    }

    fits: dict[str, list[dict]] = {a: [] for a in ADAPTERS}
    base_stop = stop_discrimination(
        model, prompts, by_adapter["stop"][1], spec.flow.stop_temperature, tok.pad_token_id, adapter_on=False
    )
    trainable = [a for a in ADAPTERS if getattr(spec.training, f"train_{a}")]
    for adapter in trainable:
        tr, he = by_adapter[adapter]
        rates = settings.rates(spec.training.lr(adapter))
        z = statistics.NormalDist().inv_cdf(1 - 0.025 / len(rates))
        for lr in rates:
            k = RunLayout.signal_fit(key, adapter, lr)
            stored = store.get_json_or(k)
            if stored is not None and stored.get("settings") == _fit_settings(doc, settings):
                fits[adapter].append(stored)
                continue
            if not tr or not he:
                continue
            _say(
                show_progress,
                f"offline DPO: {adapter} adapter, lr {lr:.3g}, {len(tr)} pairs x {settings.epochs} passes",
            )
            result = asdict(fit(model, tok, prompts, doc, adapter, lr, tr, he, settings, initial, z))
            store.put_json(k, result)
            fits[adapter].append(result)
        torch.manual_seed(spec.seed)

    report = summarize(doc, settings, key, lengths, results, pairs, train, held, fits, base_stop)
    store.put_json(RunLayout.signal_report(key), report)
    return report


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
            f"{_pct(m['flowAccuracy'])} correctly."
        ),
        "",
        "## Natural answer lengths (base model, one pass)",
        "",
        (
            f"{ln['questions']} answers with up to {ln['cap']} tokens: p50 {ln['p50']:.0f}, p90 {ln['p90']:.0f}, "
            f"p95 {ln['p95']:.0f} tokens; **{_pct(ln['fitsBudget'])} end inside the flow's budget of {ln['budget']} "
            f"tokens** (aim for >= 90%). One-pass accuracy {_pct(ln['accuracy'])}."
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
            f"| stop | untrained | - | - | - | {_auc(base)} | {_num(base['meanPYesComplete'])} / {_num(base['meanPYesIncomplete'])} |"
        )
    for a in ADAPTERS:
        for f in report["fits"][a]:
            last = f["epochs"][-1]
            h = last["heldout"]
            stop = f.get("stop")
            lines.append(
                f"| {a} | {f['lr']:.3g} | {last['epoch']} | {_num(last['trainLoss'])} | {_pct(h['accuracy'])} "
                f"({_pct(h['ci95'][0])}-{_pct(h['ci95'][1])}, n={h['pairs']}) | {_auc(stop) if stop else '-'} | "
                f"{(_num(stop['meanPYesComplete']) + ' / ' + _num(stop['meanPYesIncomplete'])) if stop else '-'} |"
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
        label=f"flow budget {ln['budget']} ({_pct(ln['fitsBudget'])} fit)",
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


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def _auc(d: dict | None) -> str:
    if not d or d.get("auc") is None:
        return "-"
    ci = d.get("aucCi95")
    return f"{d['auc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _say(show: bool, msg: str) -> None:
    log.info(msg)
    if show:
        print(f"[signal] {msg}", flush=True)


def _bar(show: bool, total: int, desc: str):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="q", desc=desc, dynamic_ncols=True)
