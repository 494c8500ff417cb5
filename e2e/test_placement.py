"""Cluster-facing settings on a real API server (Kubernetes 1.20, e2e/README.md):

- Kueue: the operator reads the server's version (GET /version) and fails a run with `queueName` on a server
  without Job.spec.suspend (Kueue cannot hold a Job there), naming the field and creating nothing. The labels
  and the suspended Jobs of servers with it (1.22+) are checked on the rendered bodies in
  tests/unit/test_operator_placement.py and tests/unit/test_operator_controller.py: Kueue's controller and
  a 1.22+ API server cannot run here.
- Job hygiene and placement: the prepare Job's activeDeadlineSeconds is enforced by the real Job controller
  (DeadlineExceeded -> the run Failed, naming the Job); its pod carries the PriorityClass' priority (the real
  Priority admission plugin resolved priorityClassName) and was placed by the real scheduler under its
  required node affinity; the fields 1.20 would drop (ttlSecondsAfterFinished, podFailurePolicy) are not sent.
- Model cache: a statically provisioned PersistentVolume (hostPath) bound to a claim by the real
  controller-manager; the prefetch Job fills it (`flowdpo prefetch`: the built-in model converted into it),
  condition ModelCached turns True, and the trainer and rollout workers train from it (read-only, offline).
"""

from __future__ import annotations

import kubernetes
import pytest

from e2e.support.runs import COMPONENT_LABEL, child_names, children, kubectl_apply, tiny_run
from e2e.support.s3 import create_storage_secret
from e2e.support.waiting import Probe, at_least, job, run_status, satisfies

pytestmark = pytest.mark.e2e

NO_STORAGE = "s3://flowdpo-test/never-used"


def _conditions(status: dict | None) -> dict[str, dict]:
    return {c["type"]: c for c in (status or {}).get("conditions", [])}


def _failed(status: dict | None) -> bool:
    return (status or {}).get("phase") == "Failed"


def test_a_kueue_run_fails_on_a_server_without_job_suspend(control_plane, kube_api, namespace, operator, wait,
                                                          tmp_path):
    doc = tiny_run("queued", NO_STORAGE, "creds", kubernetes={"queueName": "gpu-queue"})
    assert kubectl_apply(control_plane, namespace, doc, tmp_path).returncode == 0
    status = wait(run_status(kube_api, namespace, "queued"), satisfies(_failed, "phase Failed"), timeout=60)
    message = _conditions(status)["Valid"]["message"]
    assert "spec.kubernetes.queueName" in message and "v1.20" in message and "1.22" in message, message
    assert child_names(kube_api, namespace, "queued") == []


@pytest.fixture
def priority_class(kube_api, namespace):
    scheduling = kubernetes.client.SchedulingV1Api(kube_api)
    name = f"{namespace}-high"
    scheduling.create_priority_class({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                      "metadata": {"name": name}, "value": 424242})
    yield name
    scheduling.delete_priority_class(name)


def test_deadline_priority_and_affinity_are_enforced_by_the_real_controllers(
    control_plane, kube_api, kubelet, namespace, operator, wait, tmp_path, priority_class
):
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["e2e-node"]}]}]}}}
    # An empty storage Secret: prepare cannot reach the storage and is retried until the deadline stops it.
    doc = tiny_run(
        "deadline", NO_STORAGE, "empty-creds",
        kubernetes={
            "prepare": {"activeDeadlineSeconds": 5, "priorityClassName": priority_class, "affinity": affinity},
            "jobs": {"ttlSecondsAfterFinished": 600},
        },
    )
    core = kubernetes.client.CoreV1Api(kube_api)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "empty-creds"}, "stringData": {}})
    assert kubectl_apply(control_plane, namespace, doc, tmp_path).returncode == 0
    prepare = wait(job(kube_api, namespace, "deadline-prepare"), satisfies(bool, "exists"), timeout=60)
    assert prepare.spec.active_deadline_seconds == 5
    assert prepare.spec.ttl_seconds_after_finished is None  # 1.20 has no TTL controller on by default: not sent

    def prepare_pod():
        pods = core.list_namespaced_pod(namespace, label_selector=f"{COMPONENT_LABEL}=prepare").items
        return pods[0] if pods and pods[0].spec.node_name else None

    pod = wait(Probe(prepare_pod, "scheduled prepare pod"), satisfies(bool, "scheduled"), timeout=60)
    assert pod.spec.priority == 424242 and pod.spec.priority_class_name == priority_class
    assert pod.spec.node_name == "e2e-node"
    assert pod.spec.affinity.node_affinity is not None

    status = wait(run_status(kube_api, namespace, "deadline"), satisfies(_failed, "phase Failed"), timeout=90)
    failed = _conditions(status)["Failed"]
    assert failed["reason"] == "PrepareFailed" and "DeadlineExceeded" in failed["message"], failed


@pytest.fixture
def model_volume(kube_api, namespace, tmp_path):
    """A hostPath PersistentVolume pre-bound to claim `models` (as an admin provisions shared storage)."""
    core = kubernetes.client.CoreV1Api(kube_api)
    folder = tmp_path / "pv"
    pv = f"{namespace}-models"
    core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(folder)},
                 "claimRef": {"namespace": namespace, "name": "models"}},
    })
    core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    yield folder
    core.delete_persistent_volume(pv)


def test_the_model_cache_is_filled_once_and_trained_from(
    control_plane, kube_api, kubelet, moto_s3, namespace, operator, wait, tmp_path, model_volume
):
    secret = create_storage_secret(kube_api, namespace, moto_s3)
    doc = tiny_run("cached", moto_s3.uri(namespace), secret,
                   kubernetes={"modelCache": {"claimName": "models", "subPath": "shared"}})
    assert kubectl_apply(control_plane, namespace, doc, tmp_path).returncode == 0
    status = wait(run_status(kube_api, namespace, "cached"),
                  satisfies(lambda s: _conditions(s).get("ModelCached", {}).get("status") == "True", "ModelCached"),
                  timeout=240, unless=satisfies(_failed, "Failed"))
    weights = sorted((model_volume / "shared" / "flowdpo" / "models").glob("*/config.json"))
    assert len(weights) == 1, sorted(model_volume.rglob("*"))
    folder = weights[0].parent
    assert list(folder.glob("*.safetensors")), sorted(folder.iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert _conditions(status)["ModelCached"]["message"].startswith("Job cached-weights completed")

    # The trainer and the workers read the weights from the claim, read-only and offline, and train.
    wait(Probe(lambda: (run_status(kube_api, namespace, "cached")() or {}).get("examples"), "status.examples"),
         at_least(1), timeout=480)
    trainer = children(kube_api, namespace, "cached")["Job"]
    spec = next(j for j in trainer if j["metadata"]["name"] == "cached-trainer")["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "model-cache")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["FLOWDPO_CACHE"] == "/models/flowdpo"
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps, "the readers wrote into the cache"
