"""`flowdpo worker RUN.yaml`: the rollout container's program.

Loop until every shard has results:
  1. follow the trainer: when `adapters/LATEST.json` names a newer version, download that adapter folder
     and load it into the backend (`GenerationBackend.load_adapter`); the load time is exported;
  2. back-pressure sized by work (`common.TrainerPace`): claim only while fewer finished shards wait for
     the trainer than it consumes in `rollout.pendingSeconds` (at most `rollout.maxPendingShards`);
     `consumed` is the trainer's position read from storage, and shards are claimed lowest first, so the
     shard the trainer needs next is always claimed before any later one;
  3. claim the lowest claimable shard (`claims.Claims`: atomic create, lease renewed by a heartbeat,
     takeover of expired leases), roll it out, write it (pairs, then results, both atomic creates: the
     first completed result wins), release the claim.
     transformers backend: one shard at a time, `ShardRollout.process_shard` (lockstep batches).
     vLLM backend: every flow is an independent request chain (`flow/chains.py`), `rollout.inFlight`
     requests outstanding, refilled continuously from claimed shards (`run/feed.py`): the next shard is
     claimed while the previous one's last flows finish.
The worker needs no Kubernetes API access: only the run's object store (and a vLLM server for
`spec.rollout.backend: vllm`). SIGTERM releases the claim in hand so another worker can take it at once.
"""

from __future__ import annotations

import logging
import signal
import time

from flowdpo.flow.chains import run_chains
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.loader import fetch_adapter, latest_versions, make_backend
from flowdpo.metrics import Metrics
from flowdpo.names import ADAPTERS
from flowdpo.run.claims import Claims, new_worker_id
from flowdpo.run.common import TrainerPace, open_program, trainer_consumed
from flowdpo.run.feed import ALL_DONE, ShardFeed
from flowdpo.run.shard import LiveProgress, ShardRollout, chains_capable
from flowdpo.spec import RunDocument
from flowdpo.storage import ObjectStore, RunLayout
from flowdpo.train import canary
from flowdpo.train.online import read_pairs

log = logging.getLogger(__name__)


def sync_adapters(store: ObjectStore, backend, metrics: Metrics, worker: str | None = None) -> dict[str, int]:
    """Load the adapter versions named by adapters/LATEST.json that are newer than the backend's, and check
    each arrived (`train/canary.py`): the deviation is exported, and with `worker` the check is written to
    the run's storage (`RunLayout.adapter_check`) for progress.json's `adaptersInSync`."""
    run = metrics.run
    latest = latest_versions(store)
    checks = []
    for a in ADAPTERS:
        want = latest[a]
        have = backend.versions().get(a, 0)
        if want > have:
            t0 = time.monotonic()
            files = fetch_adapter(store, a, want)
            if files is None:
                log.warning("adapter %s v%d: folder %s is incomplete; skipping", a, want, RunLayout.adapter(a, want))
            else:
                backend.load_adapter(a, want, files)
                metrics.adapter_load_seconds.labels(run, a).observe(time.monotonic() - t0)
                log.info("loaded adapter %s v%d in %.2fs", a, want, time.monotonic() - t0)
                if canary.CANARY_FILE in files:
                    checks.append(_check_arrival(backend, a, want, files[canary.CANARY_FILE], metrics))
        served = backend.versions().get(a, 0)
        metrics.adapter_version.labels(run, a, "worker").set(served)
        metrics.version_lag.labels(run, a).set(max(0, want - served))
    if checks:
        ok = all(c.arrived for c in checks)
        metrics.adapters_in_sync.labels(run).set(1.0 if ok else 0.0)
        if worker is not None:
            store.put_json(
                RunLayout.adapter_check(worker),
                {"worker": worker, "checkedAt": time.time(), "inSync": ok,
                 "versions": backend.versions(), "checks": [c.record() for c in checks]},
            )  # fmt: skip
    return backend.versions()


def _check_arrival(backend, adapter: str, version: int, data: bytes, metrics: Metrics):
    result = canary.check(backend, adapter, version, data)
    metrics.canary_deviation.labels(metrics.run, adapter).set(result.deviation)
    if result.arrived:
        log.info("adapter %s v%d arrived: canary deviation %.3f", adapter, version, result.deviation)
    else:
        metrics.canary_failures.labels(metrics.run, adapter).inc()
        log.error(
            "adapter %s v%d NOT served as trained: canary log-probs off by %.3f (tolerance %.3f)",
            adapter, version, result.deviation, result.tolerance,
        )  # fmt: skip
    return result


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a pod being deleted): unwinds like Ctrl-C, releasing the claim in hand."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _phase(store: ObjectStore) -> str | None:
    """The run's phase in progress.json; None while it is absent or not a record (a lingering worker waits on)."""
    p = store.get_json_or(RunLayout.progress)
    return p.get("phase") if isinstance(p, dict) else None


def run_worker(
    doc: RunDocument,
    metrics: Metrics | None = None,
    *,
    lease_seconds: float = 60.0,
    poll_seconds: float = 2.0,
    worker_id: str | None = None,
    backend=None,
    prompts: PromptBuilder | None = None,
    linger: bool = False,
    **backend_options,
) -> dict:
    """Work until every shard has results. Returns {"shards": shards this worker completed, ...}.

    `linger`: then stay up (idle, serving metrics) until the trainer has finished the run. A Kubernetes
    Deployment restarts containers that exit, so rollout pods linger until the operator scales them down;
    a worker that starts when every shard already has results loads no model."""
    store, metrics, manifest = open_program(doc, metrics, poll_seconds)
    run, spec = doc.name, doc.spec
    total = manifest["shards"]
    claims = Claims(store, worker_id or new_worker_id(), lease_seconds)
    if backend is None and len(claims.done()) < total:
        backend, prompts = make_backend(spec, **backend_options)
    worker = ShardRollout(backend, prompts, spec, store, run)
    live = LiveProgress(metrics, backend)
    log.info("worker %s: %d shards, lease %.0fs, backend %s", claims.worker, total, lease_seconds, spec.rollout.backend)
    metrics.set_phase("Training")
    if hasattr(signal, "SIGTERM"):
        try:
            signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread (tests)
            pass
    pace = TrainerPace()
    announced = [False]

    def next_claim():
        """The next shard to roll out: a Claim, None (nothing claimable now) or ALL_DONE."""
        done = claims.done()
        if len(done) >= total:
            return ALL_DONE
        # The trainer's position first, then adapters/LATEST.json: the trainer publishes the versions of
        # its checkpoint k before it moves its position to k+1, so a shard claimed at position c is rolled
        # out with at least the versions of checkpoint c-1 (bounded staleness of the weights too).
        consumed = trainer_consumed(store)
        pace.observe(consumed)
        sync_adapters(store, backend, metrics, claims.worker)
        waiting = sum(1 for s in done if s >= consumed)
        metrics.pending_shards.labels(run).set(waiting)
        claim = None
        allowed = pace.allowed(spec.rollout)
        metrics.pending_allowed.labels(run).set(allowed)
        if waiting < allowed:
            claim = claims.claim_next(range(consumed, total), done)
        if claim is None:
            if not announced[0]:
                log.info("nothing to claim (trainer at %d, %d done, %d waiting): waiting", consumed, len(done), waiting)
                announced[0] = True
            return None
        announced[0] = False
        metrics.claims.labels(run, "takeover" if claim.takeover else "new").inc()
        log.info("shard %d: claimed (attempt %d)", claim.shard, claim.attempt)
        return claim

    def finished(claim, won: bool, seconds: float) -> None:
        claims.release(claim, completed=True)
        if claim.lost.is_set():
            metrics.leases_lost.labels(run).inc()
        if won:
            metrics.observe_shard(read_pairs(store, claim.shard))
            metrics.shard_seconds.labels(run, "rollout").observe(seconds)
            completed.append(claim.shard)
            log.info("shard %d: done in %.1fs", claim.shard, seconds)
        else:
            log.info("shard %d: another attempt's result won", claim.shard)

    completed: list[int] = []
    if chains_capable(backend):
        _chain_loop(worker, next_claim, finished, claims, live, poll_seconds)
    else:
        _lockstep_loop(worker, next_claim, finished, claims, live, poll_seconds)
    log.info("worker %s: every shard has results (%d by this worker)", claims.worker, len(completed))
    if linger:
        announced = False
        while _phase(store) != "Succeeded":
            if not announced:
                log.info("waiting for the trainer to finish the run (--linger)")
                announced = True
            time.sleep(poll_seconds)
    metrics.set_phase("Succeeded")
    return {"worker": claims.worker, "shards": completed}


def _lockstep_loop(worker: ShardRollout, next_claim, finished, claims: Claims, live: LiveProgress, poll_seconds: float):
    """One shard at a time (the transformers backend)."""
    while True:
        claim = next_claim()
        if claim == ALL_DONE:
            return
        if claim is None:
            time.sleep(poll_seconds)
            continue
        try:
            with claims.heartbeat(claim):
                t0 = time.monotonic()
                live.begin_shard()
                won = worker.process_shard(claim.shard, live.example, live.step)
                live.end_shard()
        except BaseException:
            log.warning("stopping: releasing shard %d", claim.shard)
            claims.release(claim, completed=False)
            raise
        finished(claim, won, time.monotonic() - t0)


def _chain_loop(worker: ShardRollout, next_claim, finished, claims: Claims, live: LiveProgress, poll_seconds: float):
    """Independent request chains over overlapping shards (the vLLM backend); each claimed shard's lease is
    renewed by its own heartbeat until the shard is written."""
    beats = {}

    def claim_shard():
        claim = next_claim()
        if claim is None or claim == ALL_DONE:
            return claim
        beats[claim.shard] = claims.heartbeat(claim).__enter__()
        return claim.shard, claim

    def shard_done(job, won: bool) -> None:
        beats.pop(job.shard).__exit__(None, None, None)
        finished(job.handle, won, time.monotonic() - job.started)

    feed = ShardFeed(worker, claim_shard, shard_done, live.example, poll_seconds)
    live.begin_shard()
    try:
        run_chains(feed, worker.backend, worker.prompts, worker.spec.flow, worker.spec.baselines,
                   worker.spec.rollout.in_flight, poll_seconds=min(poll_seconds, 0.5), on_step=live.step)  # fmt: skip
    except BaseException:
        for job in list(feed.open.values()):
            log.warning("stopping: releasing shard %d", job.shard)
            beats.pop(job.shard).__exit__(None, None, None)
            claims.release(job.handle, completed=False)
        raise
    finally:
        live.end_shard()
