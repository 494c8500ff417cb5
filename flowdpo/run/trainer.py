"""`flowdpo trainer RUN.yaml`: the trainer Job's program.

Restores its state from storage (`OnlineTrainer.restore`), then consumes shards IN ORDER as their results
appear (polling), publishing adapter versions and progress.json after each, and finally trains the last
partial batches, publishes the final adapters and exits 0. Killed at any moment (SIGKILL included) and
restarted, it resumes exactly: every write of a step is a whole object and the trainer-state pointer moves
last (see `flowdpo.train.online`), so each shard is counted and each pair trained exactly once.
"""

from __future__ import annotations

import logging
import time

from flowdpo.metrics import Metrics
from flowdpo.run.common import open_program
from flowdpo.run.progress import publish_progress
from flowdpo.run.writer import WriterLease
from flowdpo.spec import RunDocument
from flowdpo.storage import RunLayout
from flowdpo.train.online import OnlineTrainer

log = logging.getLogger(__name__)


def run_trainer(doc: RunDocument, metrics: Metrics | None = None, *, poll_seconds: float = 1.0) -> dict:
    """Train until every shard is consumed; returns the final progress.json."""

    store, metrics, manifest = open_program(doc, metrics, poll_seconds)
    # One writer per run: a second trainer (or a `flowdpo run` on the same storage) waits here, writing nothing.
    with WriterLease(store, "trainer").acquire(wait=True, poll_seconds=max(poll_seconds, 1.0)) as writer:
        return _train(doc, store, manifest, metrics, writer, poll_seconds)


def _train(doc, store, manifest, metrics, writer: WriterLease, poll_seconds: float) -> dict:
    from flowdpo.loader import load_policy

    run, spec = doc.name, doc.spec
    total = manifest["shards"]

    policy = load_policy(spec)
    trainer = OnlineTrainer(policy.model, policy.tokenizer, spec, store)
    if trainer.restore():
        log.info("resumed at shard %d of %d, versions %s", len(trainer.state.consumed), total, trainer.state.versions)

    def publish(phase: str) -> dict:
        return publish_progress(store, doc, trainer, manifest, metrics, phase, worker_in_process=False)

    publish("Training")
    waiting_since: float | None = None
    while True:
        consumed = set(trainer.state.consumed)
        todo = [s for s in range(total) if s not in consumed]
        if not todo:
            break
        shard = todo[0]
        if not store.exists(RunLayout.results(shard)):
            if waiting_since is None:
                waiting_since = time.monotonic()
                done = {RunLayout.shard_index(k) for k in store.list(RunLayout.results_root)}
                metrics.pending_shards.labels(run).set(len(done - consumed))
                log.info("waiting for the results of shard %d", shard)
            time.sleep(poll_seconds)
            continue
        if waiting_since is not None:
            metrics.shard_seconds.labels(run, "wait").observe(time.monotonic() - waiting_since)
            waiting_since = None
        t0 = time.monotonic()
        writer.check()
        trainer.consume(shard)
        metrics.shard_seconds.labels(run, "train").observe(time.monotonic() - t0)
        metrics.shards_done.labels(run, "train").inc()
        done = {RunLayout.shard_index(k) for k in store.list(RunLayout.results_root)}
        metrics.pending_shards.labels(run).set(len(done - set(trainer.state.consumed)))
        publish("Training")
        log.info("consumed shard %d (%d/%d), versions %s", shard, len(trainer.state.consumed), total, trainer.state.versions)
    writer.check()
    trainer.finish()
    progress = publish("Succeeded")
    log.info("trainer finished: %d examples, versions %s", progress["examples"], progress["adapterVersions"])
    return progress
