"""Training and held-out examples for a run: reasoning-gym tasks, GSM8K, MATH, MetaMathQA, jsonl/parquet.

Public API:
    Example, LoadReport, load_examples(spec, limit=None, offset=0), load_heldout_examples(spec, n)

Heavy libraries (reasoning_gym, datasets, pyarrow) are imported only by the loader that needs them,
so `import flowdpo.data` stays cheap for processes that only read prepared shards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowdpo.data.types import Example, LoadReport

if TYPE_CHECKING:
    from flowdpo.spec import DataSpec

__all__ = ["Example", "LoadReport", "load_examples", "load_heldout_examples"]


def load_examples(
    spec: DataSpec, limit: int | None = None, offset: int = 0
) -> tuple[list[Example], LoadReport]:
    """Examples [offset, offset + limit) of the run's data (limit defaults to spec.num_examples).

    Deterministic for a given spec: reasoning-gym tasks are mixed by weight in a fixed order; hub and
    file sources are validated (bad rows counted in the report, never raised) and shuffled with spec.seed.
    """
    if limit is None:
        limit = spec.num_examples
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must be >= 0 (got limit={limit}, offset={offset})")
    if spec.source == "reasoning-gym":
        from flowdpo.data.tasks import load_task_examples

        return load_task_examples(spec, limit, offset)
    from flowdpo.data.sources import load_source_examples

    return load_source_examples(spec, limit=limit, offset=offset)


def load_heldout_examples(
    spec: DataSpec, n: int, stream: str = "heldout", exclude: frozenset[str] | set[str] = frozenset()
) -> list[Example]:
    """n evaluation examples disjoint from the training data.

    reasoning-gym: separate seed streams (one set per `stream` name: "heldout" for evaluation, "signal" for
    the signal check), filtered so that no question text occurs in load_examples(spec) or `exclude`.
    Hub/file sources: the "test" split (a ValueError says why when there is none); `stream` and `exclude`
    apply to procedural tasks only.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    if n == 0:
        return []
    if spec.source == "reasoning-gym":
        from flowdpo.data.tasks import load_task_heldout

        return load_task_heldout(spec, n, stream, exclude)
    from flowdpo.data.sources import load_source_heldout

    return load_source_heldout(spec, n)
