"""A FlowDPORun's life on a real API server: the CRD schema rejects invalid specs at `kubectl apply`; the
operator fails semantically invalid ones with a condition and creates nothing; suspend stops the pods and
resume continues the run from object storage; deleting the run garbage-collects its children.

(An operator restart mid-run is exercised on the tiny run of test_run.py, which needs a whole run anyway.)
"""

from __future__ import annotations

import json

import pytest

from e2e.support.runs import COMPONENT_LABEL, child_names, children, kubectl_apply, tiny_run
from e2e.support.s3 import create_storage_secret
from e2e.support.waiting import (
    Probe,
    absent,
    at_least,
    equals,
    exists,
    job,
    process_alive,
    run_phase,
    run_status,
    satisfies,
)

pytestmark = pytest.mark.e2e

NO_STORAGE = "s3://flowdpo-test/never-used"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"flow": {"chunkTokens": 0}}, "spec.flow.chunkTokens: Invalid value: 0"),
        ({"data": {"numExamples": -5}}, "spec.data.numExamples: Invalid value: -5"),
        ({"rollout": {"backend": "ray"}}, 'spec.rollout.backend: Unsupported value: "ray"'),
        # kubectl's own check (the OpenAPI schema the API server publishes for the CRD) speaks first here.
        ({"training": {"learningRate": "fast"}},
         'spec.training.learningRate: got "string", expected "number"'),
    ],
    ids=["zero-chunk-tokens", "negative-examples", "unknown-backend", "string-learning-rate"],
)
def test_invalid_spec_is_rejected_by_the_schema_at_apply_time(control_plane, kube_api, namespace, tmp_path,
                                                                override, message):
    out = kubectl_apply(control_plane, namespace, tiny_run("bad", NO_STORAGE, "creds", **override), tmp_path)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert control_plane.kubectl("get", "fdr", "bad", "-n", namespace).returncode != 0, "nothing was stored"


@pytest.mark.parametrize(
    ("storage", "override", "field"),
    [
        ({"uri": "file:///data/runs/{name}"}, {}, "spec.storage.uri"),
        ({"uri": NO_STORAGE}, {}, "spec.storage.secretName"),
        ({"uri": NO_STORAGE, "secretName": "creds"}, {"rollout": {"backend": "vllm"}}, "spec.model.name"),
    ],
    ids=["local-storage", "s3-without-secret", "vllm-with-builtin-model"],
)
def test_semantic_error_fails_the_run_with_a_condition_and_no_children(
    control_plane, kube_api, namespace, operator, wait, tmp_path, storage, override, field
):
    doc = tiny_run("semantic", "unused", None, **override)
    doc["spec"]["storage"] = storage
    out = kubectl_apply(control_plane, namespace, doc, tmp_path)
    assert out.returncode == 0, f"the schema accepts it; only the operator knows it cannot run: {out.stderr}"

    status = wait(run_status(kube_api, namespace, "semantic"),
                  satisfies(lambda s: (s or {}).get("phase") == "Failed", "phase Failed"), timeout=60)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Valid"]["status"] == "False"
    assert field in conditions["Valid"]["message"]
    assert conditions["Failed"]["status"] == "True"
    assert child_names(kube_api, namespace, "semantic") == []


def test_suspend_stops_the_pods_resume_continues_and_delete_collects_the_children(
    control_plane, kube_api, kubelet, moto_s3, namespace, operator, wait, tmp_path
):
    # More examples than the test will ever see trained: the run must still be going when it is suspended.
    secret = create_storage_secret(kube_api, namespace, moto_s3)
    doc = tiny_run("life", moto_s3.uri(namespace), secret, data={"numExamples": 30})
    assert kubectl_apply(control_plane, namespace, doc, tmp_path).returncode == 0
    wait(run_phase(kube_api, namespace, "life"), equals("Training"), timeout=240, unless=equals("Failed"))
    trainer_uid = wait(job(kube_api, namespace, "life-trainer"), exists(), timeout=30).metadata.uid
    trainer_pid = wait(Probe(lambda: _pid(kubelet, namespace, "trainer", "trainer"), "trainer process"),
                       exists(), timeout=60)
    worker_pid = wait(Probe(lambda: _pid(kubelet, namespace, "rollout", "worker"), "worker process"),
                      exists(), timeout=60)

    _set_suspend(control_plane, namespace, "life", True)
    wait(job(kube_api, namespace, "life-trainer"), absent(), timeout=30)
    wait(_rollout_replicas(kube_api, namespace, "life"), equals(0), timeout=30)
    wait(process_alive(trainer_pid), equals(False), timeout=30)
    wait(process_alive(worker_pid), equals(False), timeout=30)
    status = wait(run_status(kube_api, namespace, "life"),
                  satisfies(lambda s: _condition(s, "Suspended") == "True", "condition Suspended True"), timeout=30)
    assert status["phase"] == "Training"
    examples_at_suspend = status.get("examples", 0)

    _set_suspend(control_plane, namespace, "life", False)
    resumed = wait(job(kube_api, namespace, "life-trainer"), exists(), timeout=30)
    assert resumed.metadata.uid != trainer_uid, "resuming recreates the trainer Job"
    wait(_rollout_replicas(kube_api, namespace, "life"), equals(1), timeout=30)
    # The run continues: the recreated trainer and worker train more examples (from object storage).
    wait(Probe(lambda: (run_status(kube_api, namespace, "life")() or {}).get("examples"), "status.examples"),
         at_least(examples_at_suspend + 1), timeout=400)
    assert _condition(run_status(kube_api, namespace, "life")(), "Suspended") == "False"

    running = [c.proc.pid for w in kubelet.workers(namespace) for c in w.containers
               if c.proc is not None and c.proc.poll() is None]
    assert control_plane.kubectl("delete", "fdr", "life", "-n", namespace).returncode == 0
    wait(Probe(lambda: child_names(kube_api, namespace, "life"), "children of life"), absent(), timeout=60)
    for pid in running:
        wait(process_alive(pid), equals(False), timeout=30)


def _pid(kubelet, namespace: str, component: str, container: str) -> int | None:
    """PID of the running `container` of a pod of `component` (prepare, rollout, trainer, ...)."""
    for w in kubelet.workers(namespace):
        if w.pod["metadata"]["labels"].get(COMPONENT_LABEL) == component:
            pid = kubelet.pid(namespace, w.pod_name, container)
            if pid is not None:
                return pid
    return None


def _rollout_replicas(api, namespace: str, run: str) -> Probe:
    def fetch():
        found = children(api, namespace, run)["Deployment"]
        return found[0]["spec"]["replicas"] if found else None

    return Probe(fetch, f"spec.replicas of Deployment {run}-rollout")


def _condition(status: dict | None, type_: str) -> str | None:
    return next((c["status"] for c in (status or {}).get("conditions", []) if c["type"] == type_), None)


def _set_suspend(control_plane, namespace: str, name: str, value: bool) -> None:
    patch = json.dumps({"spec": {"suspend": value}})
    out = control_plane.kubectl("patch", "fdr", name, "-n", namespace, "--type", "merge", "-p", patch)
    assert out.returncode == 0, out.stderr

