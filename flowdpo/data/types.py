"""The records every loader produces: `Example` (one question with its gold answer) and `LoadReport`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11


@dataclass(frozen=True)
class Example:
    """One training/eval question. `answer` is the gold FINAL answer only: what grading compares against."""

    id: str  # stable and unique within a run, e.g. "chain_sum-000017" or "gsm8k-train-000123"
    question: str
    answer: str
    source: str  # task / dataset name
    solution: str | None = None  # ground-truth worked solution, when the dataset has one

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "source": self.source,
        }
        if self.solution is not None:
            d["solution"] = self.solution
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Example:
        missing = [k for k in ("id", "question", "answer", "source") if not isinstance(d.get(k), str)]
        if missing:
            raise ValueError(f"not an Example record: missing or non-string field(s) {missing}")
        solution = d.get("solution")
        return cls(
            id=d["id"],
            question=d["question"],
            answer=d["answer"],
            source=d["source"],
            solution=solution if isinstance(solution, str) else None,
        )


class Skip(str):
    """A source row that cannot be used: the reason (the str) and where it is (`where`, "train.jsonl:7")."""

    where: str | None

    def __new__(cls, reason: str, where: str | None = None) -> Self:
        self = super().__new__(cls, reason)
        self.where = where
        return self


@dataclass
class LoadReport:
    """What a loader kept and what it skipped, so bad rows are visible instead of silently dropped."""

    loaded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    first: dict[str, str] = field(default_factory=dict)  # reason -> where it first happened ("train.jsonl:7")

    def skip(self, reason: str, n: int = 1, where: str | None = None) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n
        if where is not None:
            self.first.setdefault(reason, where)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"loaded {self.loaded} examples, skipped none"
        return f"loaded {self.loaded} examples, skipped {self.total_skipped} ({self.reasons()})"

    def reasons(self) -> str:
        """'3 x malformed JSON line, first at train.jsonl:7; 1 x ...', the most frequent first."""
        return "; ".join(
            f"{n} x {r}" + (f", first at {self.first[r]}" if r in self.first else "")
            for r, n in Counter(self.skipped).most_common()
        )
