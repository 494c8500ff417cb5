"""progress.json: the one summary every component and the operator read (written by the trainer:
`flowdpo run` and `flowdpo trainer` both publish it with `publish_progress`)."""

from __future__ import annotations

import datetime as dt
import time

from flowdpo.metrics import Metrics
from flowdpo.names import ADAPTERS
from flowdpo.run.records import progress_problem, read_progress
from flowdpo.storage import ObjectStore, RunLayout
from flowdpo.tracking import track
from flowdpo.train.online import OnlineTrainer, TrainerState

__all__ = ["build_progress", "format_progress", "progress_problem", "publish_progress", "read_progress"]


def build_progress(run: str, phase: str, state: TrainerState, manifest: dict, live: dict | None = None) -> dict:
    """progress.json. `live`: the in-process rollouts' own progress (`flowdpo run`), which also gives the
    rate and ETA while it has measured any (the trainer's clock alone moves once per shard)."""
    total = manifest["examples"]
    rate = state.examples / state.elapsed_seconds if state.elapsed_seconds > 0 else None
    remaining = total - state.examples
    progress = {
        "run": run,
        "phase": phase,
        "updatedAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "examples": state.examples,
        "examplesTotal": total,
        "correct": state.correct,
        "progressiveAccuracy": state.progressive_accuracy,
        "baselines": {
            name: {"examples": n, "correct": c, "accuracy": c / n if n else None}
            for name, (n, c) in sorted(state.baselines.items())
        },
        "pairs": {a: {"mined": state.pairs_mined[a], "trained": state.pairs_trained[a]} for a in ADAPTERS},
        "adapterVersions": dict(state.versions),
        "trainerSteps": dict(state.steps),
        "last": state.last,
        "shards": {"total": manifest["shards"], "consumed": len(state.consumed)},
        "dataSkipped": dict(manifest.get("skipped") or {}),  # rows of the data files left out, by reason
        "elapsedSeconds": round(state.elapsed_seconds, 1),
        "examplesPerHour": round(rate * 3600, 1) if rate else None,
        "etaSeconds": round(remaining / rate, 1) if rate and remaining > 0 else (0.0 if remaining <= 0 else None),
    }
    if live:
        progress["live"] = live
        if live.get("examplesPerHour") and remaining > 0:
            progress["examplesPerHour"] = live["examplesPerHour"]
            progress["etaSeconds"] = live["etaSeconds"]
    return progress


def format_progress(p: dict) -> str:
    """A few human lines (flowdpo status) from a progress record that `progress_problem` accepts (a field it
    lacks is shown as '-')."""
    acc = p.get("progressiveAccuracy")
    shards = p.get("shards") or {}
    lines = [
        f"run {p.get('run', '-')}: {p['phase']}  ({p.get('updatedAt', '-')})",
        (f"  examples            {p.get('examples', '-')}/{p.get('examplesTotal', '-')}"
        f"  shards {shards.get('consumed', '-')}/{shards.get('total', '-')}"),
        f"  progressive acc     {'-' if acc is None else f'{acc:.3f}'}  ({p.get('correct', '-')} correct)",
    ]
    skipped = p.get("dataSkipped") or {}
    if skipped:
        reasons = ", ".join(f"{n} x {r}" for r, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
        lines.append(f"  data rows skipped   {sum(skipped.values())} ({reasons})")
    for name, b in (p.get("baselines") or {}).items():
        a = b.get("accuracy")
        lines.append(f"  baseline {name:<14} {'-' if a is None else f'{a:.3f}'}  ({b.get('correct', '-')}/{b.get('examples', '-')})")
    versions, steps, last_of = p.get("adapterVersions") or {}, p.get("trainerSteps") or {}, p.get("last") or {}
    for a in ADAPTERS:
        last = last_of.get(a) or {}
        loss = (
            f"  loss {last['loss']:.4f} margin {last['margin']:+.3f}"
            if last.get("loss") is not None and last.get("margin") is not None
            else ""
        )
        pairs = (p.get("pairs") or {}).get(a) or {}
        lines.append(
            f"  {a:<6} adapter v{versions.get(a, 0):<4} pairs mined {pairs.get('mined', 0):<5} "
            f"trained {pairs.get('trained', 0):<5} steps {steps.get(a, '-')}{loss}"
        )
    live = p.get("live") or {}
    if live.get("examplesInRunningShard"):
        tps = live.get("tokensPerSecond")
        lines.append(
            f"  rolled out          {live.get('examplesRolledOut', '-')}/{p.get('examplesTotal', '-')} "
            f"({live['examplesInRunningShard']} in the running shard{'' if tps is None else f', {tps:.0f} tokens/s'})"
        )
    eph, eta, elapsed = p.get("examplesPerHour"), p.get("etaSeconds"), p.get("elapsedSeconds")
    lines.append(
        f"  elapsed {'-' if elapsed is None else f'{elapsed:.0f}s'}  rate {'-' if eph is None else f'{eph:.0f} ex/h'}  "
        f"ETA {'-' if eta is None else f'{eta:.0f}s'}"
    )
    return "\n".join(lines)


def publish_progress(
    store: ObjectStore,
    doc,
    trainer: OnlineTrainer,
    manifest,
    metrics: Metrics,
    phase: str,
    *,
    worker_in_process: bool = True,
    live: dict | None = None,
) -> dict:
    """Write progress.json from the trainer's state and bring the trainer-side metrics up to it.
    `worker_in_process`: the rollouts run on the trainer's own model (`flowdpo run`), so the worker
    serves the trainer's versions (no lag); a separate `flowdpo trainer` process leaves those to workers."""
    st = trainer.state
    progress = build_progress(doc.name, phase, st, manifest, live)
    in_sync = adapters_in_sync(store)
    if in_sync is not None:
        progress["adaptersInSync"] = in_sync
    store.put_json(RunLayout.progress, progress)
    track(doc, progress)  # spec.tracking (MLflow, W&B, a file); never raises
    run = doc.name
    metrics.set_phase(phase)
    _set_counter(metrics.examples.labels(run), st.examples)
    _set_counter(metrics.examples_correct.labels(run), st.correct)
    if st.progressive_accuracy is not None:
        metrics.progressive_accuracy.labels(run).set(st.progressive_accuracy)
    for name, b in progress["baselines"].items():
        if b["accuracy"] is not None:
            metrics.baseline_accuracy.labels(run, name).set(b["accuracy"])
    for a in ADAPTERS:
        _set_counter(metrics.pairs_trained.labels(run, a), st.pairs_trained[a])
        _set_counter(metrics.trainer_steps.labels(run, a), st.steps[a])
        metrics.adapter_version.labels(run, a, "trainer").set(st.versions[a])
        if worker_in_process:
            # Also brings the worker-side counter to the stored total after a resume, and exports 0 for an
            # adapter that has no pair yet (instead of no sample at all).
            _set_counter(metrics.pairs_mined.labels(run, a), st.pairs_mined[a])
            metrics.adapter_version.labels(run, a, "worker").set(st.versions[a])
            metrics.version_lag.labels(run, a).set(0)
        if a in st.last:
            metrics.dpo_loss.labels(run, a).set(st.last[a]["loss"])
            metrics.dpo_margin.labels(run, a).set(st.last[a]["margin"])
    return progress


# A worker's adapter check counts for this long after it was written (it is rewritten at every load; a
# worker that died stops counting once its last check is this old).
CHECK_FRESH_SECONDS = 1800.0


def adapters_in_sync(store: ObjectStore, now: float | None = None) -> dict | None:
    """progress.json's `adaptersInSync` from the workers' last adapter-arrival checks
    (`run/worker.sync_adapters`, `train/canary.py`): {"inSync", "workers", "notInSync": [worker ids],
    "maxDeviation"}; None while no worker has checked a load recently."""
    now = time.time() if now is None else now
    checks = []
    for key in store.list(RunLayout.adapter_checks_root):
        c = store.get_json_or(key)
        if isinstance(c, dict) and now - float(c.get("checkedAt", 0)) <= CHECK_FRESH_SECONDS:
            checks.append(c)
    if not checks:
        return None
    deviations = [x["deviation"] for c in checks for x in c.get("checks", [])]
    return {
        "inSync": all(c.get("inSync") for c in checks),
        "workers": len(checks),
        "notInSync": sorted(str(c.get("worker")) for c in checks if not c.get("inSync")),
        "maxDeviation": max(deviations) if deviations else None,
    }


def _set_counter(counter, value: float) -> None:
    """Counters restart at the stored totals after a resume; bring them up to the stored value."""
    delta = value - counter._value.get()
    if delta > 0:
        counter.inc(delta)
