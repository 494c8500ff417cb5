"""`flowdpo run`: the whole Flow-DPO pipeline on one machine.

It runs the same protocol as the cluster: `prepare` writes example shards, the rollout worker writes
results and pairs per shard, the online trainer consumes shards in order and publishes adapter versions,
all through the run's object store. With `rollout.backend: transformers` worker and trainer share one
in-process model, so a new adapter version is in use the moment the trainer publishes it. With
`rollout.backend: vllm` the rollouts go to a vLLM server (`FLOWDPO_VLLM_URL`) as independent request chains
(`flow/chains.py`, `rollout.inFlight` at once) and each version the trainer publishes is loaded into the
server before the next shard, exactly as a cluster worker does (`run/worker.sync_adapters`).

Stop it at any moment and run it again: it continues from what is in storage (no example scored twice,
no pair trained twice, adapter versions only go up).
"""

from __future__ import annotations

import logging
import time

from flowdpo.loader import load_policy, make_backend, rollout_batch, transformers_backend
from flowdpo.metrics import Metrics
from flowdpo.run.prepare import prepare_run
from flowdpo.run.progress import publish_progress as _publish_progress
from flowdpo.run.shard import LiveProgress, ShardRollout, release_free_memory
from flowdpo.run.writer import WriterLease
from flowdpo.spec import RunDocument
from flowdpo.storage import open_store
from flowdpo.train.online import OnlineTrainer, read_pairs

log = logging.getLogger(__name__)


def run_local(
    doc: RunDocument,
    *,
    metrics: Metrics | None = None,
    show_progress: bool = True,
    max_shards: int | None = None,
) -> dict:
    """Run (or resume) to completion; returns the final progress.json. `max_shards` stops early (tests)."""
    store = open_store(doc.storage_uri())
    metrics = metrics or Metrics(doc.name)
    metrics.set_phase("Preparing")
    manifest = prepare_run(store, doc)
    with WriterLease(store, "run").acquire(wait=False) as writer:  # one writer per run
        return _train(doc, store, manifest, metrics, writer, show_progress, max_shards)


def _train(doc, store, manifest, metrics, writer: WriterLease, show_progress, max_shards) -> dict:
    spec = doc.spec

    policy = load_policy(spec)
    prompts = policy.prompts
    trainer = OnlineTrainer(policy.model, policy.tokenizer, spec, store)
    trainer.restore()
    if spec.rollout.backend == "vllm":
        from flowdpo.run.worker import sync_adapters

        backend, _ = make_backend(spec)

        def follow() -> None:  # the server serves what the trainer published (adapters/LATEST.json)
            sync_adapters(store, backend, metrics, "local")
    else:
        backend = transformers_backend(policy, rollout_batch(spec))

        def follow() -> None:  # the same in-process model: the versions are the trainer's own
            backend.set_versions(trainer.state.versions)

    follow()
    worker = ShardRollout(backend, prompts, spec, store, doc.name)
    metrics.set_phase("Training")

    view = _LiveView(store, doc, trainer, manifest, metrics, backend, show_progress)
    live = LiveProgress(metrics, backend, listeners=(view.refresh,))
    view.live = live
    done_here = 0
    for shard in range(manifest["shards"]):
        if shard in trainer.state.consumed:
            continue
        if max_shards is not None and done_here >= max_shards:
            break
        writer.check()
        t0 = time.monotonic()
        view.shard_started()
        live.begin_shard()
        won = worker.process_shard(shard, live.example, live.step)
        live.end_shard()
        if won:
            metrics.observe_shard(read_pairs(store, shard))
            metrics.shard_seconds.labels(doc.name, "rollout").observe(time.monotonic() - t0)
        release_free_memory()  # what the rollouts freed goes back to the system before training
        t1 = time.monotonic()
        writer.check()
        trainer.consume(shard)
        train_seconds = time.monotonic() - t1
        metrics.shard_seconds.labels(doc.name, "train").observe(train_seconds)
        view.trained(train_seconds)
        follow()
        release_free_memory()
        view.shard_done()
        done_here += 1
    finished = len(trainer.state.consumed) == manifest["shards"]
    if finished:
        writer.check()
        trainer.finish()
        follow()
    progress = view.publish("Succeeded" if finished else "Training")
    view.close()
    if hasattr(backend, "close"):
        backend.close()
    return progress


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _LiveView:
    """What a person watches: the progress bar (one tick per finished example, tokens/s and an ETA from
    this process's own rate) and progress.json (rewritten at most every `PUBLISH_SECONDS` while a shard
    runs, and after every shard), both fed by `LiveProgress` as each example finishes."""

    PUBLISH_SECONDS = 5.0

    def __init__(self, store, doc, trainer: OnlineTrainer, manifest: dict, metrics: Metrics, backend, show: bool):
        self.store, self.doc, self.trainer, self.manifest, self.metrics = store, doc, trainer, manifest, metrics
        self.backend = backend
        self.live: LiveProgress | None = None
        self.in_shard = 0  # examples of the running shard that have finished
        self._published = 0.0
        self.bar = None
        if show:
            from tqdm import tqdm

            # tqdm's own ETA assumes a constant rate; ours (in the postfix) adds the training that follows
            # each shard, so the bar shows elapsed time only.
            self.bar = tqdm(
                total=manifest["examples"], initial=trainer.state.examples, unit="ex", dynamic_ncols=True,
                desc="flow-dpo", smoothing=0.0,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
            )
            self._postfix()
        self.publish("Training")

    def shard_started(self) -> None:
        self._shard_base = self.live.examples if self.live is not None else 0
        self.in_shard = 0

    def shard_done(self) -> None:
        self.in_shard = 0
        self.publish("Training")
        if self.bar is not None:
            self.bar.n = self.trainer.state.examples
            self._postfix()

    def refresh(self) -> None:
        """After every engine step and every finished example."""
        if self.live is not None:
            self.in_shard = self.live.examples - self._shard_base
        if self.bar is not None:
            done = self.trainer.state.examples + self.in_shard
            if done > self.bar.n:
                self.bar.update(done - self.bar.n)
            self._postfix()
        if time.monotonic() - self._published >= self.PUBLISH_SECONDS:
            self.publish("Training")

    _shard_base = 0
    _train_seconds = 0.0  # training after the shards this process rolled out
    _trained_shards = 0

    def trained(self, seconds: float) -> None:
        self._train_seconds += seconds
        self._trained_shards += 1

    def eta_seconds(self) -> float | None:
        """Seconds left: the examples left x (rollout seconds per example + training seconds per example),
        each measured in this process. The training after a shard is counted once one has been measured
        (before that the ETA holds rollouts only); the first shard's pairs are no cheaper to train than later
        ones, so a constant-rate ETA from the first minute would miss it by the share of time training takes."""
        live = self.live
        if live is None or not live.examples:
            return None
        per_example = live.busy_seconds / live.examples
        rolled_in_trained = self._trained_shards and live.examples - self.in_shard
        if rolled_in_trained:
            per_example += self._train_seconds / rolled_in_trained
        left = max(self.manifest["examples"] - self.trainer.state.examples - self.in_shard, 0)
        return left * per_example

    def live_fields(self) -> dict:
        """Rollout progress inside the running shard (progress.json's "live"): examples finished, tokens/s,
        and examples/hour and the ETA from this process's own rollout and training times."""
        live = self.live
        done = self.trainer.state.examples + self.in_shard
        out: dict = {"examplesRolledOut": done, "examplesInRunningShard": self.in_shard}
        if live is not None and live.examples:
            elapsed = time.monotonic() - live.started
            rate = live.examples / elapsed
            out["tokensPerSecond"] = round(live.tokens_per_second or 0.0, 1)
            out["examplesPerHour"] = round(rate * 3600, 1)
            out["etaSeconds"] = round(self.eta_seconds() or 0.0, 1)
        return out

    def publish(self, phase: str) -> dict:
        self._published = time.monotonic()
        return _publish_progress(self.store, self.doc, self.trainer, self.manifest, self.metrics, phase, live=self.live_fields())

    def _postfix(self) -> None:
        st = self.trainer.state
        acc = st.progressive_accuracy
        tps = self.live.tokens_per_second if self.live is not None else None
        self.bar.set_postfix_str(
            f"acc={'-' if acc is None else f'{acc:.3f}'} "
            f"pairs={st.pairs_mined['answer']}a/{st.pairs_mined['stop']}s "
            f"v={st.versions['answer']}a/{st.versions['stop']}s "
            f"{'-' if tps is None else f'{tps:.0f}'} tok/s "
            f"ETA {_clock(self.eta_seconds())}",
            refresh=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.trainer.state.examples
            self._postfix()
            self.bar.close()
