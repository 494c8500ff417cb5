"""`flowdpo eval`: the compile table (paper Table 1) - accuracy of the base model 0-shot and of each SFT model.

Rows: `zero-shot` (the base model, adapters disabled) and `sft-<source>` for every SFT adapter in storage
(ground truth, self-generated, flow-generated). Columns: the eval sets of `compile.evaluation` (default:
GSM8K test + MATH test; held-out procedural tasks when the run trains on reasoning-gym). Every row answers
with the same prompt (the Answer LLM's system prompt + the question) in one pass, greedy by default, with the
flow's token budget; answers are graded with `flowdpo.grading.grade`. Each cell: accuracy, 95% Wilson
interval, correct/n.

No evaluation question may be a training or compile question: sets are filtered against the run's
prepared training examples, the compile questions and the kept traces (by normalized question text), and
`check_disjoint` then raises `EvalLeakError` if any overlap is left - a bug guard that never relies on a
loader's promise. For procedural tasks the held-out stream is also generated as disjoint from the
training + compile windows (`load_heldout_examples` with the extended window).
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flowdpo.compile import SOURCE_LABELS
from flowdpo.compile.common import (
    CompileError,
    EvalLeakError,
    fingerprint,
    normalize_question,
    open_run,
    stored_compile_questions,
    training_questions,
)
from flowdpo.data import Example, load_heldout_examples
from flowdpo.grading import grade
from flowdpo.spec import DataSpec, EvalSetSpec, RunDocument
from flowdpo.stats import wilson_interval
from flowdpo.storage import ObjectStore, RunLayout
from flowdpo.storage.layout import COMPILE_SOURCES

log = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"
FLOW_TRAINED, FLOW_UNTRAINED = "flow-trained", "flow-untrained"  # compile.evaluation.flowRows
# The 0-shot model decoded like the flow rows (their sampling settings and token budget): the flow rows are
# compared with it, not with the greedy 0-shot row of the compile table.
ZERO_SHOT_SAMPLED = "zero-shot-sampled"
ROW_LABELS = {
    ZERO_SHOT: "0-shot",
    **{f"sft-{s}": label for s, label in SOURCE_LABELS.items()},
    FLOW_TRAINED: "trained flow (final adapters)",
    FLOW_UNTRAINED: "untrained flow",
    ZERO_SHOT_SAMPLED: "0-shot, sampled like the flow",
}


# -- the questions evaluation must never see ---------------------------------------------------------
def forbidden_questions(store: ObjectStore) -> dict[str, str]:
    """normalized question -> where it is used (training / compile / traces)."""
    out: dict[str, str] = {}
    for ex in training_questions(store):
        out.setdefault(normalize_question(ex.question), f"training:{ex.id}")
    for ex in stored_compile_questions(store):
        out.setdefault(normalize_question(ex.question), f"compile:{ex.id}")
    for s in COMPILE_SOURCES:
        if store.exists(RunLayout.compile_traces(s)):
            for t in store.get_jsonl(RunLayout.compile_traces(s)):
                out.setdefault(normalize_question(t["question"]), f"traces/{s}:{t['exampleId']}")
    return out


def check_disjoint(examples: Iterable[Example], forbidden: Mapping[str, str], where: str = "eval") -> None:
    """Raise EvalLeakError if an evaluation question is also a training or compile question."""
    leaks = [(ex.id, forbidden[k]) for ex in examples if (k := normalize_question(ex.question)) in forbidden]
    if leaks:
        shown = ", ".join(f"{a} = {b}" for a, b in leaks[:5])
        raise EvalLeakError(
            f"{where}: {len(leaks)} evaluation question(s) also used for training/compile: {shown}"
        )


def _drop_forbidden(examples: Iterable[Example], forbidden: Mapping[str, str]) -> tuple[list[Example], int]:
    kept, dropped, seen = [], 0, set()
    for ex in examples:
        k = normalize_question(ex.question)
        if k in forbidden or k in seen:
            dropped += 1
            continue
        seen.add(k)
        kept.append(ex)
    return kept, dropped


def load_eval_set(
    doc: RunDocument, es: EvalSetSpec, forbidden: Mapping[str, str]
) -> tuple[list[Example], dict]:
    """The questions of one eval set, without any training/compile question; (examples, info)."""
    data = doc.spec.data
    if es.name == "heldout":
        assert es.num_questions is not None
        # Generate the held-out stream as disjoint from the training AND the compile window.
        window = data.model_copy(update={"num_examples": data.num_examples + doc.spec.compile.num_questions})
        extra = 0
        while True:
            try:
                raw = load_heldout_examples(window, es.num_questions + extra)
            except ValueError as e:
                raise CompileError(f"eval set {es.id!r}: {e}") from None
            kept, dropped = _drop_forbidden(raw, forbidden)
            if len(kept) >= es.num_questions or extra >= 4 * es.num_questions:
                break
            extra += max(es.num_questions - len(kept), 8)
        kept = kept[: es.num_questions]
        source = f"held-out {data.source}"
    else:
        spec = DataSpec(
            source=es.name,
            path=es.path,
            hub_config=es.hub_config,
            split=es.split,
            question_field=es.question_field,
            answer_field=es.answer_field,
            seed=data.seed,
        )
        from flowdpo.data.sources import load_source_examples

        raw, _report = load_source_examples(spec, split=es.split, limit=None)
        kept, dropped = _drop_forbidden(raw, forbidden)
        if es.num_questions is not None:
            kept = kept[: es.num_questions]
        source = es.path or es.name
    if not kept:
        raise CompileError(f"eval set {es.id!r}: no usable question left")
    check_disjoint(kept, forbidden, f"eval set {es.id!r}")
    info = {
        "id": es.id,
        "title": es.title,
        "name": es.name,
        "split": es.split,
        "source": source,
        "questions": len(kept),
        "droppedOverlapping": dropped,
    }
    return kept, info


# -- models ----------------------------------------------------------------------------------------
def sft_sources_in_store(store: ObjectStore) -> list[str]:
    return [s for s in COMPILE_SOURCES if store.exists(RunLayout.sft_log(s))]


def load_eval_model(doc: RunDocument, store: ObjectStore, sources: Sequence[str]):
    """(backend, prompts): the base model with each SFT adapter loaded under the name `sft-<source>`."""
    from peft import PeftModel

    from flowdpo.flow.backend import TransformersBackend
    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.models import load_base_model

    spec = doc.spec
    model, tok = load_base_model(spec.model, spec.device)
    with tempfile.TemporaryDirectory(prefix="flowdpo-eval-") as tmp:
        for i, s in enumerate(sources):
            folder = Path(tmp) / s
            folder.mkdir()
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                (folder / name).write_bytes(store.get(f"{RunLayout.sft_adapter(s)}/{name}"))
            if i == 0:
                model = PeftModel.from_pretrained(model, str(folder), adapter_name=f"sft-{s}")
            else:
                model.load_adapter(str(folder), adapter_name=f"sft-{s}")
    if not sources:  # the zero-shot row runs under disable_adapter(): give the model a (zero) adapter
        from peft import get_peft_model

        from flowdpo.train.adapters import lora_config

        model = get_peft_model(model, lora_config(spec.compile.sft.lora))
    from flowdpo.compile.traces import inference_dtype

    inference_dtype(model)
    prompts = PromptBuilder(tok, spec.flow)
    backend = TransformersBackend(model, tok, prompts.eos_ids, max_batch=spec.compile.evaluation.batch_size)
    return backend, prompts


def graded_outcome(ex: Example, text: str, **extra: Any) -> dict:
    """One eval outcome record (eval/outcomes/<row>/<set>.jsonl): the answer, what was extracted, correct."""
    g = grade(text, ex.answer)
    return {
        "exampleId": ex.id,
        "question": ex.question,
        "gold": ex.answer,
        "answer": text,
        "extracted": g.extracted,
        "correct": g.correct,
        **extra,
    }


def answer_questions(
    backend,
    prompts,
    adapter: str | None,
    examples: Sequence[Example],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_p: float = 1.0,
) -> list[dict]:
    import torch

    torch.manual_seed(seed)
    outs = backend.generate(
        [prompts.answer_prompt(ex.question) for ex in examples], adapter, max_new_tokens, temperature, top_p
    )
    rows = []
    for ex, ids in zip(examples, outs):
        text = prompts.decode([t for t in ids if t not in prompts.eos_ids])
        rows.append(graded_outcome(ex, text, tokens=len(ids)))
    return rows


def cell(rows: Sequence[dict], samples: int = 1) -> dict[str, Any]:
    """Accuracy over every answer of a row on a set. With several samples per question the Wilson interval
    treats answers as independent (optimistic); compare rows with the clustered bootstrap of the report."""
    n = len(rows)
    k = sum(1 for r in rows if r["correct"])
    lo, hi = wilson_interval(k, n)
    out = {"examples": n, "correct": k, "accuracy": k / n if n else None, "ci95": [lo, hi] if n else None}
    if samples > 1:
        out["samplesPerQuestion"] = samples
        out["questions"] = n // samples
    return out


def samples_per_question(doc: RunDocument, row: str) -> int:
    """compile.evaluation.flowSamples for the flow rows and the 0-shot row sampled like them, else 1."""
    return (
        doc.spec.compile.evaluation.flow_samples
        if row in (FLOW_TRAINED, FLOW_UNTRAINED, ZERO_SHOT_SAMPLED)
        else 1
    )


# -- the table -------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _cell_text(c: dict[str, Any]) -> str:
    lo, hi = c["ci95"]
    return f"{_pct(c['accuracy'])} [{_pct(lo)}, {_pct(hi)}] ({c['correct']}/{c['examples']})"


def markdown_table(sets: Sequence[dict], rows: Sequence[dict], cell_text) -> list[str]:
    """The compile table's markdown lines: one row per model, one column per eval set ('-' where empty)."""
    lines = [
        "| model | " + " | ".join(f"{s['title']} (n={s['questions']})" for s in sets) + " |",
        "|---" * (len(sets) + 1) + "|",
    ]
    for row in rows:
        cells = [row["results"].get(s["id"]) for s in sets]
        texts = [cell_text(c) if c and c["examples"] else "-" for c in cells]
        lines.append(f"| {row['label']} | " + " | ".join(texts) + " |")
    return lines


def render_table(table: dict[str, Any]) -> str:
    sets = table["sets"]
    lines = [f"# Compile table: run `{table['run']}`", ""]
    lines.append(
        f"- Base model: `{table['model']}`; SFT traces per source: {table.get('tracesPerSource', '-')} "
        "(the same questions for every source)"
    )
    lines.append(
        "- Accuracy in %, with the 95% Wilson interval and correct/n; each row's decoding in brackets"
    )
    if any(r["row"] in (FLOW_TRAINED, FLOW_UNTRAINED) for r in table["rows"]):
        lines.append(
            "- The flow rows answer with the flow itself (chunks + Stop decisions) and are compared with the 0-shot "
            "model decoded the same way (same sampling, same token budget)."
        )
    lines.append("- Evaluation questions share no question with the training or compile questions (checked).")
    labelled = [
        {**r, "label": f"{r['label']} [{_decoding_text(r['decoding'])}]"} if r.get("decoding") else r
        for r in table["rows"]
    ]
    lines += ["", *markdown_table(sets, labelled, _cell_text)]
    lines += [
        "",
        "Generated by `flowdpo eval`; numbers in table.json, per-question outcomes in eval/outcomes/.",
        "",
    ]
    return "\n".join(lines)


def row_decoding(doc: RunDocument, row: str) -> dict[str, Any]:
    """How a row decodes: the flow rows and the sampled 0-shot row like the flow (its temperature, top-p and
    chunkTokens x maxChunks budget), every other row with compile.evaluation's settings."""
    spec = doc.spec
    ev = spec.compile.evaluation
    flow_budget = spec.flow.chunk_tokens * spec.flow.max_chunks
    if row in (FLOW_TRAINED, FLOW_UNTRAINED, ZERO_SHOT_SAMPLED):
        return {"temperature": spec.flow.temperature, "topP": spec.flow.top_p, "maxNewTokens": flow_budget}
    return {"temperature": ev.temperature, "topP": 1.0, "maxNewTokens": ev.max_new_tokens or flow_budget}


def _decoding_text(d: dict[str, Any]) -> str:
    how = (
        "greedy"
        if d["temperature"] == 0
        else f"T {d['temperature']:g}" + (f", top-p {d['topP']:g}" if d["topP"] < 1 else "")
    )
    return f"{how}, {d['maxNewTokens']} tokens"


def _row_fingerprint(doc: RunDocument, store: ObjectStore, row: str, max_new: int) -> str:
    """What a row's outcomes depend on: the base model, the generation settings and, for an SFT row, the
    adapter's training log (rewritten whenever the adapter is retrained)."""
    ev = doc.spec.compile.evaluation
    sft_log = store.get_json(RunLayout.sft_log(row.removeprefix("sft-"))) if row.startswith("sft-") else None
    flow = None
    if row in (FLOW_TRAINED, FLOW_UNTRAINED):
        flow = {"flow": doc.spec.flow.model_dump(mode="json"), "lora": doc.spec.lora.model_dump(mode="json")}
        if row == FLOW_TRAINED:
            flow["adapterVersions"] = store.get_json_or(RunLayout.adapters_latest)
    payload = {
        "model": doc.spec.model.model_dump(mode="json"),
        "temperature": ev.temperature,
        "maxNewTokens": max_new,
        "seed": doc.spec.seed,
        "prompt": doc.spec.flow.answer_system_prompt,
        "sftLog": sft_log,
    }
    if flow is not None:  # only flow rows carry it: the other rows' stored outcomes stay valid
        payload["flow"] = flow
    if row == ZERO_SHOT_SAMPLED:
        payload["decoding"] = row_decoding(doc, row)
    if samples_per_question(doc, row) > 1:
        payload["samples"] = samples_per_question(doc, row)
    return fingerprint(payload)


def load_flow_model(doc: RunDocument, store: ObjectStore):
    """(backend, prompts): the base model with the run's Answer and Stop adapters at their final versions."""
    from flowdpo.flow.backend import TransformersBackend
    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.models import load_base_model
    from flowdpo.train.adapters import attach_adapters

    spec = doc.spec
    model, tok = load_base_model(spec.model, spec.device)
    model = attach_adapters(model, spec.lora, spec.seed)
    prompts = PromptBuilder(tok, spec.flow)
    backend = TransformersBackend(model, tok, prompts.eos_ids, max_batch=spec.compile.evaluation.batch_size)
    for name, version in (store.get_json_or(RunLayout.adapters_latest) or {}).items():
        if version:
            files = {
                f: store.get(f"{RunLayout.adapter(name, version)}/{f}")
                for f in ("adapter_config.json", "adapter_model.safetensors")
            }
            backend.load_adapter(name, version, files)
    return backend, prompts


def answer_with_flow(
    backend,
    prompts,
    spec,
    examples: Sequence[Example],
    trained: bool,
    samples: int = 1,
    batch_questions: int = 64,
) -> list[dict]:
    """Each question answered `samples` times by the flow (Answer chunks + Stop decisions, the flow's sampling
    settings), in blocks of `batch_questions` questions; trained=False: the untrained flow (base model in both
    roles). Every call starts from the same seeds, so two flows see the same random stream as far as their
    batches agree. Each record carries its sample index, the Stop probabilities and the partial answers' end."""
    import random

    import torch

    from flowdpo.flow.engine import run_flows
    from flowdpo.flow.rollouts import final_text, main_state

    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    out: list[dict] = []
    for start in range(0, len(examples), batch_questions):
        block = examples[start : start + batch_questions]
        states = [main_state(ex, prompts, use_adapters=trained) for ex in block for _ in range(samples)]
        backend.reset()
        run_flows(states, backend, prompts, spec.flow, rng)
        for i, st in enumerate(states):
            ex = block[i // samples]
            out.append(
                graded_outcome(
                    ex,
                    final_text(st, prompts),
                    sample=i % samples,
                    chunks=len(st.chunks),
                    endReason=st.end_reason,
                    pStop=[round(p, 4) for p in st.p_stop],
                    tokens=st.tokens,
                    partials=[
                        prompts.decode(st.partial_ids(prompts.eos_ids, upto=k + 1))
                        for k in range(len(st.decisions))
                    ],
                )
            )
    return out


def stop_discrimination(backend, prompts, spec, outcomes: Sequence[dict]) -> dict[str, Any]:
    """How well the Stop decision separates partial answers that are already right from the others, before
    and after training, on the SAME partial answers: every point where the untrained flow asked its Stop LLM
    on the held-out questions (`outcomes`: its eval records). A partial answer is "complete" when stopping
    there would be graded correct. Reported per Stop model: AUC of P(yes) (bootstrap 95% interval) and the
    mean P(yes) of each class."""
    from flowdpo.flow.engine import stop_probability
    from flowdpo.grading import grade
    from flowdpo.stats import auc, auc_interval

    points = [
        (r["question"], text, grade(text, r["gold"]).correct)
        for r in outcomes
        for text in r.get("partials", [])
    ]
    out: dict[str, Any] = {"partials": len(points), "complete": sum(1 for *_, c in points if c)}
    if not points:
        return out
    contexts = [prompts.stop_prompt(q, text) for q, text, _ in points]
    decision = prompts.yes_ids + prompts.no_ids
    for name, adapter in (("untrained", None), ("trained", "stop")):
        logps = backend.next_token_logprobs(contexts, adapter, decision)
        p = [stop_probability(lp, len(prompts.yes_ids), spec.flow.stop_temperature) for lp in logps]
        pos = [x for x, (*_, c) in zip(p, points) if c]
        neg = [x for x, (*_, c) in zip(p, points) if not c]
        ci = auc_interval(pos, neg)
        out[name] = {
            "auc": auc(pos, neg),
            "aucCi95": list(ci) if ci else None,
            "meanPYesComplete": sum(pos) / len(pos) if pos else None,
            "meanPYesIncomplete": sum(neg) / len(neg) if neg else None,
        }
    return out


def _stored_outcomes(
    store: ObjectStore, row: str, set_id: str, examples: Sequence[Example], fp: str, samples: int = 1
) -> list[dict] | None:
    """The outcomes an earlier (possibly interrupted) `flowdpo eval` stored for this row and set, if they
    are for exactly these questions (and samples) and this fingerprint; else None (to be recomputed)."""
    key = RunLayout.eval_outcomes(row, set_id)
    if not store.exists(key):
        return None
    rows = store.get_jsonl(key)
    if [r.get("exampleId") for r in rows] != [ex.id for ex in examples for _ in range(samples)]:
        return None
    if any(r.get("fingerprint") != fp for r in rows):
        return None
    return rows


def evaluate_run(
    doc: RunDocument, *, require_finished: bool = True, show_progress: bool = False, only: Sequence[str] | None = None
) -> dict[str, Any]:
    """Evaluate the 0-shot base model and every SFT model of the run; write eval/ and return the table.
    `only`: evaluate just these rows (e.g. the trained flow of a control run whose other rows would repeat
    another run's)."""
    spec = doc.spec
    ev = spec.compile.evaluation
    store = open_run(doc, require_finished=require_finished)
    forbidden = forbidden_questions(store)
    sets = []
    for es in ev.resolved_sets(spec.data):
        examples, info = load_eval_set(doc, es, forbidden)
        sets.append((es, examples, info))
    sources = sft_sources_in_store(store)
    rows = [ZERO_SHOT] + [f"sft-{s}" for s in sources]
    if ev.flow_rows:
        rows += [FLOW_TRAINED, FLOW_UNTRAINED, ZERO_SHOT_SAMPLED]
    if only:
        unknown = sorted(set(only) - set(rows))
        if unknown:
            raise CompileError(f"--rows: {unknown} not among this run's rows {rows}")
        rows = [r for r in rows if r in only]
    max_new = ev.max_new_tokens or spec.flow.chunk_tokens * spec.flow.max_chunks
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows) * len(sets), unit="cell", desc="eval", dynamic_ncols=True)
    backend = prompts = flow_backend = flow_prompts = None
    out_rows = []
    everything = [ex for _, examples, _ in sets for ex in examples]  # one batched call per row
    for row in rows:
        adapter = None if row == ZERO_SHOT else row
        k = samples_per_question(doc, row)
        fp = _row_fingerprint(doc, store, row, max_new)
        stored = {es.id: _stored_outcomes(store, row, es.id, examples, fp, k) for es, examples, _ in sets}
        if all(v is not None for v in stored.values()):
            log.info("eval %s: reusing stored outcomes (same questions, model and settings)", row)
            answered = [r for es, _, _ in sets for r in stored[es.id]]
        elif row in (FLOW_TRAINED, FLOW_UNTRAINED):
            if flow_backend is None:
                backend = None  # one model at a time (an 8B model twice would not fit many GPUs)
                gc.collect()
                flow_backend, flow_prompts = load_flow_model(doc, store)
            answered = answer_with_flow(
                flow_backend, flow_prompts, spec, everything, trained=row == FLOW_TRAINED, samples=k
            )
            for r in answered:
                r["fingerprint"] = fp
        else:
            if backend is None:
                backend, prompts = load_eval_model(doc, store, sources)
            d = row_decoding(doc, row)
            adapter = None if row == ZERO_SHOT_SAMPLED else adapter
            answered = answer_questions(
                backend,
                prompts,
                adapter,
                [ex for ex in everything for _ in range(k)],
                d["maxNewTokens"],
                d["temperature"],
                spec.seed,
                d["topP"],
            )
            for i, r in enumerate(answered):
                r["sample"] = i % k
            for r in answered:
                r["fingerprint"] = fp
        results, start = {}, 0
        for es, examples, info in sets:
            outcomes = answered[start : start + len(examples) * k]
            start += len(examples) * k
            if stored[es.id] is None:
                store.put(
                    RunLayout.eval_outcomes(row, es.id),
                    "".join(json.dumps(r, sort_keys=True) + "\n" for r in outcomes).encode(),
                )
            results[es.id] = cell(outcomes, k)
            if bar is not None:
                bar.update(1)
        entry: dict[str, Any] = {
            "row": row,
            "label": ROW_LABELS[row],
            "decoding": row_decoding(doc, row),
            "results": results,
        }
        if row.startswith("sft-"):
            entry["sftLog"] = RunLayout.sft_log(row.removeprefix("sft-"))
        out_rows.append(entry)
    if bar is not None:
        bar.close()
    stop = None
    if ev.flow_rows and FLOW_UNTRAINED in rows and FLOW_TRAINED in rows:
        # The Stop decision's discrimination, untrained vs trained, on the untrained flow's partial answers.
        untrained = [
            r for es, _, _ in sets for r in store.get_jsonl(RunLayout.eval_outcomes(FLOW_UNTRAINED, es.id))
        ]
        stop = store.get_json_or(RunLayout.eval_stop)
        want = fingerprint(
            {
                "untrained": sorted({r.get("fingerprint") for r in untrained}),
                "trained": store.get_json_or(RunLayout.adapters_latest),
                "answers": len(untrained),
            }
        )
        if stop is None or stop.get("fingerprint") != want:
            if flow_backend is None:
                backend = None
                gc.collect()
                flow_backend, flow_prompts = load_flow_model(doc, store)
            stop = {**stop_discrimination(flow_backend, flow_prompts, spec, untrained), "fingerprint": want}
            store.put_json(RunLayout.eval_stop, stop)
    backend = flow_backend = None
    gc.collect()
    manifest = store.get_json_or(RunLayout.compile_manifest) or {}
    table = {
        "run": doc.name,
        "model": spec.model.name,
        "temperature": ev.temperature,
        "maxNewTokens": max_new,
        "tracesPerSource": manifest.get("tracesPerSource"),
        "adapterVersions": manifest.get("adapterVersions"),
        "sets": [info for _, _, info in sets],
        "rows": out_rows,
        "updatedAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if stop is not None:
        table["stopDiscrimination"] = {k: v for k, v in stop.items() if k != "fingerprint"}
    store.put_json(RunLayout.eval_table_json, table)
    store.put(RunLayout.eval_table_md, render_table(table).encode())
    return table
