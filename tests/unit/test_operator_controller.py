"""`Controller.sync`, the I/O around the pure reconcile, over an in-memory cluster: it re-reads the run,
applies the decided actions, writes the status only when it changed, reads progress.json with the run's
Secret, and exports the run's phase."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from prometheus_client import generate_latest

from flowdpo_operator import builders, k8s
from flowdpo_operator.controller import Controller, rfc3339
from flowdpo_operator.metrics import OperatorMetrics
from flowdpo_operator.world import (
    Create,
    Delete,
    Observed,
    ObservedStorage,
    Replace,
    ServerVersion,
    SuspendJob,
)
from tests.support.operator_support import NAMESPACE, UID, run_body


class MemoryCluster:
    """The `k8s.Cluster` interface over dicts, counting calls."""

    def __init__(self, run, secrets=None, server=None):
        self.run = run
        self.server = server or ServerVersion()
        self.objects: dict[tuple[str, str], dict] = {}
        self.secrets = secrets or {}
        self.calls: list[str] = []

    def get_run(self, namespace, name):
        self.calls.append("get_run")
        return copy.deepcopy(self.run) if self.run and self.run["metadata"]["name"] == name else None

    def observe(self, namespace, run, uid):
        self.calls.append("observe")
        get = lambda kind, c: self.objects.get((kind, builders.child_name(run, c)))
        cm, dep = get("ConfigMap", builders.CONFIG), get("Deployment", builders.ROLLOUT)
        return Observed(
            config=k8s.observe_config_map(cm) if cm else None,
            rollout=k8s.observe_deployment(dep) if dep else None,
            jobs={s: k8s.observe_job(o) for s in builders.JOB_STEPS if (o := get("Job", s))},
            server=self.server,
        )

    def server_version(self):
        return self.server

    def read_secret(self, namespace, name):
        self.calls.append(f"read_secret {name}")
        return self.secrets.get(name)

    def apply(self, namespace, action):
        if isinstance(action, (Create, Replace)):
            body = copy.deepcopy(action.body)
            body["metadata"].setdefault("resourceVersion", "1")
            self.objects[(body["kind"], body["metadata"]["name"])] = body
        elif isinstance(action, Delete):
            self.objects.pop((action.kind, action.name), None)
        elif isinstance(action, SuspendJob):
            self.objects[("Job", action.name)]["spec"]["suspend"] = action.suspend
        return f"{type(action).__name__}"

    def patch_status(self, namespace, name, status):
        self.calls.append("patch_status")
        self.run["status"] = copy.deepcopy(status)


class ProgressReader:
    def __init__(self, progress=None):
        self.progress = progress
        self.calls: list[tuple[str, dict | None]] = []

    def __call__(self, uri, env):
        self.calls.append((uri, env))
        return ObservedStorage(reachable=True, progress=self.progress)


SECRET = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://minio:9000"}


def controller_for(body, *, secrets=None, progress=None, server=None):
    cluster = MemoryCluster(body, secrets if secrets is not None else {"flowdpo-storage": SECRET}, server)
    reader = ProgressReader(progress)
    clock = lambda: dt.datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=dt.timezone.utc)
    return Controller(cluster, OperatorMetrics(), progress_reader=reader, clock=clock), cluster, reader


def phase_samples(metrics):
    text = generate_latest(metrics.registry).decode()
    return sorted(line for line in text.splitlines() if line.startswith("flowdpo_run_phase{") and line.endswith(" 1.0"))


def test_first_sync_creates_children_and_writes_status_once():
    ctl, cluster, reader = controller_for(run_body())
    decision = ctl.sync(NAMESPACE, "demo")
    assert sorted(k for _, k in cluster.objects) == ["demo-config", "demo-prepare"]
    assert cluster.run["status"]["phase"] == "Preparing" and cluster.calls.count("patch_status") == 1
    assert cluster.run["status"]["conditions"][0]["lastTransitionTime"] == "2030-01-02T03:04:05Z"
    assert reader.calls == [("s3://bucket/runs/demo", SECRET)]  # the Secret's keys, the resolved URI
    assert decision.events and decision.events[0].reason == "Preparing"
    assert phase_samples(ctl.metrics) == [
        f'flowdpo_run_phase{{phase="Preparing",run="demo",run_namespace="{NAMESPACE}"}} 1.0'
    ]
    # The same world again: nothing to create, nothing to write.
    ctl.sync(NAMESPACE, "demo")
    assert cluster.calls.count("patch_status") == 1


def test_a_missing_secret_blocks_without_reading_storage():
    ctl, cluster, reader = controller_for(run_body(), secrets={})
    decision = ctl.sync(NAMESPACE, "demo")
    assert decision.blocked and cluster.objects == {} and reader.calls == []
    assert cluster.run["status"]["phase"] == "Pending"


def test_an_invalid_spec_reads_no_storage_and_fails():
    ctl, cluster, reader = controller_for(run_body({"storage": {"uri": "file:///tmp/x"}}))
    decision = ctl.sync(NAMESPACE, "demo")
    assert decision.invalid and reader.calls == [] and cluster.objects == {}
    assert "read_secret flowdpo-storage" not in cluster.calls
    assert cluster.run["status"]["phase"] == "Failed"


def test_storage_without_a_secret_is_not_read_with_the_operators_identity_unless_allowed():
    """A run's creator must not borrow the operator's access to buckets: without a Secret the operator
    reads nothing (and says why in StorageReady), unless the chart opts in (ambientStorageCredentials)."""
    body = run_body({"storage": {"uri": "gs://bucket/runs/{name}", "secretName": None}})
    ctl, cluster, reader = controller_for(body)
    ctl.sync(NAMESPACE, "demo")
    assert reader.calls == []
    [cond] = [c for c in cluster.run["status"]["conditions"] if c["type"] == "StorageReady"]
    assert (cond["status"], cond["reason"]) == ("False", "NotRead")
    assert "ambientStorageCredentials" in cond["message"]
    ctl, _, reader = controller_for(run_body({"storage": {"uri": "gs://bucket/runs/{name}", "secretName": None}}))
    ctl.ambient_credentials = True
    ctl.sync(NAMESPACE, "demo")
    assert reader.calls == [("gs://bucket/runs/demo", None)]


def test_a_settled_run_costs_one_get():
    body = run_body()
    body["status"] = {"phase": "Succeeded", "observedGeneration": 1}
    ctl, cluster, reader = controller_for(body)
    assert ctl.sync(NAMESPACE, "demo") is None
    assert cluster.calls == ["get_run"] and reader.calls == []


def test_a_deleted_run_is_nothing_to_do():
    ctl, cluster, _ = controller_for(None)
    assert ctl.sync(NAMESPACE, "demo") is None and cluster.calls == ["get_run"]


def test_forgetting_a_run_drops_its_phase_series():
    ctl, _, _ = controller_for(run_body())
    ctl.sync(NAMESPACE, "demo")
    ctl.metrics.forget(NAMESPACE, "demo")
    assert "flowdpo_run_phase{" not in generate_latest(ctl.metrics.registry).decode()


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (dt.datetime(2030, 1, 2, 3, 4, 5, 999999, tzinfo=dt.timezone.utc), "2030-01-02T03:04:05Z"),
        (dt.datetime(2030, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2030-01-02T03:04:05Z"),
    ],
)
def test_condition_times_are_rfc3339_utc_seconds(when, text):
    assert rfc3339(when) == text


def test_owner_uid_comes_from_the_run():
    ctl, cluster, _ = controller_for(run_body())
    ctl.sync(NAMESPACE, "demo")
    cm = cluster.objects[("ConfigMap", "demo-config")]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID


def test_an_unexpected_error_ends_as_a_condition_on_the_run_and_clears_after_recovery():
    """Not an API error (a bug, an input nobody foresaw): the run says so in condition OperatorError instead
    of the operator retrying silently; the next good reconcile sets it False."""
    from flowdpo_operator.controller import OperatorBug

    def broken(uri, env):
        raise ZeroDivisionError("the reader broke")

    ctl, cluster, _ = controller_for(run_body())
    good_reader = ctl.progress_reader
    ctl.progress_reader = broken
    with pytest.raises(OperatorBug, match="ZeroDivisionError: the reader broke"):
        ctl.sync(NAMESPACE, "demo")
    [cond] = [c for c in cluster.run["status"]["conditions"] if c["type"] == "OperatorError"]
    assert (cond["status"], cond["reason"]) == ("True", "InternalError") and "the reader broke" in cond["message"]
    ctl.progress_reader = good_reader
    ctl.sync(NAMESPACE, "demo")
    [cond] = [c for c in cluster.run["status"]["conditions"] if c["type"] == "OperatorError"]
    assert (cond["status"], cond["reason"]) == ("False", "Recovered")


@pytest.mark.parametrize(("env", "server"), [
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.96.0.1:443"),
    ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, "https://[fd00::1]:6443"),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),
    ({}, None),
])
def test_in_cluster_login_uses_the_address_the_kubelet_gives_every_pod(env, server):
    # kopf's own default is https://kubernetes.default.svc, which needs cluster DNS (e2e/test_chart.py runs the
    # operator image where there is none).
    from flowdpo_operator.handlers import in_cluster_server

    assert in_cluster_server(env) == server
def _set_suspend(cluster, value):
    cluster.run["spec"]["suspend"] = value
    cluster.run["metadata"]["generation"] += 1


@pytest.mark.parametrize("minor", [20, 21, 22, 30])
def test_suspend_uses_job_spec_suspend_where_the_server_has_it_and_deletes_the_job_elsewhere(minor):
    """Kubernetes 1.22+ (Job.spec.suspend on by default): suspend patches the Job, which stays, and resume
    unpatches it. Older servers (the e2e control plane is 1.20): the Job is deleted and recreated on resume."""
    server = ServerVersion(1, minor)
    ctl, cluster, _ = controller_for(run_body(), server=server)
    ctl.sync(NAMESPACE, "demo")
    created = cluster.objects[("Job", "demo-prepare")]
    assert "suspend" not in created["spec"]  # not Kueue-managed: it starts at once
    _set_suspend(cluster, True)
    ctl.sync(NAMESPACE, "demo")
    suspended = cluster.run["status"]["conditions"]
    condition = next(c for c in suspended if c["type"] == "Suspended")
    if server.has_job_suspend:
        assert cluster.objects[("Job", "demo-prepare")]["spec"]["suspend"] is True
        assert "suspended (Job.spec.suspend)" in condition["message"]
    else:
        assert ("Job", "demo-prepare") not in cluster.objects
        assert "Job deleted" in condition["message"]
    ctl.sync(NAMESPACE, "demo")  # steady: nothing more to do while suspended
    _set_suspend(cluster, False)
    ctl.sync(NAMESPACE, "demo")
    job = cluster.objects[("Job", "demo-prepare")]
    assert job["spec"].get("suspend") in (None, False)
    assert cluster.run["status"]["phase"] == "Preparing"


def test_a_kueue_run_starts_its_jobs_suspended_and_is_deleted_not_patched_on_suspend():
    """Kueue owns spec.suspend of the Jobs it manages (it starts an admitted Job again), so a suspended run
    deletes its Job (the Workload and its quota go with it) and a new one queues on resume."""
    body = run_body({"kubernetes": {"queueName": "team-a-gpus"}})
    ctl, cluster, _ = controller_for(body, server=ServerVersion(1, 29))
    ctl.sync(NAMESPACE, "demo")
    job = cluster.objects[("Job", "demo-prepare")]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    ctl.sync(NAMESPACE, "demo")  # Kueue has not admitted it yet: the operator leaves spec.suspend alone
    assert cluster.objects[("Job", "demo-prepare")]["spec"]["suspend"] is True
    prepared = next(c for c in cluster.run["status"]["conditions"] if c["type"] == "Prepared")
    assert "waits for Kueue to admit it" in prepared["message"] and "team-a-gpus" in prepared["message"]
    _set_suspend(cluster, True)
    ctl.sync(NAMESPACE, "demo")
    assert ("Job", "demo-prepare") not in cluster.objects


def test_a_kueue_run_on_a_server_without_job_suspend_fails_naming_the_field():
    ctl, cluster, _ = controller_for(run_body({"kubernetes": {"queueName": "q"}}), server=ServerVersion(1, 20))
    decision = ctl.sync(NAMESPACE, "demo")
    assert decision.invalid and cluster.objects == {}
    (error,) = decision.invalid
    assert error.startswith("spec.kubernetes.queueName:") and "v1.20" in error and "1.22" in error


def test_server_version_parsing():
    assert ServerVersion.parse({"major": "1", "minor": "27+", "gitVersion": "v1.27.3-eks"}) == ServerVersion(1, 27)
    assert ServerVersion.parse({"major": "1", "minor": "20"}).has_job_ttl is False
    assert ServerVersion(1, 21).has_job_ttl and not ServerVersion(1, 21).has_job_suspend
    assert ServerVersion(1, 26).has_pod_failure_policy and not ServerVersion(1, 25).has_pod_failure_policy
    with pytest.raises(ValueError, match="cannot read a Kubernetes version"):
        ServerVersion.parse({"major": "", "minor": "x"})


def test_failed_pods_of_each_step_job_are_exported_and_dropped_with_the_job():
    """flowdpo_job_failed_pods (the PrometheusRule's FlowDPOJobPodsFailing reads it) mirrors each Job's
    status.failed; a Job deleted (a retried step) or a run forgotten drops its series."""
    ctl, cluster, _ = controller_for(run_body())
    ctl.sync(NAMESPACE, "demo")
    cluster.objects[("Job", "demo-prepare")]["status"] = {"failed": 2, "active": 1}
    ctl.sync(NAMESPACE, "demo")
    text = generate_latest(ctl.metrics.registry).decode()
    assert f'flowdpo_job_failed_pods{{run="demo",run_namespace="{NAMESPACE}",step="prepare"}} 2.0' in text
    del cluster.objects[("Job", "demo-prepare")]
    cluster.run["metadata"]["generation"] += 1  # (any later sync observes the Job gone)
    ctl.sync(NAMESPACE, "demo")
    text = generate_latest(ctl.metrics.registry).decode()
    assert 'step="prepare"} 2.0' not in text
    ctl.metrics.forget(NAMESPACE, "demo")
    assert "flowdpo_job_failed_pods{" not in generate_latest(ctl.metrics.registry).decode()


def test_each_jobs_own_queue_label_decides_how_it_is_suspended():
    """A Job suspended through spec.suspend before queueName was set has no queue label: Kueue will not start
    it, so resuming the run unsuspends it; Jobs created after carry the label and start suspended."""
    ctl, cluster, _ = controller_for(run_body(), server=ServerVersion(1, 28))
    ctl.sync(NAMESPACE, "demo")
    _set_suspend(cluster, True)
    ctl.sync(NAMESPACE, "demo")
    assert cluster.objects[("Job", "demo-prepare")]["spec"]["suspend"] is True
    cluster.run["spec"]["kubernetes"] = {"queueName": "gpu-queue"}
    _set_suspend(cluster, False)
    ctl.sync(NAMESPACE, "demo")
    job = cluster.objects[("Job", "demo-prepare")]
    assert job["spec"]["suspend"] is False and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
