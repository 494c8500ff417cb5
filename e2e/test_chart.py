"""The Helm chart on a real API server: helm-python-sdk installs charts/flowdpo, the fake kubelet runs the
operator Deployment's pod under the chart's ServiceAccount (its token is the pod's only credential, so the
operator can do exactly what the chart's RBAC grants), and `kubectl apply -f` of the sample run makes the
operator create the run's children with the specs the contracts promise."""

from __future__ import annotations

from pathlib import Path

import helm_python
import kubernetes
import pytest
import yaml

from e2e.support.cluster import REPO, free_port
from e2e.support.runs import child_names, children, kubectl_apply
from e2e.support.s3 import create_storage_secret
from e2e.support.waiting import Probe, absent, equals, ready_replicas, run_phase
from tests.support.podman import podman

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "flowdpo"
SAMPLE = REPO / "examples" / "quickstart.yaml"
RELEASE = "flowdpo"
RUN_FILE = "/etc/flowdpo/run.yaml"


@pytest.fixture
def install(control_plane, namespace):
    """Install the chart as release `flowdpo` in the test's namespace (`install(values)`); uninstalled after."""
    helm = helm_python.Config(kubeconfig_path=str(control_plane.kubeconfig), namespace=namespace)

    def do(values: dict) -> None:
        # The operator listens on the host here (many pods share it): a free liveness port.
        helm.install(helm_python.Chart.load(str(CHART)), RELEASE, {"livenessPort": free_port(), **values},
                     namespace=namespace, timeout=120)

    yield do
    helm.uninstall(RELEASE, ignore_not_found=True)


def operator_deployment(api, namespace: str) -> dict:
    found = kubernetes.client.AppsV1Api(api).list_namespaced_deployment(
        namespace, label_selector="app.kubernetes.io/component=operator").items
    assert len(found) == 1, f"the chart should install one operator Deployment, found {len(found)}"
    return api.sanitize_for_serialization(found[0])


def require_operator_image(kubelet) -> str:
    """The chart's default operator image, which must have been built (scripts/images.sh build operator) and
    be run by the kubelet from the image: this test is about chart + image + RBAC together."""
    image = f"ghcr.io/flowdpo/flowdpo-operator:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    if image not in kubelet.config.container_images:
        pytest.fail(f"{image} is not built (or FLOWDPO_E2E_IMAGES excludes it): run `bash scripts/images.sh build "
                    "operator`", pytrace=False)
    return image


def can_i(control_plane, kubeconfig: Path, verb: str, resource: str, namespace: str | None = None) -> bool:
    """`kubectl auth can-i` as the identity of `kubeconfig` (a SelfSubjectAccessReview)."""
    args = ["auth", "can-i", verb, resource, *(["-n", namespace] if namespace else [])]
    out = control_plane.kubectl(*args, kubeconfig=kubeconfig)
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def sample_run(uri: str, secret: str) -> dict:
    """The quickstart sample, pointed at object storage: a cluster needs storage every pod can reach."""
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["spec"]["storage"] = {"uri": uri, "secretName": secret}
    return doc


def test_chart_operator_creates_the_children_of_a_sample_run_under_chart_rbac(
    control_plane, kube_api, kubelet, moto_s3, namespace, install, wait, tmp_path
):
    image = require_operator_image(kubelet)
    install({})  # defaults: all namespaces, cluster-wide rules
    operator = operator_deployment(kube_api, namespace)
    pod_spec = operator["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["command"] == ["flowdpo-operator"]
    assert pod_spec["containers"][0]["image"] == image, "the chart's default image is what the build produces"
    assert pod_spec.get("automountServiceAccountToken") is not False, "the operator needs its token"
    wait(ready_replicas(kube_api, namespace, operator["metadata"]["name"]), equals(1), timeout=90)
    # The operator runs from its built image, as the chart's non-root user with a read-only root filesystem,
    # and reaches the API server through the in-cluster configuration (token + ca.crt + KUBERNETES_SERVICE_*).
    (worker,) = [w for w in kubelet.workers(namespace) if w.pod_name.startswith(operator["metadata"]["name"])]
    (container,) = worker.containers
    assert container.launch.argv[:2] == ["podman", "run"] and image in container.launch.argv
    name = container.launch.argv[container.launch.argv.index("--name") + 1]
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    touch = podman("exec", name, "touch", "/home/flowdpo/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr

    secret = create_storage_secret(kube_api, namespace, moto_s3)
    doc = sample_run(moto_s3.uri(namespace), secret)
    name = doc["metadata"]["name"]
    applied = kubectl_apply(control_plane, namespace, doc, tmp_path)
    assert applied.returncode == 0, applied.stderr
    # Training needs the whole chain under the chart's RBAC: read the run, create the ConfigMap and the
    # prepare Job, see it complete, create trainer + rollout, patch the status. The default install reads no
    # Secret cluster-wide, so it follows the run by its Jobs and says so in StorageReady.
    wait(run_phase(kube_api, namespace, name), equals("Training"), timeout=240, unless=equals("Failed"))
    run = kubernetes.client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        "flowdpo.dev", "v1alpha1", namespace, "flowdporuns", name)
    wait(Probe(lambda: child_names(kube_api, namespace, name), "children"),
         equals(sorted([f"ConfigMap/{name}-config", f"Deployment/{name}-rollout", f"Job/{name}-prepare",
                        f"Job/{name}-trainer"])), timeout=30)

    found = children(kube_api, namespace, name)
    objects = [o for objs in found.values() for o in objs]
    for obj in objects:
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "flowdpo.dev/v1alpha1", "kind": "FlowDPORun", "name": name,
            "uid": run["metadata"]["uid"], "controller": True}], obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "flowdpo-operator"
        assert obj["metadata"]["labels"]["flowdpo.dev/run"] == name

    run_yaml = yaml.safe_load(found["ConfigMap"][0]["data"]["run.yaml"])
    assert run_yaml["spec"]["storage"] == {"uri": doc["spec"]["storage"]["uri"], "secretName": secret}
    assert run_yaml["spec"]["data"]["numExamples"] == doc["spec"]["data"]["numExamples"]

    templates = {o["metadata"]["name"]: o["spec"]["template"] for o in objects if o["kind"] != "ConfigMap"}
    expected = {
        f"{name}-prepare": ("prepare", ["flowdpo", "prepare", RUN_FILE], None),
        f"{name}-trainer": ("trainer", ["flowdpo", "trainer", RUN_FILE, "--metrics-port", "9400"], "1"),
        f"{name}-rollout": ("worker", ["flowdpo", "worker", RUN_FILE, "--metrics-port", "9400", "--linger"], "1"),
    }
    for child, (container_name, command, gpus) in expected.items():
        spec = templates[child]["spec"]
        assert spec["automountServiceAccountToken"] is False, f"{child}: run pods get no API access"
        assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"]
        (container,) = spec["containers"]
        assert container["name"] == container_name
        assert container["command"] + container.get("args", []) == command
        assert container["envFrom"] == [{"secretRef": {"name": secret}}]
        limits = (container.get("resources") or {}).get("limits") or {}
        assert limits.get("nvidia.com/gpu") == gpus, f"{child}: GPU limit"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/etc/flowdpo"] == "config"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config"]["configMap"]["name"] == f"{name}-config"
        if container_name in ("worker", "trainer"):
            assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in container["ports"]
        labels = templates[child]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == name and labels["flowdpo.dev/run"] == name

    # The operator is not over-privileged: what its ServiceAccount may do, asked as that ServiceAccount.
    sa = pod_spec["serviceAccountName"]
    kubeconfig = control_plane.service_account_kubeconfig(namespace, sa, tmp_path / "operator.kubeconfig")
    assert can_i(control_plane, kubeconfig, "create", "jobs.batch", namespace)
    assert can_i(control_plane, kubeconfig, "patch", "flowdporuns.flowdpo.dev/status", namespace)
    assert not can_i(control_plane, kubeconfig, "get", "secrets", namespace)  # rbac.clusterWideSecrets: off
    assert not can_i(control_plane, kubeconfig, "list", "secrets", namespace)
    conditions = {c["type"]: c for c in run["status"]["conditions"]}
    assert conditions["StorageReady"]["reason"] == "NotRead" and "RBAC" in conditions["StorageReady"]["message"]
    assert not can_i(control_plane, kubeconfig, "create", "pods", namespace)
    assert not can_i(control_plane, kubeconfig, "delete", "customresourcedefinitions")

    # Printer columns: `kubectl get fdr` shows the phase.
    table = control_plane.kubectl("get", "fdr", "-n", namespace)
    assert "Training" in table.stdout and "PHASE" in table.stdout

    # Stop the (CPU-costly) run: deleting it garbage-collects every child.
    assert control_plane.kubectl("delete", "fdr", name, "-n", namespace).returncode == 0
    wait(Probe(lambda: child_names(kube_api, namespace, name), "children"), absent(), timeout=60)


def test_chart_rbac_with_watch_namespaces_is_confined_to_them(control_plane, kube_api, namespace, install,
                                                               tmp_path):
    core = kubernetes.client.CoreV1Api(kube_api)
    watched = f"{namespace}-runs"[:63]
    core.create_namespace({"metadata": {"name": watched}})
    try:
        install({"watchNamespaces": [watched]})
        operator = operator_deployment(kube_api, namespace)
        assert operator["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["--namespace", watched]
        sa = operator["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = control_plane.service_account_kubeconfig(namespace, sa, tmp_path / "operator.kubeconfig")
        assert can_i(control_plane, kubeconfig, "create", "jobs.batch", watched)
        assert can_i(control_plane, kubeconfig, "get", "secrets", watched)
        assert not can_i(control_plane, kubeconfig, "create", "jobs.batch", namespace)
        assert not can_i(control_plane, kubeconfig, "get", "secrets", namespace)
        assert not can_i(control_plane, kubeconfig, "get", "secrets", "kube-system")
        # kopf's discovery stays cluster-wide, read-only.
        assert can_i(control_plane, kubeconfig, "list", "customresourcedefinitions")
        assert can_i(control_plane, kubeconfig, "watch", "namespaces")
        assert not can_i(control_plane, kubeconfig, "delete", "namespaces")
    finally:
        core.delete_namespace(watched)
