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
from collections.abc import Sequence
from typing import Any

from flowdpo.compile.common import CompileError, fingerprint, open_run
from flowdpo.compile.eval_answers import (
    RowCheckpoint,
    answer_questions,
    answer_with_flow,
    stop_discrimination,
)
from flowdpo.compile.eval_sets import forbidden_questions, load_eval_set
from flowdpo.compile.eval_table import ROW_LABELS, cell, render_table, row_decoding, samples_per_question
from flowdpo.data import Example
from flowdpo.loader import load_sft_models
from flowdpo.loader import load_trained_flow as load_flow_model
from flowdpo.names import COMPILE_SOURCES, FLOW_TRAINED, FLOW_UNTRAINED, ZERO_SHOT, ZERO_SHOT_SAMPLED
from flowdpo.spec import RunDocument
from flowdpo.storage import ObjectStore, RunLayout

log = logging.getLogger(__name__)

# Answers per call of a one-pass row, each block saved to eval/partial/<row>.json (a resumed row continues there).
ONE_PASS_BLOCK = 256


def sft_sources_in_store(store: ObjectStore) -> list[str]:
    return [s for s in COMPILE_SOURCES if store.exists(RunLayout.sft_log(s))]


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
    doc: RunDocument,
    *,
    require_finished: bool = True,
    show_progress: bool = False,
    only: Sequence[str] | None = None,
    stored_only: bool = False,
) -> dict[str, Any]:
    """Evaluate the 0-shot base model and every SFT model of the run; write eval/ and return the table.
    `only`: evaluate just these rows (e.g. the trained flow of a control run whose other rows would repeat
    another run's). `stored_only`: rebuild the table from stored outcomes and refuse (CompileError, before
    any model is loaded) if a row would have to be answered again, e.g. after an upgrade changed its
    questions or settings; what an older flowdpo did not store (the Stop scores) is still added."""
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
    # What each row's outcomes depend on, and the outcomes an earlier `flowdpo eval` stored for them.
    plan = {}
    for row in rows:
        fp, k = _row_fingerprint(doc, store, row, max_new), samples_per_question(doc, row)
        plan[row] = (
            fp,
            k,
            {es.id: _stored_outcomes(store, row, es.id, examples, fp, k) for es, examples, _ in sets},
        )
    if stored_only:
        missing = [
            f"{row} on {set_id}" for row in rows for set_id, got in plan[row][2].items() if got is None
        ]
        if missing:
            raise CompileError(
                f"--stored-only: no stored outcomes match the current questions and settings for {', '.join(missing)}"
                " (run without --stored-only to answer them again)"
            )
    for row in rows:
        adapter = None if row == ZERO_SHOT else row
        fp, k, stored = plan[row]
        # A row can be long (questions x samples answers or flows): it resumes block by block after an interruption.
        checkpoint = RowCheckpoint(
            store,
            RunLayout.eval_partial(row),
            fingerprint({"row": fp, "questions": [ex.id for ex in everything], "samples": k}),
        )
        if all(v is not None for v in stored.values()):
            log.info("eval %s: reusing stored outcomes (same questions, model and settings)", row)
            answered = [r for es, _, _ in sets for r in stored[es.id]]
        elif row in (FLOW_TRAINED, FLOW_UNTRAINED):
            if flow_backend is None:
                backend = None  # one model at a time (an 8B model twice would not fit many GPUs)
                gc.collect()
                flow_backend, flow_prompts = load_flow_model(
                    doc, store, doc.spec.compile.evaluation.batch_size, cast_lora=False
                )
            answered = answer_with_flow(
                flow_backend,
                flow_prompts,
                spec,
                everything,
                trained=row == FLOW_TRAINED,
                samples=k,
                checkpoint=checkpoint,
            )
            for r in answered:
                r["fingerprint"] = fp
        else:
            if backend is None:
                backend, prompts = load_sft_models(doc, store, sources)
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
                block=ONE_PASS_BLOCK,
                checkpoint=checkpoint,
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
        checkpoint.clear()  # the row is stored whole: its block checkpoint is done
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
        # A result stored before per-partial scores were kept is recomputed once (the report's ROC needs them).
        if stop is None or stop.get("fingerprint") != want or (stop.get("partials") and "scores" not in stop):
            if flow_backend is None:
                backend = None
                gc.collect()
                flow_backend, flow_prompts = load_flow_model(
                    doc, store, doc.spec.compile.evaluation.batch_size, cast_lora=False
                )
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
        table["stopDiscrimination"] = {k: v for k, v in stop.items() if k not in ("fingerprint", "scores")}
    store.put_json(RunLayout.eval_table_json, table)
    store.put(RunLayout.eval_table_md, render_table(table).encode())
    return table
