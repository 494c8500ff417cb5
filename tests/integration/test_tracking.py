"""Experiment tracking (flowdpo/tracking.py) against a REAL MLflow tracking server (`mlflow server` with a SQLite
store, from its own venv: scripts/testenv/mlflow.sh), and the file backend:

- the progress points the trainer publishes (progressive accuracy, pairs, losses, versions) land in one
  MLflow run per FlowDPORun, with step = examples; a restarted trainer (a new tracker) finds the same run by
  its tag and keeps logging into it; the run is FINISHED when progress says Succeeded;
- `publish_progress` logs through `spec.tracking` (the jsonl backend here), and an unreachable tracker never
  stops it.
W&B uses the same interface (WandbTracker) and is not exercised: it needs an account and its package.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from flowdpo.spec import parse_document
from flowdpo.tracking import MlflowTracker, progress_metrics, track
from tests.support.paths import ROOT


def progress(examples: int, correct: int, *, phase: str = "Training", versions=(1, 1), loss=0.69) -> dict:
    """A progress.json as flowdpo.run.progress.build_progress writes it."""
    return {
        "run": "tracked", "phase": phase, "examples": examples, "examplesTotal": 12, "correct": correct,
        "progressiveAccuracy": correct / examples, "baselines": {"zeroShot": {"examples": examples, "correct": 1,
                                                                             "accuracy": 1 / examples}},
        "pairs": {"answer": {"mined": 3 * examples, "trained": 2 * examples}, "stop": {"mined": examples, "trained": 0}},
        "adapterVersions": {"answer": versions[0], "stop": versions[1]}, "trainerSteps": {"answer": 2, "stop": 0},
        "last": {"answer": {"loss": loss, "margin": 0.1}}, "examplesPerHour": 120.0,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if shutil.which("python3") is None:
        pytest.skip("needs python3 to build MLflow's own venv")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "testenv" / "mlflow.sh")], capture_output=True, text=True,
                         timeout=1200, check=False)
    assert out.returncode == 0, f"scripts/testenv/mlflow.sh failed:\n{out.stderr[-3000:]}"
    mlflow = out.stdout.strip().splitlines()[-1]
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    with open(folder / "server.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--default-artifact-root", str(folder / "art")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"mlflow server not healthy in 180 s:\n{(folder / 'server.log').read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def rest(url: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=10) as r:
        return json.loads(r.read())


def test_points_land_in_one_mlflow_run_that_a_restarted_trainer_finds_again(mlflow_server):
    first = MlflowTracker(mlflow_server, "flowdpo-tests", "tracked", {"model": "builtin:smollm2-135m-instruct"})
    first.log(progress(4, 1))
    first.log(progress(8, 4, versions=(2, 1), loss=0.52))
    restarted = MlflowTracker(mlflow_server, "flowdpo-tests", "tracked")  # a new trainer process
    restarted.log(progress(12, 7, phase="Succeeded", versions=(3, 2), loss=0.41))
    assert restarted.run_id == first.run_id

    run = rest(mlflow_server, "runs/get", run_id=first.run_id)["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "tracked"
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"model": "builtin:smollm2-135m-instruct"}
    latest = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert latest["progressive_accuracy"] == pytest.approx(7 / 12)
    assert (latest["adapter_version.answer"], latest["adapter_version.stop"]) == (3, 2)
    assert latest["pairs_mined.answer"] == 36 and latest["pairs_trained.answer"] == 24
    assert latest["dpo_loss.answer"] == pytest.approx(0.41)
    history = rest(mlflow_server, "metrics/get-history", run_id=first.run_id, metric_key="progressive_accuracy")
    points = sorted((m["step"], m["value"]) for m in history["metrics"])
    assert points == [(4, pytest.approx(0.25)), (8, pytest.approx(0.5)), (12, pytest.approx(7 / 12))]
    # Another FlowDPORun gets its own MLflow run in the same experiment.
    other = MlflowTracker(mlflow_server, "flowdpo-tests", "other-run")
    other.log(progress(4, 2))
    assert other.run_id != first.run_id


def doc_with(tracking: dict):
    return parse_document({"apiVersion": "flowdpo.dev/v1alpha1", "kind": "FlowDPORun", "metadata": {"name": "tracked"},
                           "spec": {"tracking": tracking}})


def test_publish_progress_logs_through_the_spec_and_a_dead_tracker_never_stops_it(tmp_path, caplog):
    from flowdpo.metrics import Metrics
    from flowdpo.run.progress import publish_progress
    from flowdpo.storage import open_store
    from flowdpo.train.online import TrainerState

    class Trainer:  # publish_progress reads only the trainer's state
        state = TrainerState()

    store = open_store(f"file://{tmp_path}/store")
    manifest = {"examples": 12, "shards": 3}
    path = tmp_path / "points.jsonl"
    doc = doc_with({"backend": "jsonl", "uri": str(path)})
    publish_progress(store, doc, Trainer(), manifest, Metrics("tracked"), "Training")
    (point,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert point["run"] == "tracked" and point["step"] == 0 and point["phase"] == "Training"
    assert point["metrics"] == progress_metrics(json.loads((tmp_path / "store" / "progress.json").read_text()))
    assert point["metrics"]["pairs_mined.answer"] == 0.0

    dead = doc_with({"backend": "mlflow", "uri": f"http://127.0.0.1:{free_port()}"})
    with caplog.at_level(logging.WARNING, logger="flowdpo.tracking"):
        for _ in range(3):
            publish_progress(store, dead, Trainer(), manifest, Metrics("tracked"), "Training")
    warnings = [r.getMessage() for r in caplog.records if "experiment tracking" in r.getMessage()]
    assert len(warnings) == 1 and "not reachable" in warnings[0], warnings  # once, not per publish
    track(dead, progress(4, 1))  # still quiet, still no exception


@pytest.mark.parametrize(
    ("tracking", "message"),
    [({"backend": "mlflow"}, "the MLflow tracking server's URL"), ({"backend": "mlflow", "uri": "mlflow:5000"}, "URL"),
     ({"backend": "jsonl"}, "the file to append points to"), ({"backend": "neptune"}, "tracking.backend")],
)
def test_bad_tracking_settings_name_the_field(tracking, message):
    from flowdpo.spec import SpecError

    with pytest.raises(SpecError, match=message):
        doc_with(tracking)
