"""The kopf handlers: thin triggers for `Controller.sync`, registered on an explicit registry.

    create / resume / update of spec  -> sync now (react at once to new runs, edits, suspend/resume)
    timer every --resync-seconds      -> sync (observe Jobs and progress.json; the level-based loop)
    DELETED watch event               -> drop the run's metric series (children go by garbage collection)

Error mapping in the event handlers: an invalid spec has already been written to the status (phase
Failed, condition Valid=False naming the fields) when `kopf.PermanentError` is raised, so kopf stops
retrying until the spec changes; waiting for something outside the operator (the storage Secret, a
same-named object of an earlier run) and API errors become `kopf.TemporaryError(delay=...)`. The timer
never raises for these: it runs again after its interval anyway.

No finalizer: children carry controller ownerReferences and are garbage-collected with the run, so a
deleted run never waits for the operator (which may be down).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from flowdpo.spec import API_GROUP
from flowdpo_operator.crd import PLURAL, VERSION

from .controller import Controller, OperatorBug
from .k8s import ApiError

RESOURCE = (API_GROUP, VERSION, PLURAL)
_LOCK_KEY = "flowdpo_sync_lock"


@dataclass(frozen=True)
class OperatorOptions:
    resync_seconds: float = 10.0  # timer interval: how often each run is observed
    retry_seconds: float = 10.0  # delay of kopf.TemporaryError retries in the event handlers
    max_workers: int = 8  # threads running the (synchronous) handlers, i.e. runs synced at once


def configure_settings(settings: kopf.OperatorSettings, options: OperatorOptions) -> None:
    """All kopf settings in one place (called from the startup hook)."""
    # kopf's bookkeeping lives in our API group, not kopf.zalando.org.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Events on the run: our explicit ones (phase changes, failures) and kopf's warnings/errors, not an
    # event per handler call (the timer would post one every few seconds).
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "flowdpo-operator"
    # Re-establish watches every few minutes, so a silently dropped connection is noticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.execution.max_workers = options.max_workers


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The API server's URL from KUBERNETES_SERVICE_HOST/PORT, which the kubelet gives every pod (client-go's
    in-cluster configuration reads the same); None outside a pod."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """$KUBECONFIG when set (running outside the cluster, tests), else the pod's ServiceAccount -- at the
    address the kubelet put in the environment: kopf's own default, https://kubernetes.default.svc, needs
    cluster DNS, which host-network pods and clusters without a DNS add-on do not have."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    info = kopf.login_with_service_account(**kwargs)
    server = in_cluster_server(os.environ)
    return dataclasses.replace(info, server=server) if info is not None and server else info


def register(registry: kopf.OperatorRegistry, controller: Controller, options: OperatorOptions) -> None:
    """Register every handler of the operator on `registry`."""

    def sync(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, *, in_timer: bool) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        # The timer and the event handlers of one run may fire together; one sync at a time per run.
        lock = memo.setdefault(_LOCK_KEY, threading.Lock())
        with lock:
            try:
                decision = controller.sync(namespace, name, logger)
            except ApiError as e:
                controller.metrics.reconciles.labels("error").inc()
                if in_timer:
                    logger.warning("sync failed, retrying at the next tick: %s", e)
                    return
                raise kopf.TemporaryError(str(e), delay=options.retry_seconds) from None
            except OperatorBug as e:  # already on the run as condition OperatorError, with the traceback logged
                if in_timer:
                    return
                raise kopf.TemporaryError(str(e), delay=max(options.retry_seconds, 60.0)) from None
        if decision is None:
            return
        for event in decision.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        if in_timer:
            return
        if decision.invalid:
            raise kopf.PermanentError("invalid spec: " + "; ".join(decision.invalid))
        if decision.blocked:
            raise kopf.TemporaryError(decision.blocked, delay=options.retry_seconds)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, options)

    kopf.on.login(registry=registry)(_login)

    @kopf.on.create(*RESOURCE, id="create", registry=registry)
    def on_create(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        sync(body, memo, logger, in_timer=False)

    @kopf.on.resume(*RESOURCE, id="resume", registry=registry)
    def on_resume(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        sync(body, memo, logger, in_timer=False)

    @kopf.on.update(*RESOURCE, id="update", field="spec", registry=registry)
    def on_update(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        sync(body, memo, logger, in_timer=False)

    @kopf.timer(
        *RESOURCE, id="resync", interval=options.resync_seconds, backoff=options.resync_seconds, registry=registry
    )
    def on_timer(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        sync(body, memo, logger, in_timer=True)

    @kopf.on.event(*RESOURCE, id="forget", registry=registry)
    def on_event(event: kopf.RawEvent, namespace: str, name: str, **_: Any) -> None:
        if event["type"] == "DELETED":
            controller.metrics.forget(namespace, name)
