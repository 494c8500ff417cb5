"""Waits that read as sentences and fail with evidence:

    wait_for(run_phase(api, ns, "tiny"), equals("Training"), timeout=120)

A *probe* fetches one observed value (None when the object does not exist); a *condition* decides whether it is
the awaited one. On timeout the error shows the last value observed and the output of `diagnostics` (e.g. the
tail of the container logs), so a failing e2e test says what the cluster was doing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException


@dataclass(frozen=True)
class Probe:
    """Fetches one value from the cluster; `what` names it in messages."""

    fetch: Callable[[], Any]
    what: str

    def __call__(self) -> Any:
        try:
            return self.fetch()
        except ApiException as e:
            if e.status == 404:
                return None
            raise


@dataclass(frozen=True)
class Condition:
    test: Callable[[Any], bool]
    description: str

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))


class WaitTimeout(AssertionError):
    """The awaited condition did not hold in time (or the `unless` condition did)."""


# -- conditions -------------------------------------------------------------------------------------------
def equals(expected: Any) -> Condition:
    return Condition(lambda v: v == expected, f"== {expected!r}")


def one_of(*expected: Any) -> Condition:
    return Condition(lambda v: v in expected, f"one of {expected!r}")


def exists() -> Condition:
    return Condition(lambda v: v is not None, "exists")


def absent() -> Condition:
    return Condition(lambda v: v is None or v == [], "is absent")


def at_least(n: float) -> Condition:
    return Condition(lambda v: v is not None and v >= n, f">= {n}")


def satisfies(test: Callable[[Any], bool], description: str) -> Condition:
    return Condition(test, description)


# -- the wait ---------------------------------------------------------------------------------------------
def wait_for(probe: Probe, condition: Condition, *, timeout: float, interval: float = 0.5,
             unless: Condition | None = None, diagnostics: Callable[[], str] | None = None) -> Any:
    """Poll `probe` until `condition` holds and return the value. Fails early when `unless` holds (e.g. the run
    went Failed while we wait for Succeeded)."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while True:
        value = probe()
        if condition(value):
            return value
        if unless is not None and unless(value):
            why = f"{probe.what} {unless.description} (while waiting for {condition.description})"
            break
        if time.monotonic() >= deadline:
            why = f"{probe.what} did not become {condition.description} within {timeout:.0f} s"
            break
        time.sleep(interval)
    extra = f"\n{diagnostics()}" if diagnostics is not None else ""
    raise WaitTimeout(f"{why}; last observed: {value!r}{extra}")


# -- probes of the objects e2e tests look at ----------------------------------------------------------------
GROUP, VERSION, PLURAL = "flowdpo.dev", "v1alpha1", "flowdporuns"


def run_object(api: kubernetes.client.ApiClient, namespace: str, name: str) -> Probe:
    custom = kubernetes.client.CustomObjectsApi(api)
    return Probe(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
                 f"FlowDPORun {namespace}/{name}")


def run_status(api: kubernetes.client.ApiClient, namespace: str, name: str) -> Probe:
    obj = run_object(api, namespace, name)
    return Probe(lambda: (obj() or {}).get("status"), f"status of FlowDPORun {namespace}/{name}")


def run_phase(api: kubernetes.client.ApiClient, namespace: str, name: str) -> Probe:
    obj = run_object(api, namespace, name)
    return Probe(lambda: ((obj() or {}).get("status") or {}).get("phase"), f"phase of FlowDPORun {namespace}/{name}")


def job(api: kubernetes.client.ApiClient, namespace: str, name: str) -> Probe:
    batch = kubernetes.client.BatchV1Api(api)
    return Probe(lambda: batch.read_namespaced_job(name, namespace), f"Job {namespace}/{name}")


def job_condition(api: kubernetes.client.ApiClient, namespace: str, name: str) -> Probe:
    """The Job's terminal condition type (Complete / Failed) or None while it runs."""
    batch = kubernetes.client.BatchV1Api(api)

    def fetch():
        conds = batch.read_namespaced_job_status(name, namespace).status.conditions or []
        return next((c.type for c in conds if c.status == "True"), None)

    return Probe(fetch, f"Job {namespace}/{name} condition")


def deployment(api: kubernetes.client.ApiClient, namespace: str, name: str) -> Probe:
    apps = kubernetes.client.AppsV1Api(api)
    return Probe(lambda: apps.read_namespaced_deployment(name, namespace), f"Deployment {namespace}/{name}")


def ready_replicas(api: kubernetes.client.ApiClient, namespace: str, name: str) -> Probe:
    apps = kubernetes.client.AppsV1Api(api)
    return Probe(lambda: apps.read_namespaced_deployment(name, namespace).status.ready_replicas or 0,
                 f"ready replicas of Deployment {namespace}/{name}")


def pods(api: kubernetes.client.ApiClient, namespace: str, selector: str = "") -> Probe:
    """Names and phases of the pods matching a label selector: [(name, phase), ...]."""
    core = kubernetes.client.CoreV1Api(api)
    return Probe(
        lambda: sorted((p.metadata.name, p.status.phase)
                       for p in core.list_namespaced_pod(namespace, label_selector=selector).items),
        f"pods {selector or '(all)'} in {namespace}",
    )


def pod_restart_count(api: kubernetes.client.ApiClient, namespace: str, selector: str) -> Probe:
    core = kubernetes.client.CoreV1Api(api)

    def fetch():
        items = core.list_namespaced_pod(namespace, label_selector=selector).items
        return max((cs.restart_count for p in items for cs in (p.status.container_statuses or [])), default=None)

    return Probe(fetch, f"restart count of pods {selector} in {namespace}")


def process_alive(pid: int) -> Probe:
    """Whether a local process still runs (a zombie counts as dead)."""

    def fetch():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    return Probe(fetch, f"process {pid} alive")
