"""The vLLM worker's examples: claimed shards fed into `flow/chains.run_chains` one example at a time, and
each shard written (pairs, then results) the moment its last example is done.

A new shard is claimed only when the chains have a free slot and nothing else to run, so the server keeps
`rollout.inFlight` requests running across shard boundaries (the next shard's examples start while the
previous shard's last flows finish) and a worker holds at most a shard or two at once. Claims are asked for
at most every `poll_seconds` while none is to be had (back-pressure, or every shard taken).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flowdpo.flow.chains import ChainSource, ChainWork
from flowdpo.run.prepare import read_shard
from flowdpo.run.shard import ShardRollout, shard_seed

log = logging.getLogger(__name__)

# `next_shard()` returns this when every shard of the run has results: no more work will come.
ALL_DONE = "all-done"


@dataclass
class OpenShard:
    shard: int
    handle: object  # what `next_shard` returned with the shard (the claim)
    examples: list
    mined: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def complete(self) -> bool:
        return len(self.mined) == len(self.examples)


class ShardFeed(ChainSource):
    """`next_shard()` -> (shard, handle), None (nothing to claim now) or `ALL_DONE`;
    `shard_done(open_shard, won)` after the shard was written (won: its results object is ours)."""

    def __init__(
        self,
        rollout: ShardRollout,
        next_shard: Callable[[], tuple[int, object] | None | str],
        shard_done: Callable[[OpenShard, bool], None],
        on_example: Callable | None = None,
        poll_seconds: float = 2.0,
    ):
        self.rollout, self.next_shard, self.shard_done = rollout, next_shard, shard_done
        self.on_example, self.poll_seconds = on_example, poll_seconds
        self.open: dict[int, OpenShard] = {}  # shards claimed and not written yet
        self._queue: deque[ChainWork] = deque()
        self._last_poll = -float("inf")

    def take(self) -> ChainWork | None | list:
        if self._queue:
            return self._queue.popleft()
        if time.monotonic() - self._last_poll < self.poll_seconds:
            return []
        self._last_poll = time.monotonic()
        got = self.next_shard()
        if got == ALL_DONE:
            return None
        if got is None:
            return []
        self._last_poll = -float("inf")  # a shard came: ask again as soon as this one is handed out
        shard, handle = got
        examples = read_shard(self.rollout.store, shard)
        job = OpenShard(shard, handle, examples)
        self.open[shard] = job
        seed = shard_seed(self.rollout.spec.seed, shard)
        for ex in examples:
            self._queue.append(
                self.rollout.chain_work(ex, shard, seed, job.mined, self.on_example, lambda job=job: self._check(job))
            )
        if not examples:
            self._check(job)
            return []
        return self._queue.popleft()

    def _check(self, job: OpenShard) -> None:
        if not job.complete:
            return
        results, pairs = self.rollout.in_order(job.examples, job.mined)
        won = self.rollout.write_shard(job.shard, results, pairs)
        del self.open[job.shard]
        self.shard_done(job, won)
