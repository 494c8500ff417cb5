"""What `flowdpo worker` and `flowdpo trainer` share: waiting for the prepared run, and reading the
trainer's position from storage."""

from __future__ import annotations

import logging
import math
import time
from collections import deque

from flowdpo.run.prepare import ensure_spec
from flowdpo.spec import RunDocument
from flowdpo.storage import ObjectStore, RunLayout

log = logging.getLogger(__name__)


def wait_for_run(store: ObjectStore, doc: RunDocument, poll_seconds: float = 2.0, timeout: float | None = None) -> dict:
    """Check the stored spec is this run's (RunConflictError if not; written if absent) and wait for
    `flowdpo prepare` to have written the examples manifest; returns the manifest."""
    ensure_spec(store, doc)
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    while True:
        manifest = store.get_json_or(RunLayout.manifest)
        if manifest is not None:
            return manifest
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{store.uri}: no {RunLayout.manifest} after {timeout:.0f}s (run `flowdpo prepare`)")
        if not announced:
            log.warning("%s: waiting for `flowdpo prepare` (%s)", store.uri, RunLayout.manifest)
            announced = True
        time.sleep(poll_seconds)


def open_program(doc: RunDocument, metrics, poll_seconds: float):
    """What the worker and trainer programs do first: open the run's store, report phase Pending, and wait
    for the prepared run. Returns (store, metrics, manifest)."""
    from flowdpo.metrics import Metrics
    from flowdpo.storage import open_store

    store = open_store(doc.storage_uri())
    metrics = metrics or Metrics(doc.name)
    metrics.set_phase("Pending")
    return store, metrics, wait_for_run(store, doc, poll_seconds)


def trainer_consumed(store: ObjectStore) -> int:
    """Shards the trainer has consumed (it consumes in order: shards 0..n-1), from its state pointer."""
    pointer = store.get_json_or(RunLayout.trainer_latest)
    return 0 if pointer is None else RunLayout.consumed_of_state(pointer["key"])


class TrainerPace:
    """Back-pressure sized by work: how many finished shards may wait for the trainer.

    The worker `observe`s the trainer's position each time it reads it; the trainer's rate is the shards
    it consumed over its last `window` moves divided by the time since the first of them (so a trainer
    that stalls slows the rate down while it stalls). `allowed` = ceil(rate x `rollout.pendingSeconds`),
    at least 1 and at most `rollout.maxPendingShards` (the cap until a rate is measured).

    Staleness this implies: a finished shard waits at most about `pendingSeconds` before the trainer
    consumes it, plus the time it took to roll out; its examples were scored with the versions published
    before it was claimed, so the trainer trains on pairs at most (waiting shards + shards in progress)
    versions old (about pendingSeconds x the trainer's rate + replicas).
    """

    def __init__(self, window: int = 8, clock=time.monotonic):
        self.clock = clock
        self._moves: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def observe(self, consumed: int) -> None:
        if not self._moves or consumed != self._moves[-1][1]:
            self._moves.append((self.clock(), consumed))

    def shards_per_second(self) -> float | None:
        """None until the trainer has been seen to move."""
        if len(self._moves) < 2:
            return None
        (t0, c0), (_, c1) = self._moves[0], self._moves[-1]
        elapsed = self.clock() - t0
        return (c1 - c0) / elapsed if elapsed > 0 else None

    def allowed(self, rollout) -> int:
        rate = self.shards_per_second()
        if rate is None:
            return rollout.max_pending_shards
        return max(1, min(rollout.max_pending_shards, math.ceil(rate * rollout.pending_seconds)))
