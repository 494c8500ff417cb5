"""Step 1 of `flowdpo compile`: traces of the compile questions from three sources, and the equal-data rule.

Sources (one row each in the paper's Table 1):

- `flow-generated`: the trained flow (Answer + Stop adapters at the versions in adapters/LATEST.json) answers
  each question `compile.samplesPerQuestion` times; a trace is the flow's final text (the concatenated chunks).
- `self-generated`: the base model alone (adapters disabled), one pass with the flow's token budget
  (chunkTokens x maxChunks) and sampling settings, the same number of attempts (rejection sampling).
- `ground-truth`: the dataset's worked solution (`Example.solution`).

Every attempt is graded (`flowdpo.grading.grade`) and stored under compile/candidates/<source>/part-N.jsonl,
one part per `compile.batchQuestions` questions, so an interrupted compile resumes at the next missing part.
A ground-truth solution counts only if it grades correct too (the same rule for every source).

**Equal-data rule** (`select_equal_data`): keep the questions on which EVERY source has a correct trace (the
intersection), one trace per source and question (the first correct attempt). So the three SFT sets hold the
same questions in the same order and the same number of traces; they differ only in the text of the traces.
We do not take "the same count" of possibly different questions (min count): the flow and the base model
solve different subsets, and SFT sets with different questions would compare question difficulty and
coverage, not trace quality. The price is a selection towards questions every source can solve; the
manifest records how many questions each source solved on its own.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowdpo.compile.common import CompileError, ensure_compile_questions, fingerprint
from flowdpo.data import Example
from flowdpo.grading import grade
from flowdpo.loader import latest_versions, load_trained_flow
from flowdpo.names import COMPILE_SOURCES
from flowdpo.spec import RunDocument
from flowdpo.storage import ObjectStore, RunLayout

log = logging.getLogger(__name__)


# -- the equal-data rule (pure) ----------------------------------------------------------------------
@dataclass
class Selection:
    questions: list[str]  # example ids kept, in compile-set order
    traces: dict[str, list[dict]]  # source -> one trace per kept question, same order
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> attempts / correct / solved


def first_correct(rows: Iterable[dict]) -> dict[str, dict]:
    """exampleId -> its correct attempt with the lowest sample index."""
    best: dict[str, dict] = {}
    for r in rows:
        if not r.get("correct"):
            continue
        q = r["exampleId"]
        if q not in best or r.get("sample", 0) < best[q].get("sample", 0):
            best[q] = r
    return best


def select_equal_data(
    candidates: Mapping[str, Sequence[dict]], question_ids: Sequence[str], max_traces: int | None = None
) -> Selection:
    """The equal-data selection: the questions where every source has a correct trace (in `question_ids`
    order, at most `max_traces`), and per source one trace for each of them."""
    if not candidates:
        raise ValueError("no trace sources")
    correct = {s: first_correct(rows) for s, rows in candidates.items()}
    common = [q for q in dict.fromkeys(question_ids) if all(q in c for c in correct.values())]
    if max_traces is not None:
        common = common[:max_traces]
    stats = {
        s: {
            "attempts": len(rows),
            "correctAttempts": sum(1 for r in rows if r.get("correct")),
            "questionsSolved": len(correct[s]),
            "kept": len(common),
        }
        for s, rows in candidates.items()
    }
    return Selection(common, {s: [correct[s][q] for q in common] for s in candidates}, stats)


def check_equal_data(traces: Mapping[str, Sequence[dict]]) -> list[str]:
    """Raise ValueError unless every source has the same questions, in the same order, once each; return them."""
    sources = list(traces)
    if not sources:
        raise ValueError("no trace sources")
    ref = [t["exampleId"] for t in traces[sources[0]]]
    if len(set(ref)) != len(ref):
        raise ValueError(f"{sources[0]}: a question has more than one trace")
    for s in sources[1:]:
        ids = [t["exampleId"] for t in traces[s]]
        if ids != ref:
            raise ValueError(
                f"equal-data rule violated: {s} has {len(ids)} traces, {sources[0]} has {len(ref)}, "
                f"or their questions differ"
            )
    return ref


# -- generation -------------------------------------------------------------------------------------
def part_seed(seed: int, source: str, part: int) -> int:
    return zlib.crc32(f"{seed}:compile:{source}:{part}".encode())


def ground_truth_attempts(examples: Sequence[Example]) -> list[dict]:
    rows = []
    for ex in examples:
        if ex.solution is None:
            rows.append({"exampleId": ex.id, "sample": 0, "trace": None, "correct": False, "extracted": None})
            continue
        g = grade(ex.solution, ex.answer)
        rows.append(
            {
                "exampleId": ex.id,
                "sample": 0,
                "trace": ex.solution,
                "correct": g.correct,
                "extracted": g.extracted,
            }
        )
    return rows


def flow_attempts(examples, backend, prompts, flow_spec, samples: int, seed: int) -> list[dict]:
    """`samples` flows per question with the trained adapters, graded."""
    import torch

    from flowdpo.flow.engine import run_flows
    from flowdpo.flow.rollouts import final_text, main_state

    rng = random.Random(seed)
    torch.manual_seed(seed)
    states = [main_state(ex, prompts) for ex in examples for _ in range(samples)]
    run_flows(states, backend, prompts, flow_spec, rng)
    rows = []
    for i, st in enumerate(states):
        ex = examples[i // samples]
        text = final_text(st, prompts)
        rows.append(
            _attempt(ex, i % samples, text, tokens=sum(len(c) for c in st.chunks), chunks=len(st.chunks),
                     endReason=st.end_reason)
        )
    return rows


def base_attempts(examples, backend, prompts, flow_spec, samples: int, seed: int) -> list[dict]:
    """`samples` single-pass answers per question from the base model (adapters disabled), graded."""
    import torch

    torch.manual_seed(seed)
    contexts = [prompts.answer_prompt(ex.question) for ex in examples for _ in range(samples)]
    outs = backend.generate(
        contexts, None, flow_spec.chunk_tokens * flow_spec.max_chunks, flow_spec.temperature, flow_spec.top_p
    )
    rows = []
    for i, ids in enumerate(outs):
        ex = examples[i // samples]
        text = prompts.decode([t for t in ids if t not in prompts.eos_ids])
        finished = bool(ids) and ids[-1] in prompts.eos_ids
        rows.append(_attempt(ex, i % samples, text, tokens=len(ids), endReason="eos" if finished else "max_tokens"))
    return rows


def _attempt(ex, sample: int, text: str, **extra) -> dict:
    """One graded attempt of a candidate file (compile/candidates/<source>/part-N.jsonl)."""
    g = grade(text, ex.answer)
    return {"exampleId": ex.id, "sample": sample, "trace": text, "correct": g.correct, "extracted": g.extracted, **extra}


def _plan(doc: RunDocument, versions: dict[str, int]) -> dict[str, Any]:
    """Everything the candidates depend on; a stored plan that differs means stale candidates."""
    s = doc.spec
    return {
        "model": s.model.model_dump(mode="json"),
        "flow": s.flow.model_dump(mode="json"),
        "data": s.data.model_dump(mode="json"),
        "numQuestions": s.compile.num_questions,
        "samplesPerQuestion": s.compile.samples_per_question,
        "batchQuestions": s.compile.batch_questions,
        "seed": s.seed,
        "adapterVersions": versions,
    }


def generate_candidates(
    doc: RunDocument, store: ObjectStore, show_progress: bool = False
) -> tuple[dict[str, list[dict]], list[Example], dict[str, Any]]:
    """(graded attempts per source, compile questions, plan); parts already in storage are reused."""
    spec = doc.spec
    versions = latest_versions(store)
    plan = _plan(doc, versions)
    if not store.create_json(RunLayout.compile_plan, plan):
        stored = store.get_json(RunLayout.compile_plan)
        if stored != plan:
            differ = sorted(k for k in set(plan) | set(stored) if plan.get(k) != stored.get(k))
            raise CompileError(
                f"{store.uri}: compile/ holds traces made with other settings ({', '.join(differ)} differ); "
                "delete compile/ (or use a new storage prefix) to redo them"
            )
    questions = ensure_compile_questions(store, doc)
    step = spec.compile.batch_questions
    parts = [questions[i : i + step] for i in range(0, len(questions), step)]

    missing = [
        (s, p)
        for s in COMPILE_SOURCES
        for p in range(len(parts))
        if not store.exists(RunLayout.compile_candidates(s, p))
    ]
    if any(s != "ground-truth" for s, _ in missing):
        batch = doc.spec.compile.batch_questions * doc.spec.compile.samples_per_question
        backend, prompts = load_trained_flow(doc, store, min(batch, 64), cast_lora=True)
        served = backend.versions()
        if served != versions:
            raise CompileError(
                f"loaded adapter versions {served} differ from adapters/LATEST.json {versions}"
            )
    bar = None
    if show_progress and missing:
        from tqdm import tqdm

        bar = tqdm(total=len(missing), unit="part", desc="compile traces", dynamic_ncols=True)
    for source, p in missing:
        exs = parts[p]
        seed = part_seed(spec.seed, source, p)
        if source == "ground-truth":
            rows = ground_truth_attempts(exs)
        elif source == "flow-generated":
            rows = flow_attempts(exs, backend, prompts, spec.flow, spec.compile.samples_per_question, seed)
        else:
            rows = base_attempts(exs, backend, prompts, spec.flow, spec.compile.samples_per_question, seed)
        store.create_jsonl(RunLayout.compile_candidates(source, p), rows)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return (
        {
            s: [r for p in range(len(parts)) for r in store.get_jsonl(RunLayout.compile_candidates(s, p))]
            for s in COMPILE_SOURCES
        },
        questions,
        plan,
    )


def build_traces(doc: RunDocument, store: ObjectStore, show_progress: bool = False) -> dict[str, Any]:
    """Generate (or reuse) the candidates, apply the equal-data rule, write compile/traces/* and the manifest."""
    spec = doc.spec
    candidates, questions, plan = generate_candidates(doc, store, show_progress)
    by_id = {ex.id: ex for ex in questions}
    sel = select_equal_data(candidates, [ex.id for ex in questions], spec.compile.max_traces)
    if not sel.questions:
        solved = {s: st["questionsSolved"] for s, st in sel.stats.items()}
        raise CompileError(
            f"no compile question has a correct trace from every source (questions solved per source: {solved} "
            f"of {len(questions)}); use more compile questions or samplesPerQuestion"
        )
    provenance = {"run": doc.name, "model": spec.model.name}
    for source, rows in sel.traces.items():
        out = []
        for r in rows:
            ex = by_id[r["exampleId"]]
            rec = {
                **r,
                "source": source,
                "question": ex.question,
                "gold": ex.answer,
                "task": ex.source,
                **provenance,
            }
            if source == "flow-generated":
                rec["adapterVersions"] = plan["adapterVersions"]
            out.append(rec)
        store.put(RunLayout.compile_traces(source), _jsonl(out))
    traces = {s: store.get_jsonl(RunLayout.compile_traces(s)) for s in COMPILE_SOURCES}
    kept = check_equal_data(traces)
    manifest = {
        "run": doc.name,
        "model": spec.model.name,
        "adapterVersions": plan["adapterVersions"],
        "planFingerprint": fingerprint(plan),
        "compileQuestions": len(questions),
        "samplesPerQuestion": spec.compile.samples_per_question,
        "rule": "intersection: questions where every source has a correct trace; first correct attempt each",
        "maxTraces": spec.compile.max_traces,
        "keptQuestions": kept,
        "tracesPerSource": len(kept),
        "sources": sel.stats,
        "tracesFingerprint": {s: fingerprint(traces[s]) for s in COMPILE_SOURCES},
        "updatedAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    store.put_json(RunLayout.compile_manifest, manifest)
    return manifest


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
