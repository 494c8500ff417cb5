"""How each row of the compile table answers: 0-shot and SFT models one pass per question, the flow chunk by chunk with its Stop adapter, all graded the same way."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from flowdpo.data import Example
from flowdpo.grading import grade
from flowdpo.storage import CorruptObjectError

log = logging.getLogger(__name__)


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
    block: int | None = None,
    checkpoint: RowCheckpoint | None = None,
) -> list[dict]:
    """One answer per entry of `examples` (one pass of the model; `adapter` None: the base model), from `seed`.
    `block`: answer that many entries per call, saving `checkpoint` after each, so that an interrupted row
    resumes at its next block with the random state it had there (the same answers as without the interruption)."""
    import torch

    torch.manual_seed(seed)
    rows: list[dict] = []
    first = 0
    restored = checkpoint.load() if checkpoint is not None else None
    if restored is not None:
        rows, first, torch_state, _ = restored
        torch.set_rng_state(torch_state)
    step = block or max(len(examples), 1)
    for start in range(first, len(examples), step):
        part = examples[start : start + step]
        outs = backend.generate(
            [prompts.answer_prompt(ex.question) for ex in part], adapter, max_new_tokens, temperature, top_p
        )
        for ex, ids in zip(part, outs):
            text = prompts.decode([t for t in ids if t not in prompts.eos_ids])
            ended = any(t in prompts.eos_ids for t in ids)
            rows.append(graded_outcome(ex, text, tokens=len(ids), endReason="eos" if ended else "length"))
        if checkpoint is not None:
            checkpoint.save(rows, start + step, torch.get_rng_state())
    return rows


def answer_with_flow(
    backend,
    prompts,
    spec,
    examples: Sequence[Example],
    trained: bool,
    samples: int = 1,
    batch_questions: int = 64,
    checkpoint=None,
) -> list[dict]:
    """Each question answered `samples` times by the flow (Answer chunks + Stop decisions, the flow's sampling
    settings), in blocks of `batch_questions` questions; trained=False: the untrained flow (base model in both
    roles). Every call starts from the same seeds, so two flows see the same random stream as far as their
    batches agree. Each record carries its sample index, the Stop probabilities and the partial answers' end.
    `checkpoint` (a RowCheckpoint): saved after every block and resumed from, with the random state, so an
    interrupted row ends with the same answers as an uninterrupted one."""
    import random

    import torch

    from flowdpo.flow.engine import run_flows
    from flowdpo.flow.rollouts import final_text, main_state

    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    out: list[dict] = []
    first = 0
    restored = checkpoint.load() if checkpoint is not None else None
    if restored is not None and restored[3] is None:
        restored = None  # a flow row's checkpoint holds both random states; without one, answer from the start
    if restored is not None:  # the blocks answered before an interruption, and the random state after them
        out, first, torch_state, rng_state = restored
        torch.set_rng_state(torch_state)
        rng.setstate(rng_state)
    for start in range(first, len(examples), batch_questions):
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
        if checkpoint is not None:
            checkpoint.save(out, start + batch_questions, torch.get_rng_state(), rng.getstate())
    return out


def stop_discrimination(backend, prompts, spec, outcomes: Sequence[dict]) -> dict[str, Any]:
    """How well the Stop decision separates partial answers that are already right from the others, before
    and after training, on the SAME partial answers: every point where the untrained flow asked its Stop LLM
    on the held-out questions (`outcomes`: its eval records). A partial answer is "complete" when stopping
    there would be graded correct. Reported per Stop model: AUC of P(yes) (bootstrap 95% interval) and the
    mean P(yes) of each class."""
    from flowdpo.flow.engine import stop_probability
    from flowdpo.grading import grade
    from flowdpo.report.stats import auc, auc_interval

    points = [
        (r["question"], text, grade(text, r["gold"]).correct)
        for r in outcomes
        for text in r.get("partials", [])
    ]
    out: dict[str, Any] = {"partials": len(points), "complete": sum(1 for *_, c in points if c)}
    if not points:
        return out
    # Every partial's label and P(yes) under each Stop model, for the report's ROC curves.
    out["scores"] = {"complete": [c for *_, c in points]}
    contexts = [prompts.stop_prompt(q, text) for q, text, _ in points]
    decision = prompts.yes_ids + prompts.no_ids
    for name, adapter in (("untrained", None), ("trained", "stop")):
        logps = backend.next_token_logprobs(contexts, adapter, decision)
        p = [stop_probability(lp, len(prompts.yes_ids), spec.flow.stop_temperature) for lp in logps]
        pos = [x for x, (*_, c) in zip(p, points) if c]
        neg = [x for x, (*_, c) in zip(p, points) if not c]
        ci = auc_interval(pos, neg)
        out["scores"][name] = [round(x, 6) for x in p]
        out[name] = {
            "auc": auc(pos, neg),
            "aucCi95": list(ci) if ci else None,
            "meanPYesComplete": sum(pos) / len(pos) if pos else None,
            "meanPYesIncomplete": sum(neg) / len(neg) if neg else None,
        }
    return out


class RowCheckpoint:
    """An eval row's answers so far in the run's store (`eval/partial/<row>.json`), valid only for the same
    questions and settings (`fingerprint`): a long row (a flow row, a sampled row of thousands of answers)
    resumes at its next block after an interruption."""

    def __init__(self, store, key: str, fingerprint: str):
        self.store, self.key, self.fingerprint = store, key, fingerprint

    def load(self):
        """(answers, next question index, torch RNG state, Python RNG state or None), or None."""
        import base64

        import torch

        try:
            blob = self.store.get_json_or(self.key)
        except CorruptObjectError as e:
            log.warning("%s; the row is answered again from its start", e)
            return None  # not JSON: as damaged as a blob without its fields
        if not isinstance(blob, dict) or blob.get("fingerprint") != self.fingerprint:
            return None
        try:
            torch_state = torch.frombuffer(
                bytearray(base64.b64decode(blob["torchRng"])), dtype=torch.uint8
            ).clone()
            python_state = None
            if blob["pythonRng"] is not None:  # a one-pass row draws from torch only
                version, internal, gauss = blob["pythonRng"]
                python_state = (version, tuple(internal), gauss)
            return blob["answers"], int(blob["next"]), torch_state, python_state
        except (KeyError, TypeError, ValueError):
            return None  # damaged: answer the row again from its start

    def save(self, answers: list[dict], next_index: int, torch_state, rng_state=None) -> None:
        import base64

        self.store.put_json(
            self.key,
            {
                "fingerprint": self.fingerprint,
                "next": next_index,
                "answers": answers,
                "torchRng": base64.b64encode(torch_state.numpy().tobytes()).decode(),
                "pythonRng": None if rng_state is None else [rng_state[0], list(rng_state[1]), rng_state[2]],
            },
        )

    def clear(self) -> None:
        if self.store.exists(self.key):
            self.store.delete(self.key)
