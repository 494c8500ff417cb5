"""`flowdpo run`: the whole Flow-DPO pipeline on one machine.

It runs the same protocol as the cluster: `prepare` writes example shards, the rollout worker writes
results and pairs per shard, the online trainer consumes shards in order and publishes adapter versions,
all through the run's object store. Here worker and trainer share one in-process model (transformers
backend), so a new adapter version is in use the moment the trainer publishes it.

Stop it at any moment and run it again: it continues from what is in storage (no example scored twice,
no pair trained twice, adapter versions only go up).
"""

from __future__ import annotations

import logging
import time

from flowdpo.flow.backend import TransformersBackend
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.metrics import Metrics
from flowdpo.models import load_base_model
from flowdpo.prepare import ensure_spec, prepare
from flowdpo.progress import publish_progress as _publish_progress
from flowdpo.spec import RunDocument
from flowdpo.storage import RunLayout, open_store
from flowdpo.train.adapters import attach_adapters
from flowdpo.train.online import OnlineTrainer, read_pairs
from flowdpo.worker import RolloutWorker

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
    ensure_spec(store, doc)
    manifest = prepare(store, doc)
    spec = doc.spec

    model, tok = load_base_model(spec.model, spec.device)
    model = attach_adapters(model, spec.lora, spec.seed)
    prompts = PromptBuilder(tok, spec.flow)
    trainer = OnlineTrainer(model, tok, spec, store)
    trainer.restore()
    backend = TransformersBackend(model, tok, prompts.eos_ids, max_batch=spec.rollout.batch_examples * 4)
    backend.set_versions(trainer.state.versions)
    worker = RolloutWorker(backend, prompts, spec, store, doc.name)
    metrics.set_phase("Training")

    bar = _progress_bar(manifest, trainer, show_progress)
    done_here = 0
    for shard in range(manifest["shards"]):
        if shard in trainer.state.consumed:
            continue
        if max_shards is not None and done_here >= max_shards:
            break
        t0, tokens0 = time.monotonic(), backend.tokens_generated
        if worker.process_shard(shard):
            results = store.get_jsonl(RunLayout.results(shard))
            metrics.observe_shard(results, read_pairs(store, shard, results), backend.tokens_generated - tokens0)
            metrics.shard_seconds.labels(doc.name, "rollout").observe(time.monotonic() - t0)
        t1 = time.monotonic()
        trainer.consume(shard)
        metrics.shard_seconds.labels(doc.name, "train").observe(time.monotonic() - t1)
        backend.set_versions(trainer.state.versions)
        _publish_progress(store, doc, trainer, manifest, metrics, "Training")
        done_here += 1
        _update_bar(bar, trainer, manifest)
    finished = len(trainer.state.consumed) == manifest["shards"]
    if finished:
        trainer.finish()
        backend.set_versions(trainer.state.versions)
    progress = _publish_progress(store, doc, trainer, manifest, metrics, "Succeeded" if finished else "Training")
    if bar is not None:
        _update_bar(bar, trainer, manifest)
        bar.close()
    return progress


def _progress_bar(manifest: dict, trainer: OnlineTrainer, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    bar = tqdm(total=manifest["examples"], unit="ex", dynamic_ncols=True, desc="flow-dpo")
    _update_bar(bar, trainer, manifest)
    return bar


def _update_bar(bar, trainer: OnlineTrainer, manifest: dict) -> None:
    if bar is None:
        return
    st = trainer.state
    bar.n = st.examples
    acc = st.progressive_accuracy
    bar.set_postfix_str(
        f"acc={'-' if acc is None else f'{acc:.3f}'} "
        f"pairs={st.pairs_mined['answer']}a/{st.pairs_mined['stop']}s "
        f"v={st.versions['answer']}a/{st.versions['stop']}s",
        refresh=True,
    )
