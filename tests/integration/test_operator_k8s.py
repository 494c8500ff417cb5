"""The operator's API I/O (`flowdpo_operator.k8s`) against a small HTTP server that answers like the
Kubernetes API (JSON bodies, metav1.Status errors), and the pure object -> observation functions.

What matters here: the exact requests (paths, methods, content types, foreground deletion, the bearer
token), 409 on create counted as success, errors that say what failed, and Secrets decoded."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes
import pytest

from flowdpo_operator import builders, k8s
from flowdpo_operator.world import Create, Delete, JobState, Replace, ServerVersion, SuspendJob
from tests.support.operator_support import NAMESPACE, OWNER, UID, run_doc

TOKEN = "s3cr3t-token"


class FakeApi:
    """Routes (method, path) -> (status, body); records every request (method, path, query, headers, body)."""

    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, dict]] = {}
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path, _, query = self.path.partition("?")
                api.requests.append(
                    {"method": self.command, "path": path, "query": query, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                )
                status, payload = api.routes.get((self.command, path), (404, _status(404, "NotFound", "not found")))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        config = kubernetes.client.Configuration(host=f"http://127.0.0.1:{self.server.server_port}")
        config.api_key = {"BearerToken": TOKEN}
        config.api_key_prefix = {"BearerToken": "Bearer"}
        self.client = kubernetes.client.ApiClient(config)
        self.cluster = k8s.Cluster(self.client)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}


@pytest.fixture(scope="module")
def fake_api():
    fake = FakeApi()
    yield fake
    fake.close()


@pytest.fixture
def api(fake_api):
    fake_api.routes.clear()
    fake_api.requests.clear()
    return fake_api


JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
RUNS = f"/apis/flowdpo.dev/v1alpha1/namespaces/{NAMESPACE}/flowdporuns"


def test_create_posts_the_body_with_the_token_and_counts_409_as_done(api):
    body = builders.job(run_doc(), OWNER, "trainer")
    api.routes[("POST", JOBS)] = (201, body)
    assert api.cluster.apply(NAMESPACE, Create(body)) == "created Job demo-trainer"
    req = api.requests[-1]
    assert req["body"] == body  # sent exactly as built
    assert req["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert req["headers"]["content-type"] == "application/json"
    api.routes[("POST", JOBS)] = (409, _status(409, "AlreadyExists", 'jobs.batch "demo-trainer" already exists'))
    assert api.cluster.apply(NAMESPACE, Create(body)) == "Job demo-trainer exists already"


def test_replace_puts_to_the_object_and_surfaces_conflicts(api):
    body = builders.rollout_deployment(run_doc(), OWNER)
    body["metadata"]["resourceVersion"] = "41"
    path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/demo-rollout"
    api.routes[("PUT", path)] = (409, _status(409, "Conflict", "the object has been modified"))
    with pytest.raises(k8s.ApiError, match="HTTP 409: the object has been modified") as err:
        api.cluster.apply(NAMESPACE, Replace(body))
    assert err.value.conflict
    assert api.requests[-1]["body"]["metadata"]["resourceVersion"] == "41"


def test_delete_is_foreground_and_missing_is_fine(api):
    assert api.cluster.apply(NAMESPACE, Delete("Job", "demo-trainer")) == "deleted Job demo-trainer"
    req = api.requests[-1]
    assert (req["method"], req["path"]) == ("DELETE", f"{JOBS}/demo-trainer")
    assert req["body"]["propagationPolicy"] == "Foreground"


def test_status_is_a_merge_patch_of_the_status_subresource(api):
    api.routes[("PATCH", f"{RUNS}/demo/status")] = (200, {})
    api.cluster.patch_status(NAMESPACE, "demo", {"phase": "Training"})
    req = api.requests[-1]
    assert req["headers"]["content-type"] == "application/merge-patch+json"
    assert req["body"] == {"status": {"phase": "Training"}}


def test_forbidden_names_rbac(api):
    api.routes[("GET", f"{RUNS}/demo")] = (403, _status(403, "Forbidden", "cannot get resource flowdporuns"))
    with pytest.raises(k8s.ApiError, match=r"GET .*/demo: HTTP 403: cannot get resource flowdporuns .*RBAC"):
        api.cluster.get_run(NAMESPACE, "demo")


def test_unreachable_api_is_an_api_error():
    config = kubernetes.client.Configuration(host="http://127.0.0.1:9")  # discard port: refused
    cluster = k8s.Cluster(kubernetes.client.ApiClient(config), timeout=(1.0, 1.0))
    config.retries = 0
    with pytest.raises(k8s.ApiError, match="HTTP 0"):
        cluster.get_run(NAMESPACE, "demo")


def test_secret_data_is_decoded_and_a_missing_secret_is_none(api):
    data = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_ENDPOINT_URL": "http://minio:9000"}
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    api.routes[("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/creds")] = (200, {"data": encoded})
    assert api.cluster.read_secret(NAMESPACE, "creds") == data
    assert api.cluster.read_secret(NAMESPACE, "absent") is None


def test_a_secret_with_binary_values_keeps_its_text_keys(api):
    """A binary value (a DER certificate next to the keys) must not crash the operator."""
    encoded = {
        "AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIA").decode(),
        "ca.der": base64.b64encode(b"\x30\x82\xff\xfe").decode(),
        "broken": "not base64!",
    }
    api.routes[("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/mixed")] = (200, {"data": encoded})
    assert api.cluster.read_secret(NAMESPACE, "mixed") == {"AWS_ACCESS_KEY_ID": "AKIA"}


def test_observe_reads_children_by_name_and_sets_aside_foreign_ones(api):
    doc = run_doc()
    job = builders.job(doc, OWNER, "prepare")
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    stale = builders.job(doc, builders.Owner("demo", NAMESPACE, "uid-of-an-earlier-run"), "trainer")
    cm = builders.config_map(doc, OWNER) | {"metadata": builders.config_map(doc, OWNER)["metadata"] | {"resourceVersion": "7"}}
    api.routes[("GET", f"{JOBS}/demo-prepare")] = (200, job)
    api.routes[("GET", f"{JOBS}/demo-trainer")] = (200, stale)
    api.routes[("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/demo-config")] = (200, cm)
    api.routes[("GET", "/version")] = (200, {"major": "1", "minor": "27+", "gitVersion": "v1.27.3-eks-1"})
    api.requests.clear()
    observed = k8s.Cluster(api.client).observe(NAMESPACE, "demo", UID)
    assert observed.server == ServerVersion(1, 27)
    assert set(observed.jobs) == {"prepare"} and observed.jobs["prepare"].state is JobState.COMPLETE
    assert observed.foreign == ("Job demo-trainer",)
    assert observed.config.resource_version == "7" and observed.config.run_yaml == cm["data"]["run.yaml"]
    assert observed.rollout is None
    assert sorted(r["path"].rsplit("/", 1)[1] for r in api.requests) == sorted(
        ["demo-config", "demo-rollout", "demo-weights", "demo-prepare", "demo-trainer", "demo-compile", "demo-eval",
         "version"]
    )


def test_the_server_version_is_read_once_and_an_unreadable_one_is_an_api_error(api):
    api.routes[("GET", "/version")] = (200, {"major": "1", "minor": "29"})
    cluster = k8s.Cluster(api.client)
    assert cluster.server_version() == cluster.server_version() == ServerVersion(1, 29)
    assert [r["path"] for r in api.requests].count("/version") == 1
    api.routes[("GET", "/version")] = (200, {"gitVersion": "weird"})
    with pytest.raises(k8s.ApiError, match="GET /version.*cannot read a Kubernetes version"):
        k8s.Cluster(api.client).server_version()


def test_suspend_job_is_a_merge_patch_of_spec_suspend(api):
    api.routes[("PATCH", f"{JOBS}/demo-trainer")] = (200, {})
    assert api.cluster.apply(NAMESPACE, SuspendJob("demo-trainer", True)) == "suspended Job demo-trainer"
    req = api.requests[-1]
    assert req["headers"]["content-type"] == "application/merge-patch+json"
    assert req["body"] == {"spec": {"suspend": True}}
    assert api.cluster.apply(NAMESPACE, SuspendJob("demo-trainer", False)) == "resumed Job demo-trainer"
    assert api.requests[-1]["body"] == {"spec": {"suspend": False}}


class TestObservations:
    @pytest.mark.parametrize(
        ("status", "state"),
        [
            ({}, JobState.ACTIVE),
            ({"active": 1, "conditions": [{"type": "Complete", "status": "False"}]}, JobState.ACTIVE),
            ({"conditions": [{"type": "Complete", "status": "True"}]}, JobState.COMPLETE),
            ({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}, JobState.FAILED),
        ],
    )
    def test_job_state_from_conditions(self, status, state):
        assert k8s.observe_job({"metadata": {}, "status": status}).state is state

    def test_suspended_and_failed_pods(self):
        job = k8s.observe_job({"metadata": {}, "spec": {"suspend": True}, "status": {"failed": 2}})
        assert (job.state, job.suspended, job.failed_pods) == (JobState.ACTIVE, True, 2)
        done = k8s.observe_job({"metadata": {}, "status": {"failed": 1, "conditions": [{"type": "Complete", "status": "True"}]}})
        assert (done.state, done.failed_pods) == (JobState.COMPLETE, 1)

    def test_failed_job_keeps_reason_and_message(self):
        job = k8s.observe_job({"metadata": {}, "status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}]}})  # fmt: skip
        assert (job.reason, job.message) == ("BackoffLimitExceeded", "too many")

    def test_a_deleted_job_is_terminating_whatever_its_conditions(self):
        obj = {"metadata": {"deletionTimestamp": "2030-01-01T00:00:00Z"},
               "status": {"conditions": [{"type": "Complete", "status": "True"}]}}  # fmt: skip
        assert k8s.observe_job(obj).state is JobState.TERMINATING

    def test_deployment(self):
        body = builders.rollout_deployment(run_doc({"rollout": {"replicas": 3}}), OWNER)
        body["metadata"]["resourceVersion"] = "9"
        body["status"] = {"readyReplicas": 2}
        d = k8s.observe_deployment(body)
        assert (d.replicas, d.ready_replicas, d.resource_version, d.terminating) == (3, 2, "9", False)
        assert d.spec_hash == body["metadata"]["annotations"][builders.SPEC_HASH_ANNOTATION]

    def test_controlled_by_needs_the_uid_and_the_controller_flag(self):
        ref = {"uid": UID, "controller": True}
        assert k8s.controlled_by({"metadata": {"ownerReferences": [ref]}}, UID)
        assert not k8s.controlled_by({"metadata": {"ownerReferences": [ref | {"controller": False}]}}, UID)
        assert not k8s.controlled_by({"metadata": {"ownerReferences": [ref]}}, "other")
        assert not k8s.controlled_by({"metadata": {}}, UID)
