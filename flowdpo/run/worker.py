"""`flowdpo worker RUN.yaml`: the rollout container's program.

Loop until every shard has results:
  1. follow the trainer: when `adapters/LATEST.json` names a newer version, download that adapter folder
     and load it into the backend (`GenerationBackend.load_adapter`); the load time is exported;
  2. back-pressure: claim only shards in the window [consumed, consumed + rollout.maxPendingShards),
     where `consumed` is the trainer's position read from storage — so at most that many finished
     shards wait for the trainer (bounded staleness), and the shard the trainer needs next is always
     claimable;
  3. claim the lowest claimable shard (`claims.Claims`: atomic create, lease renewed by a heartbeat,
     takeover of expired leases), run it with `ShardRollout.process_shard` (pairs, then results, both
     atomic creates: the first completed result wins), release the claim.
The worker needs no Kubernetes API access: only the run's object store (and a vLLM server for
`spec.rollout.backend: vllm`). SIGTERM releases the claim in hand so another worker can take it at once.
"""

from __future__ import annotations

import logging
import signal
import time

from flowdpo.flow.prompts import PromptBuilder
from flowdpo.loader import fetch_adapter, latest_versions, make_backend
from flowdpo.metrics import Metrics
from flowdpo.names import ADAPTERS
from flowdpo.run.claims import Claims, new_worker_id
from flowdpo.run.common import open_program, trainer_consumed
from flowdpo.run.shard import LiveProgress, ShardRollout
from flowdpo.spec import RunDocument
from flowdpo.storage import ObjectStore, RunLayout
from flowdpo.train.online import read_pairs

log = logging.getLogger(__name__)


def sync_adapters(store: ObjectStore, backend, metrics: Metrics) -> dict[str, int]:
    """Load the adapter versions named by adapters/LATEST.json that are newer than the backend's."""
    run = metrics.run
    latest = latest_versions(store)
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
        served = backend.versions().get(a, 0)
        metrics.adapter_version.labels(run, a, "worker").set(served)
        metrics.version_lag.labels(run, a).set(max(0, want - served))
    return backend.versions()


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a pod being deleted): unwinds like Ctrl-C, releasing the claim in hand."""


def _raise_terminated(signum, frame):
    raise _Terminated()


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
    completed: list[int] = []
    waiting_since = None
    while True:
        done = claims.done()
        if len(done) >= total:
            break
        # The trainer's position first, then adapters/LATEST.json: the trainer publishes the versions of
        # its checkpoint k before it moves its position to k+1, so a shard claimed at position c is rolled
        # out with at least the versions of checkpoint c-1 (bounded staleness of the weights too).
        consumed = trainer_consumed(store)
        sync_adapters(store, backend, metrics)
        metrics.pending_shards.labels(run).set(sum(1 for s in done if s >= consumed))
        window = range(consumed, min(total, consumed + spec.rollout.max_pending_shards))
        claim = claims.claim_next(window, done)
        if claim is None:
            if waiting_since is None:
                waiting_since = time.monotonic()
                log.info("nothing to claim (trainer at %d, %d done): waiting", consumed, len(done))
            time.sleep(poll_seconds)
            continue
        waiting_since = None
        metrics.claims.labels(run, "takeover" if claim.takeover else "new").inc()
        log.info("shard %d: claimed (attempt %d)", claim.shard, claim.attempt)
        finished = False
        try:
            with claims.heartbeat(claim):
                t0 = time.monotonic()
                live.begin_shard()
                won = worker.process_shard(claim.shard, live.example, live.step)
                live.end_shard()
                finished = True
        except BaseException:
            log.warning("stopping: releasing shard %d", claim.shard)
            claims.release(claim, completed=False)
            raise
        claims.release(claim, completed=finished)
        if claim.lost.is_set():
            metrics.leases_lost.labels(run).inc()
        if won:
            metrics.observe_shard(read_pairs(store, claim.shard))
            metrics.shard_seconds.labels(run, "rollout").observe(time.monotonic() - t0)
            completed.append(claim.shard)
            log.info("shard %d: done in %.1fs", claim.shard, time.monotonic() - t0)
        else:
            log.info("shard %d: another attempt's result won", claim.shard)
    log.info("worker %s: every shard has results (%d by this worker)", claims.worker, len(completed))
    if linger:
        announced = False
        while (store.get_json_or(RunLayout.progress) or {}).get("phase") != "Succeeded":
            if not announced:
                log.info("waiting for the trainer to finish the run (--linger)")
                announced = True
            time.sleep(poll_seconds)
    metrics.set_phase("Succeeded")
    return {"worker": claims.worker, "shards": completed}
