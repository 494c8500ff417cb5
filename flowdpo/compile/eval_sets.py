"""The questions an evaluation may use: its sets, minus every training and compile question (checked by normalized text)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flowdpo.compile.common import (
    CompileError,
    EvalLeakError,
    normalize_question,
    stored_compile_questions,
    training_questions,
)
from flowdpo.data import Example, load_heldout_examples
from flowdpo.names import COMPILE_SOURCES
from flowdpo.spec import DataSpec, EvalSetSpec, RunDocument
from flowdpo.storage import ObjectStore, RunLayout


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
