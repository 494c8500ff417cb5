"""The one module that talks to the Kubernetes API (besides kopf's own watching).

It sends and receives plain JSON dicts through the `kubernetes` client's ApiClient (authentication, TLS,
token refresh) without its generated models: the builders' dicts go out exactly as built, and objects come
back exactly as the API server sent them, whatever the server's version.

Every call is one of the operator's RBAC needs (operator/README.md lists them): get/create/update/delete
of the run's children by name (and patch of Jobs: spec.suspend), get of the storage Secret, get/patch of
FlowDPORuns and their status, and GET /version (allowed to every client) once per process.
Creating an object that exists (409) is success: a restarted operator, or a timer racing an event handler,
creates nothing twice.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import kubernetes

from flowdpo.spec import API_GROUP, KUEUE_QUEUE_LABEL

from . import builders
from .world import (
    Action,
    Create,
    Delete,
    JobState,
    Observed,
    ObservedConfigMap,
    ObservedDeployment,
    ObservedJob,
    Replace,
    ServerVersion,
    SuspendJob,
)

log = logging.getLogger(__name__)

RUNS_PATH = f"/apis/{API_GROUP}/v1alpha1/namespaces/{{namespace}}/flowdporuns"
COLLECTIONS = {
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Secret": "/api/v1/namespaces/{namespace}/secrets",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "FlowDPORun": RUNS_PATH,
}


class ApiError(RuntimeError):
    """A Kubernetes API request failed; `status` is the HTTP status (0: no response)."""

    def __init__(self, status: int, method: str, path: str, message: str):
        self.status = status
        hint = ""
        if status == 403:
            hint = " (the operator's RBAC must allow this: see the table in operator/README.md)"
        super().__init__(f"{method} {path}: HTTP {status}: {message}{hint}")

    @property
    def conflict(self) -> bool:
        return self.status == 409


def api_client_from_environment() -> kubernetes.client.ApiClient:
    """An ApiClient from $KUBECONFIG when it is set, else the in-cluster ServiceAccount (token refreshed)."""
    if os.environ.get("KUBECONFIG"):
        return kubernetes.config.new_client_from_config()
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException as e:
        raise RuntimeError(
            f"not running in a cluster ({e}) and KUBECONFIG is not set: set KUBECONFIG=/path/to/kubeconfig "
            "to run the operator outside a cluster"
        ) from None
    return kubernetes.client.ApiClient(config)


class Cluster:
    """Namespaced reads and writes of FlowDPORuns and their children."""

    def __init__(self, api: kubernetes.client.ApiClient, *, timeout: tuple[float, float] = (5.0, 30.0)):
        self._api = api
        self._timeout = timeout
        self._server: ServerVersion | None = None

    # -- transport ------------------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method_, url, headers, payload, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(method_, url, header_params=headers, body=payload, _request_timeout=self._timeout)
            data = response.read()
        except kubernetes.client.ApiException as e:  # raised by the client for retry-after responses
            raise ApiError(e.status or 0, method, path, str(e.reason)) from None
        except Exception as e:  # noqa: BLE001 - urllib3 connection / timeout errors
            raise ApiError(0, method, path, f"{type(e).__name__}: {e}") from None
        if response.status == 404 and missing_ok:
            return None
        if response.status >= 400:
            raise ApiError(response.status, method, path, _status_message(data))
        return json.loads(data) if data else None

    def _get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._request("GET", f"{COLLECTIONS[kind].format(namespace=namespace)}/{name}", missing_ok=True)

    def server_version(self) -> ServerVersion:
        """The API server's version (GET /version), read once: an upgrade restarts nothing here, but the
        operator's pod is rescheduled during a control-plane upgrade often enough, and the fields gated on
        it only add to what older servers do."""
        if self._server is None:
            body = self._request("GET", "/version") or {}
            try:
                self._server = ServerVersion.parse(body)
            except ValueError as e:
                raise ApiError(0, "GET", "/version", str(e)) from None
        return self._server

    # -- FlowDPORuns ----------------------------------------------------------------------------------------
    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The run as stored now (handlers' bodies can be a few events old); None if it is gone."""
        return self._get("FlowDPORun", namespace, name)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (lists such as conditions are replaced whole)."""
        path = f"{RUNS_PATH.format(namespace=namespace)}/{name}/status"
        self._request(
            "PATCH", path, body={"status": dict(status)}, content_type="application/merge-patch+json", missing_ok=True
        )

    # -- children -------------------------------------------------------------------------------------------
    def observe(self, namespace: str, run: str, uid: str) -> Observed:
        """The run's children by name; objects of those names controlled by another owner are `foreign`."""
        foreign: list[str] = []

        def mine(kind: str, component: str) -> dict[str, Any] | None:
            obj = self._get(kind, namespace, builders.child_name(run, component))
            if obj is not None and not controlled_by(obj, uid):
                foreign.append(f"{kind} {obj['metadata']['name']}")
                return None
            return obj

        cm = mine("ConfigMap", builders.CONFIG)
        deployment = mine("Deployment", builders.ROLLOUT)
        jobs = {step: mine("Job", step) for step in builders.JOB_STEPS}
        return Observed(
            config=observe_config_map(cm) if cm else None,
            rollout=observe_deployment(deployment) if deployment else None,
            jobs={step: observe_job(obj) for step, obj in jobs.items() if obj is not None},
            foreign=tuple(foreign),
            server=self.server_version(),
        )

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data as text (None if it does not exist). Values that are not UTF-8 text (a binary
        certificate next to the keys) are left out: credentials are environment variables, always text."""
        secret = self._get("Secret", namespace, name)
        if secret is None:
            return None
        out = {}
        for key, value in (secret.get("data") or {}).items():
            try:
                out[key] = base64.b64decode(value).decode("utf-8")
            except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
                log.info("Secret %s/%s: key %s is not UTF-8 text; not used", namespace, name, key)
        return out

    def apply(self, namespace: str, action: Action) -> str:
        """Carry out one action; returns a short description for the log."""
        if isinstance(action, Create):
            kind, name = action.body["kind"], action.body["metadata"]["name"]
            try:
                self._request("POST", COLLECTIONS[kind].format(namespace=namespace), body=action.body)
            except ApiError as e:
                if not e.conflict:
                    raise
                return f"{kind} {name} exists already"
            return f"created {kind} {name}"
        if isinstance(action, Replace):
            kind, name = action.body["kind"], action.body["metadata"]["name"]
            path = f"{COLLECTIONS[kind].format(namespace=namespace)}/{name}"
            self._request("PUT", path, body=action.body)
            return f"replaced {kind} {name}"
        if isinstance(action, SuspendJob):
            path = f"{COLLECTIONS['Job'].format(namespace=namespace)}/{action.name}"
            patch = {"spec": {"suspend": action.suspend}}
            self._request("PATCH", path, body=patch, content_type="application/merge-patch+json")
            return f"{'suspended' if action.suspend else 'resumed'} Job {action.name}"
        if isinstance(action, Delete):
            # Foreground: the object stays (deletionTimestamp set) until its pods are gone, so a resumed
            # run never runs a new trainer pod next to the old one that is still shutting down.
            path = f"{COLLECTIONS[action.kind].format(namespace=namespace)}/{action.name}"
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
            self._request("DELETE", path, body=body, missing_ok=True)
            return f"deleted {action.kind} {action.name}"
        raise TypeError(f"unknown action {action!r}")


# -- API objects -> observations (pure) ---------------------------------------------------------------------
def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or ()
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _hash(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("annotations") or {}).get(builders.SPEC_HASH_ANNOTATION)


def observe_job(obj: Mapping[str, Any]) -> ObservedJob:
    failed = int((obj.get("status") or {}).get("failed") or 0)
    if obj.get("metadata", {}).get("deletionTimestamp"):
        return ObservedJob(JobState.TERMINATING, _hash(obj), failed_pods=failed)
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            return ObservedJob(JobState.COMPLETE, _hash(obj), failed_pods=failed)
        if c.get("type") == "Failed":
            return ObservedJob(
                JobState.FAILED, _hash(obj), c.get("reason", ""), c.get("message", ""), failed_pods=failed
            )
    suspended = bool((obj.get("spec") or {}).get("suspend"))
    queued = KUEUE_QUEUE_LABEL in ((obj.get("metadata") or {}).get("labels") or {})
    return ObservedJob(JobState.ACTIVE, _hash(obj), suspended=suspended, failed_pods=failed, queued=queued)


def observe_deployment(obj: Mapping[str, Any]) -> ObservedDeployment:
    status = obj.get("status") or {}
    return ObservedDeployment(
        replicas=int((obj.get("spec") or {}).get("replicas", 1)),
        ready_replicas=int(status.get("readyReplicas") or 0),
        spec_hash=_hash(obj),
        resource_version=str(obj["metadata"].get("resourceVersion", "")),
        terminating=bool(obj["metadata"].get("deletionTimestamp")),
    )


def observe_config_map(obj: Mapping[str, Any]) -> ObservedConfigMap:
    return ObservedConfigMap(
        run_yaml=(obj.get("data") or {}).get(builders.RUN_FILE_KEY),
        spec_hash=_hash(obj),
        resource_version=str(obj["metadata"].get("resourceVersion", "")),
    )


def _status_message(data: bytes | None) -> str:
    """The `message` of a metav1.Status error body, or the raw body."""
    if not data:
        return "(no body)"
    try:
        return str(json.loads(data).get("message") or data[:300])
    except (ValueError, AttributeError):
        return data[:300].decode(errors="replace")
