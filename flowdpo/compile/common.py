"""What the compile and eval steps share: opening a finished run, and the question sets they must keep apart.

The run file given to `flowdpo compile` / `flowdpo eval` must describe the run in storage: every section of
its spec except `compile` must equal the stored spec.yaml (the `compile` section may be added or changed
after training). The compile questions are the `compile.numQuestions` examples of the run's data source
right after the training window (`data.numExamples`), de-duplicated by question text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

import yaml

from flowdpo.data import Example, load_examples
from flowdpo.run.prepare import RunConflictError
from flowdpo.run.records import read_progress
from flowdpo.spec import RunDocument, parse_document
from flowdpo.storage import ObjectStore, RunLayout, open_store

log = logging.getLogger(__name__)


class CompileError(RuntimeError):
    """The compile/eval step cannot go on (unfinished run, no usable traces, ...); the message says why."""


class EvalLeakError(AssertionError):
    """An evaluation question is also a training or compile question (must never happen)."""


def normalize_question(text: str) -> str:
    """The form in which questions are compared for overlap: whitespace-collapsed, case-folded."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_run(doc: RunDocument, *, require_finished: bool = True) -> ObjectStore:
    """The run's store, after checking that it holds this run (spec equal outside `compile`) and, unless
    `require_finished` is False, that its training finished."""
    store = open_store(doc.storage_uri())
    try:
        raw = store.get(RunLayout.spec).decode()
    except KeyError:
        raise CompileError(
            f"{store.uri}: no run here ({RunLayout.spec} is missing); train first with `flowdpo run`"
        ) from None
    stored = parse_document(yaml.safe_load(raw), f"{store.uri}/{RunLayout.spec}")
    mine = doc.spec.stored_identity()
    theirs = stored.spec.stored_identity()
    if mine != theirs:
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise RunConflictError(
            f"{store.uri} holds a run made from a different spec (spec.{', spec.'.join(differ)} differ); "
            "only the compile section and operational fields may change after training"
        )
    if require_finished:
        progress = read_progress(store) or {}
        if progress.get("phase") != "Succeeded":
            raise CompileError(
                f"{store.uri}: training has not finished (phase {progress.get('phase', 'unknown')!r}); "
                "compile uses the final adapters (pass --allow-unfinished to use the current ones)"
            )
    return store


def select_compile_questions(doc: RunDocument) -> list[Example]:
    """The compile set: the next `compile.numQuestions` examples after the training window, de-duplicated."""
    spec = doc.spec
    examples, report = load_examples(
        spec.data, limit=spec.compile.num_questions, offset=spec.data.num_examples
    )
    seen: set[str] = set()
    out: list[Example] = []
    for ex in examples:
        key = normalize_question(ex.question)
        if key not in seen:
            seen.add(key)
            out.append(ex)
    if len(out) < len(examples):
        log.info("compile set: %d duplicate questions dropped", len(examples) - len(out))
    if not out:
        raise CompileError(
            f"no compile questions: data has nothing after the first {spec.data.num_examples} examples "
            f"({report.summary()})"
        )
    return out


def ensure_compile_questions(store: ObjectStore, doc: RunDocument) -> list[Example]:
    """The compile set, written once to compile/questions.jsonl (later calls read it back)."""
    rows = store.get_jsonl(RunLayout.compile_questions) if store.exists(RunLayout.compile_questions) else None
    if rows is None:
        examples = select_compile_questions(doc)
        store.create_jsonl(RunLayout.compile_questions, [ex.to_json() for ex in examples])
        rows = store.get_jsonl(RunLayout.compile_questions)
    return [Example.from_json(r) for r in rows]


def stored_compile_questions(store: ObjectStore) -> list[Example]:
    if not store.exists(RunLayout.compile_questions):
        return []
    return [Example.from_json(r) for r in store.get_jsonl(RunLayout.compile_questions)]


def training_questions(store: ObjectStore) -> list[Example]:
    """Every prepared training example of the run (examples/shard-*.jsonl)."""
    manifest = store.get_json_or(RunLayout.manifest)
    if manifest is None:
        raise CompileError(f"{store.uri}: no {RunLayout.manifest}; the run was never prepared")
    return [
        Example.from_json(r)
        for s in range(manifest["shards"])
        for r in store.get_jsonl(RunLayout.examples(s))
    ]
