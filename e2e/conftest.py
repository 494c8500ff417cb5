"""Session fixtures of the e2e suite: one real control plane (built once from Debian packages and cached), one
fake kubelet that runs pods as local processes, one moto S3 endpoint with a bucket, and a fresh namespace per
test. When a test fails, its report carries the tail of every container log of its namespace.

The control plane is never skipped: if it cannot be built (no apt, no root), the e2e tests fail with the
reason, because a silently skipped e2e suite proves nothing.
"""

from __future__ import annotations

import functools
import os
import re
import time
import uuid
from pathlib import Path

import kubernetes
import pytest

from e2e.support.cluster import ControlPlane, ControlPlaneError, ensure_built
from e2e.support.kubelet import FakeKubelet, KubeletConfig
from e2e.support.operator import OperatorProcess
from e2e.support.s3 import MotoS3
from e2e.support.waiting import wait_for
from tests.support.podman import built_images

TIMINGS = pytest.StashKey[dict]()
KUBELET = pytest.StashKey[FakeKubelet]()
CONTROL_PLANE = pytest.StashKey[ControlPlane]()

# What the trainer image bakes in, for processes that run on this host instead: the converted embedded model
# (so no pod converts it again), offline hubs, and one torch thread per process on a shared 2-core machine.
IMAGE_ENV = {
    "FLOWDPO_CACHE": os.environ.get("FLOWDPO_CACHE", str(Path.home() / ".cache" / "flowdpo")),
    "FLOWDPO_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "FLOWDPO_TORCH_THREADS": "1",
}


def container_images() -> frozenset[str]:
    """The project's images whose pods run from the image (podman) rather than as host processes:
    FLOWDPO_E2E_IMAGES (comma-separated, default `operator`) among those scripts/images.sh built. Run pods
    (trainer and rollout images) stay host processes by default: every pod would convert the embedded model
    again in its own container, and the run tests' CPU budget does not allow it on two cores."""
    wanted = {w.strip() for w in os.environ.get("FLOWDPO_E2E_IMAGES", "operator").split(",") if w.strip()}
    return frozenset(ref for name, ref in built_images().items() if name in wanted)


def pytest_configure(config):
    config.stash[TIMINGS] = {}


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory, pytestconfig) -> ControlPlane:
    timings = pytestconfig.stash[TIMINGS]
    try:
        _, timings["control plane build (s)"] = ensure_built(tmp_path_factory.mktemp("build") / "k8s-build.log")
        cp = ControlPlane(work_dir=tmp_path_factory.mktemp("k8s"))
        cp.start()
    except ControlPlaneError as e:
        pytest.fail(str(e), pytrace=False)
    timings["control plane start (s)"] = cp.start_seconds
    pytestconfig.stash[CONTROL_PLANE] = cp
    yield cp
    cp.stop()


@pytest.fixture(scope="session")
def kube_api(control_plane) -> kubernetes.client.ApiClient:
    """Admin client."""
    with control_plane.api_client() as api:
        yield api


@pytest.fixture(scope="session")
def kubelet(control_plane, kube_api, tmp_path_factory, pytestconfig) -> FakeKubelet:
    k = FakeKubelet(kube_api, KubeletConfig(
        root=tmp_path_factory.mktemp("kubelet"), server=control_plane.server, ca_file=control_plane.ca_file,
        image_env=IMAGE_ENV, container_images=container_images(),
    ))
    k.start()
    pytestconfig.stash[KUBELET] = k
    yield k
    k.stop()


@pytest.fixture(scope="session")
def moto_s3() -> MotoS3:
    s3 = MotoS3()
    yield s3
    s3.stop()


@pytest.fixture
def namespace(request, kube_api, kubelet) -> str:
    """A fresh namespace named after the test; deleted afterwards (its pods' processes are killed by the
    kubelet when the namespace controller deletes them)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"e2e-{slug}-{uuid.uuid4().hex[:4]}"
    core = kubernetes.client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    # The ServiceAccount admission plugin rejects pods until the token controller made the default SA's token.
    _poll_until(lambda: _has_default_token(core, name), timeout=30, what=f"default ServiceAccount token in {name}")
    yield name
    core.delete_namespace(name)


def _has_default_token(core: kubernetes.client.CoreV1Api, namespace: str) -> bool:
    try:
        return bool(core.read_namespaced_service_account("default", namespace).secrets)
    except kubernetes.client.rest.ApiException:
        return False


def _poll_until(check, timeout: float, what: str) -> None:
    """Plain boolean wait for fixtures (tests use e2e.support.waiting)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not there after {timeout} s")
        time.sleep(0.2)


@pytest.fixture
def operator(control_plane, namespace, tmp_path) -> OperatorProcess:
    """`flowdpo-operator` for the test's namespace, as a local process with admin credentials."""
    op = OperatorProcess(control_plane.kubeconfig, namespace, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def diagnostics(request, kubelet, namespace, control_plane):
    """Evidence for failure messages: container logs of the test's namespace, the operator's log (if the test
    runs one) and the control plane's logs."""

    def collect() -> str:
        parts = [kubelet.tail_logs(namespace)]
        if "operator" in request.fixturenames:
            parts.append(request.getfixturevalue("operator").tail())
        parts.append(control_plane.tail_logs(lines=5))
        return "\n".join(parts)

    return collect


@pytest.fixture
def wait(diagnostics):
    """`wait(probe, condition, timeout=...)`: e2e.support.waiting.wait_for with this test's diagnostics."""
    return functools.partial(wait_for, diagnostics=diagnostics)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.config.stash[TIMINGS][f"{item.nodeid} (s)"] = report.duration
    if report.failed and "namespace" in item.funcargs and KUBELET in item.config.stash:
        ns = item.funcargs["namespace"]
        report.sections.append((f"container logs of {ns}", item.config.stash[KUBELET].tail_logs(ns, lines=60)))


def pytest_terminal_summary(terminalreporter, config):
    timings = config.stash.get(TIMINGS, {})
    if timings:
        terminalreporter.section("e2e timings")
        for what, seconds in timings.items():
            terminalreporter.write_line(f"{seconds:8.1f}  {what}")
