"""`flowdpo trainer RUN.yaml`: the trainer Job's program.

Restores its state from storage (`OnlineTrainer.restore`), then consumes shards IN ORDER as their results
appear (polling), publishing adapter versions and progress.json after each, and finally trains the last
partial batches, publishes the final adapters and exits 0. Killed at any moment (SIGKILL included) and
restarted, it resumes exactly: every write of a step is a whole object and the trainer-state pointer moves
last (see `flowdpo.train.online`), so each shard is counted and each pair trained exactly once.

Launched by torchrun with several processes (`flowdpo.train.parallel`; the operator does this when
`spec.kubernetes.trainer.gpus` > 1), rank 0 runs the program above and is the only writer (lease, adapters,
pair bookkeeping, progress, metrics); every other rank computes its share of each optimizer step and
writes nothing. A restarted launch resumes the same way: rank 0 restores from storage and sends the
restored weights and optimizer states to the others.
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
from flowdpo.train.parallel import KEEPALIVE_SECONDS

log = logging.getLogger(__name__)


def run_trainer(doc: RunDocument, metrics: Metrics | None = None, *, poll_seconds: float = 1.0) -> dict:
    """Train until every shard is consumed; returns the final progress.json (None on ranks > 0 of a
    data-parallel launch, which return once rank 0 has finished)."""
    from flowdpo.train import parallel as dp

    group = dp.init_from_env(doc.spec.device)
    try:
        if group is not None and not group.leader:
            return _follow(doc, group)
        leader = dp.Leader(group) if group is not None else None
        store, metrics, manifest = open_program(doc, metrics, poll_seconds)
        # One writer per run: a second trainer (or a `flowdpo run` on the same storage) waits here, writing nothing.
        with WriterLease(store, "trainer").acquire(wait=True, poll_seconds=max(poll_seconds, 1.0)) as writer:
            return _train(doc, store, manifest, metrics, writer, poll_seconds, leader)
    finally:
        dp.close(group)


def _follow(doc: RunDocument, group) -> None:
    from flowdpo.loader import load_policy
    from flowdpo.train.parallel import follow

    policy = load_policy(doc.spec)
    trainer = OnlineTrainer(policy.model, policy.tokenizer, doc.spec, store=None)
    steps = follow(group, policy.model, trainer.optimizers, doc.spec.training, policy.tokenizer.pad_token_id)
    log.info("rank %d: done after %d optimizer steps", group.rank, steps)


def _train(doc, store, manifest, metrics, writer: WriterLease, poll_seconds: float, leader=None) -> dict:
    from flowdpo.loader import load_policy

    run, spec = doc.name, doc.spec
    total = manifest["shards"]

    policy = load_policy(spec)
    trainer = OnlineTrainer(policy.model, policy.tokenizer, spec, store, leader=leader)
    if trainer.restore():
        log.info("resumed at shard %d of %d, versions %s", len(trainer.state.consumed), total, trainer.state.versions)
    if leader is not None:
        leader.sync(policy.model, trainer.optimizers)  # every rank starts from rank 0's weights and Adam state

    def publish(phase: str) -> dict:
        return publish_progress(store, doc, trainer, manifest, metrics, phase, worker_in_process=False)

    publish("Training")
    waiting_since: float | None = None
    kept_alive = time.monotonic()
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
            if leader is not None and time.monotonic() - kept_alive > KEEPALIVE_SECONDS:
                leader.keepalive()  # the other ranks wait in a collective, which times out
                kept_alive = time.monotonic()
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
    if leader is not None:
        leader.stop(policy.model, check=True)  # raises if the ranks' adapters differ (the run is not Succeeded)
    progress = publish("Succeeded")
    log.info("trainer finished: %d examples, versions %s", progress["examples"], progress["adapterVersions"])
    return progress
