"""Procedural training examples from reasoning-gym, mixed by weight.

Why the details matter:
* reasoning-gym items are `Random(seed + idx)`, so the streams of seeds s and s+1 overlap almost
  entirely. Every task and stream therefore gets its own 40-bit seed hashed from (run seed, stream,
  task name, occurrence): training and held-out streams never share an index range.
* The mix is a smooth weighted round-robin (no RNG): every prefix of the sequence - and so every shard -
  has the task proportions, and `offset`/`limit` windows are slices of one fixed sequence.
* Small configs have tiny question spaces (1-digit 2-term chain_sum: 200 distinct questions, products:
  100), so the held-out set is filtered against the training questions and may have to borrow from
  the tasks that still have unseen questions (logged).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import logging
import operator
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from flowdpo.data.types import Example, LoadReport

if TYPE_CHECKING:
    from flowdpo.spec import DataSpec, ReasoningGymTask

log = logging.getLogger(__name__)

# Consecutive unusable draws (bad item or already-seen question) before a stream counts as exhausted.
MAX_MISSES = 2000
_RESERVED_KEYS = ("seed", "size")
# Tasks whose metadata "expression" is exact arithmetic with the gold as its value (checked per item).
EXACT_ARITHMETIC_TASKS = frozenset({"chain_sum", "basic_arithmetic", "products"})


def _known_tasks() -> dict[str, tuple[type, type]]:
    import reasoning_gym  # noqa: F401  (registers every dataset)
    from reasoning_gym.factory import DATASETS

    return DATASETS


def _task_label(tasks: Sequence[ReasoningGymTask], i: int) -> str:
    """The task's name in ids; "name.k" when the same task appears more than once in the mix."""
    name = tasks[i].name
    if sum(t.name == name for t in tasks) == 1:
        return name
    return f"{name}.{sum(t.name == name for t in tasks[:i])}"


def _stream_seed(run_seed: int, stream: str, label: str) -> int:
    digest = hashlib.sha256(f"{run_seed}|{stream}|{label}".encode()).digest()
    return int.from_bytes(digest[:5], "big")


def _describe(i: int, task: ReasoningGymTask) -> str:
    return f"data.tasks[{i}] (name={task.name!r})"


def make_task_dataset(task: ReasoningGymTask, i: int, seed: int, size: int) -> Any:
    """`reasoning_gym.create_dataset` with errors turned into ValueErrors that name the task."""
    import reasoning_gym

    known = _known_tasks()
    where = _describe(i, task)
    if task.name not in known:
        close = difflib.get_close_matches(task.name, list(known), n=3)
        hint = f" did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{where}: unknown reasoning-gym task;{hint} known: {', '.join(sorted(known))}")
    config_cls = known[task.name][1]
    valid = [f.name for f in dataclasses.fields(config_cls) if f.name not in _RESERVED_KEYS]
    bad = [k for k in task.config if k not in valid]
    reserved = [k for k in task.config if k in _RESERVED_KEYS]
    if reserved:
        raise ValueError(f"{where}: config keys {reserved} are set by flowdpo (data.seed / data.numExamples)")
    if bad:
        raise ValueError(f"{where}: unknown config key(s) {bad}; valid keys: {', '.join(valid)}")
    try:
        return reasoning_gym.create_dataset(task.name, seed=seed, size=max(size, 1), **task.config)
    except (AssertionError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid config {task.config}: {e or type(e).__name__}") from None


def weighted_round_robin(weights: Sequence[float], n: int) -> list[int]:
    """Smooth weighted round-robin: n task indices whose every prefix follows the weights."""
    total = float(sum(weights))
    current = [0.0] * len(weights)
    order: list[int] = []
    for _ in range(n):
        for t, w in enumerate(weights):
            current[t] += w
        pick = max(range(len(weights)), key=lambda t: (current[t], -t))
        current[pick] -= total
        order.append(pick)
    return order


def _solution(item: dict[str, Any], answer: str) -> str:
    """A short worked solution, e.g. "3 + 5 = 8\\nThe answer is 8." (the item's expression if known)."""
    meta = item.get("metadata")
    expr = meta.get("expression") if isinstance(meta, dict) else None
    if isinstance(expr, str) and expr.strip():
        return f"{expr.strip()} = {answer}\nThe answer is {answer}."
    return f"The answer is {answer}."


_AST_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def expression_value(expr: str) -> Fraction | None:
    """Exact value of a plain arithmetic expression ("-( 6 / 6 ) + 2"), or None if it is not one.

    Raises ZeroDivisionError for "x / 0". Used to check golds: reasoning-gym 0.1.25's basic_arithmetic
    with allow_parentheses=False prints "4 / 1" but answers 2 (it swaps the divisor after building the
    text), and prints "4 / 0".
    """

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            return _AST_OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("not plain arithmetic")

    if len(expr) > 200:
        return None
    try:
        return ev(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        return None


def _answer_disagrees(item: dict[str, Any], answer: str, task: str) -> bool:
    """True when an exact-arithmetic task's gold is not the value of the expression it printed."""
    if task not in EXACT_ARITHMETIC_TASKS:
        return False
    meta = item.get("metadata")
    expr = meta.get("expression") if isinstance(meta, dict) else None
    if not isinstance(expr, str):
        return False
    try:
        value = expression_value(expr.replace("×", "*").replace("÷", "/"))
    except ZeroDivisionError:
        return True  # the same bug also prints "4 / 0"
    if value is None:
        return False
    try:
        return Fraction(answer) != value
    except (ValueError, ZeroDivisionError):
        return False


def _to_example(item: Any, example_id: str, source: str) -> Example | str:
    """An Example, or the reason the item is unusable."""
    if not isinstance(item, dict):
        return "item is not a dict"
    question, answer = item.get("question"), item.get("answer")
    if not isinstance(question, str) or not question.strip():
        return "missing or empty question"
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        return "missing or empty answer"
    answer = answer.strip()
    if _answer_disagrees(item, answer, source):
        return "gold answer disagrees with its expression"
    return Example(example_id, question.strip(), answer, source, _solution(item, answer))


class _Stream:
    """One task's items in index order; skips unusable items (counted in the report)."""

    def __init__(self, spec: DataSpec, i: int, stream: str, size: int):
        task = spec.tasks[i]
        self.label = _task_label(spec.tasks, i)
        self.name = task.name
        self.id_prefix = self.label if stream == "train" else f"{self.label}-{stream}"
        self.dataset = make_task_dataset(task, i, _stream_seed(spec.seed, stream, self.label), size)
        self.next_idx = 0

    def draw(self, report: LoadReport | None) -> Example | None:
        """The next usable example, or None after MAX_MISSES unusable items in a row."""
        for _ in range(MAX_MISSES):
            idx = self.next_idx
            self.next_idx += 1
            try:
                item = self.dataset[idx]
            except Exception as e:  # noqa: BLE001 - a generator bug must not kill the run; it is reported
                reason = f"{self.name}: generator error ({type(e).__name__})"
            else:
                got = _to_example(item, f"{self.id_prefix}-{idx:06d}", self.name)
                if isinstance(got, Example):
                    return got
                reason = f"{self.name}: {got}"
            if report is not None:
                report.skip(reason)
        return None


def _planned_sizes(spec: DataSpec, n: int) -> list[int]:
    """Per-task item counts for a run of n examples (the virtual `size` passed to reasoning-gym)."""
    order = weighted_round_robin([t.weight for t in spec.tasks], n)
    return [max(order.count(t), 1) for t in range(len(spec.tasks))]


def load_task_examples(spec: DataSpec, limit: int, offset: int = 0) -> tuple[list[Example], LoadReport]:
    """Examples [offset, offset + limit) of the run's fixed, weight-mixed sequence."""
    total = offset + limit
    sizes = [max(a, b) for a, b in zip(_planned_sizes(spec, total), _planned_sizes(spec, spec.num_examples))]
    streams = [_Stream(spec, i, "train", sizes[i]) for i in range(len(spec.tasks))]
    report = LoadReport()
    out: list[Example] = []
    for pos, t in enumerate(weighted_round_robin([task.weight for task in spec.tasks], total)):
        ex = streams[t].draw(report if pos >= offset else None)
        if ex is None:
            raise ValueError(
                f"{_describe(t, spec.tasks[t])}: {MAX_MISSES} unusable items in a row; check its config"
            )
        if pos >= offset:
            out.append(ex)
    report.loaded = len(out)
    return out, report


def load_task_heldout(
    spec: DataSpec, n: int, stream: str = "heldout", exclude: frozenset[str] | set[str] = frozenset()
) -> list[Example]:
    """n examples from separate seed streams (named `stream`) whose questions never occur in
    `load_examples(spec)` nor in `exclude`.

    Tasks whose question space is used up (every unseen question found) drop out of the mix and the
    others fill their share; a ValueError says so when no task has unseen questions left.
    """
    train, _ = load_task_examples(spec, spec.num_examples)
    seen = {ex.question for ex in train} | set(exclude)
    streams = [_Stream(spec, i, stream, n) for i in range(len(spec.tasks))]
    weights = [task.weight for task in spec.tasks]
    current = [0.0] * len(streams)
    active = set(range(len(streams)))
    out: list[Example] = []
    while len(out) < n:
        if not active:
            got = {s.label: sum(ex.source == s.name for ex in out) for s in streams}
            raise ValueError(
                f"only {len(out)} of {n} held-out questions exist that are not among the "
                f"{len(seen)} distinct training questions (data.numExamples={spec.num_examples}); "
                f"per task: {got}. Use wider task configs (more digits/terms) or fewer examples."
            )
        total = sum(weights[t] for t in active)
        for t in active:
            current[t] += weights[t]
        pick = max(sorted(active), key=lambda t: (current[t], -t))
        current[pick] -= total
        ex = _draw_unseen(streams[pick], seen)
        if ex is None:
            log.warning(
                "held-out: task %s has no unseen questions left; other tasks fill its share",
                streams[pick].label,
            )
            active.discard(pick)
            continue
        seen.add(ex.question)
        out.append(ex)
    return out


def _draw_unseen(stream: _Stream, seen: set[str]) -> Example | None:
    for _ in range(MAX_MISSES):
        ex = stream.draw(None)
        if ex is None:
            return None
        if ex.question not in seen:
            return ex
    return None
