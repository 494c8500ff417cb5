"""Experiment tracking (`spec.tracking`): each progress.json the trainer publishes is also logged to an
experiment tracker, as one point per published state with `step` = examples scored.

    progressive accuracy, accuracy of each baseline, examples, pairs mined / trained per adapter,
    adapter versions, trainer steps, last DPO loss and reward margin per adapter, examples/hour

Backends, one interface (`Tracker.log(progress)`):
- `mlflow`: an MLflow tracking server through its REST API (`/api/2.0/mlflow/...`), so flowdpo needs no
  MLflow package. One MLflow run per FlowDPORun, found again by its tag `flowdpo.run` after a restart, so
  a resumed trainer keeps logging into the same run. Tested against a real `mlflow server`
  (tests/integration/test_tracking.py).
- `wandb`: Weights & Biases through its own package (not a dependency; install `wandb` in the trainer image),
  run id derived from the run's name (resume="allow"). Same metrics; not exercised by the tests here.
- `jsonl`: one JSON line per point in a local file (tests, air-gapped machines).

Tracking never stops a run: a tracker that fails is reported once on the log and then retried at the next
publish (the next point carries the full state, so nothing but intermediate points is lost).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from flowdpo.names import ADAPTERS

log = logging.getLogger(__name__)

RUN_TAG = "flowdpo.run"


def progress_metrics(progress: dict[str, Any]) -> dict[str, float]:
    """The numbers of one progress.json worth plotting, by metric name (None values left out)."""
    out: dict[str, float | None] = {
        "progressive_accuracy": progress.get("progressiveAccuracy"),
        "examples": progress.get("examples"),
        "correct": progress.get("correct"),
        "examples_per_hour": progress.get("examplesPerHour"),
    }
    for name, b in (progress.get("baselines") or {}).items():
        out[f"baseline_accuracy.{name}"] = b.get("accuracy")
    for a in ADAPTERS:
        pairs = (progress.get("pairs") or {}).get(a) or {}
        out[f"pairs_mined.{a}"] = pairs.get("mined")
        out[f"pairs_trained.{a}"] = pairs.get("trained")
        out[f"adapter_version.{a}"] = (progress.get("adapterVersions") or {}).get(a)
        out[f"trainer_steps.{a}"] = (progress.get("trainerSteps") or {}).get(a)
        last = (progress.get("last") or {}).get(a) or {}
        out[f"dpo_loss.{a}"] = last.get("loss")
        out[f"dpo_reward_margin.{a}"] = last.get("margin")
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """Logs progress points of one run."""

    def log(self, progress: dict[str, Any]) -> None:
        raise NotImplementedError


class JsonlTracker(Tracker):
    def __init__(self, path: str, run: str):
        self.path, self.run = Path(path), run

    def log(self, progress: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        point = {"run": self.run, "step": int(progress.get("examples", 0)), "phase": progress.get("phase"),
                 "metrics": progress_metrics(progress)}
        with open(self.path, "a") as f:
            f.write(json.dumps(point, sort_keys=True) + "\n")


class MlflowError(RuntimeError):
    pass


class MlflowTracker(Tracker):
    """MLflow's REST API (2.0): experiments/get-by-name|create, runs/search|create, runs/log-batch."""

    def __init__(self, uri: str, experiment: str, run: str, params: dict[str, Any] | None = None,
                 timeout: float = 10.0):
        self.uri, self.experiment, self.run, self.timeout = uri.rstrip("/"), experiment, run, timeout
        self.params = params or {}
        self.run_id: str | None = None

    def _call(self, method: str, path: str, body: dict | None = None, query: str = "") -> dict:
        url = f"{self.uri}/api/2.0/mlflow/{path}{'?' + query if query else ''}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise MlflowError(f"MLflow {method} {path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise MlflowError(f"MLflow server {self.uri} not reachable: {getattr(e, 'reason', e)}") from None

    def _experiment_id(self) -> str:
        from urllib.parse import quote

        try:
            found = self._call("GET", "experiments/get-by-name", query=f"experiment_name={quote(self.experiment)}")
            return found["experiment"]["experiment_id"]
        except MlflowError as e:
            if "RESOURCE_DOES_NOT_EXIST" not in str(e):
                raise
        return self._call("POST", "experiments/create", {"name": self.experiment})["experiment_id"]

    def _run_id(self) -> str:
        if self.run_id:
            return self.run_id
        experiment = self._experiment_id()
        search = {"experiment_ids": [experiment], "filter": f"tags.\"{RUN_TAG}\" = '{self.run}'", "max_results": 1}
        runs = self._call("POST", "runs/search", search).get("runs") or []
        if runs:
            self.run_id = runs[0]["info"]["run_id"]
            return self.run_id
        created = self._call("POST", "runs/create", {
            "experiment_id": experiment, "run_name": self.run, "start_time": int(time.time() * 1000),
            "tags": [{"key": RUN_TAG, "value": self.run}],
        })
        self.run_id = created["run"]["info"]["run_id"]
        params = [{"key": k, "value": str(v)[:500]} for k, v in sorted(self.params.items())]
        if params:
            self._call("POST", "runs/log-batch", {"run_id": self.run_id, "params": params})
        return self.run_id

    def log(self, progress: dict[str, Any]) -> None:
        run_id = self._run_id()
        now, step = int(time.time() * 1000), int(progress.get("examples", 0))
        metrics = [{"key": k, "value": v, "timestamp": now, "step": step} for k, v in progress_metrics(progress).items()]
        self._call("POST", "runs/log-batch", {"run_id": run_id, "metrics": metrics})
        if progress.get("phase") in ("Succeeded", "Failed"):
            status = "FINISHED" if progress["phase"] == "Succeeded" else "FAILED"
            self._call("POST", "runs/update", {"run_id": run_id, "status": status, "end_time": now})


class WandbTracker(Tracker):
    """Weights & Biases (project = experiment); credentials from WANDB_API_KEY. Not covered by tests."""

    def __init__(self, experiment: str, run: str, params: dict[str, Any] | None = None):
        try:
            import wandb
        except ImportError:
            raise ImportError("tracking.backend 'wandb' needs the wandb package in this image: pip install wandb") from None
        import hashlib

        run_id = hashlib.sha256(run.encode()).hexdigest()[:16]
        self._run = wandb.init(project=experiment, name=run, id=run_id, resume="allow", config=params or {})

    def log(self, progress: dict[str, Any]) -> None:
        self._run.log(progress_metrics(progress), step=int(progress.get("examples", 0)))


_TRACKERS: dict[tuple, Tracker | None] = {}
_FAILED: set[tuple] = set()


def tracker_for(doc) -> Tracker | None:
    """The process's tracker of a run document (None: tracking off). One per process and run."""
    t = doc.spec.tracking
    if t.backend == "none":
        return None
    key = (doc.name, t.backend, t.uri, t.experiment)
    if key not in _TRACKERS:
        params = {"model": doc.spec.model.name, "lora_r": doc.spec.lora.r, "learning_rate": doc.spec.training.learning_rate,
                  "beta": doc.spec.training.beta, "batch_size": doc.spec.training.batch_size,
                  "num_examples": doc.spec.data.num_examples, "data_source": doc.spec.data.source,
                  "backend": doc.spec.rollout.backend}
        if t.backend == "mlflow":
            _TRACKERS[key] = MlflowTracker(t.uri, t.experiment, doc.name, params)
        elif t.backend == "wandb":
            _TRACKERS[key] = WandbTracker(t.experiment, doc.name, params)
        else:
            _TRACKERS[key] = JsonlTracker(t.uri, doc.name)
    return _TRACKERS[key]


def track(doc, progress: dict[str, Any]) -> None:
    """Log one progress point; a failure is logged (once until it recovers), never raised."""
    key = (doc.name, doc.spec.tracking.backend)
    try:
        tracker = tracker_for(doc)
        if tracker is not None:
            tracker.log(progress)
    except Exception as e:  # noqa: BLE001 - tracking must never stop training
        if key not in _FAILED:
            log.warning("experiment tracking (%s) failed, training goes on: %s", doc.spec.tracking.backend, e)
        _FAILED.add(key)
        return
    if key in _FAILED:
        log.warning("experiment tracking (%s) works again", doc.spec.tracking.backend)
        _FAILED.discard(key)
