"""FakeKubelet: plays the kubelet of one Node for the e2e control plane, which has no kubelet and no container
runtime.

It registers a Node (Ready, untainted, with plenty of cpu/memory and `nvidia.com/gpu` so GPU pods schedule),
watches the Pods the real kube-scheduler binds to it, and runs each container's `command` + `args` as a local
process (see containers.py for volumes, env and path rewriting). Pod status goes back through the API like a
kubelet writes it: Running with podIP 127.0.0.1, then Succeeded/Failed on exit for restartPolicy Never, restarts
with a short back-off for Always (and for failures under OnFailure). When a Pod is deleted, the process group
gets SIGTERM, then SIGKILL after the grace period (capped), and the deletion is finished with grace period 0,
which is the kubelet's job.

Images: a container whose image is one of `container_images` (the project's images, built by
scripts/images.sh) runs from that image with podman (podman.py); any other runs as a host process, the host's
Python environment standing in for its image; a podman container is reported running once podman runs it,
not when `podman run` starts. Deliberately not implemented: probes (containers are Ready once running), init
containers, resource enforcement, networking beyond 127.0.0.1. The kubelet uses the
admin kubeconfig; a real one has node credentials.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import kubernetes
from kubernetes.client.rest import ApiException

from e2e.support.containers import (
    ContainerConfigError,
    LaunchSpec,
    Sandbox,
    UnsupportedPodError,
    describe,
)
from e2e.support.podman import PodmanLaunch

log = logging.getLogger("e2e.kubelet")

TERMINAL = ("Succeeded", "Failed")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class KubeletConfig:
    root: Path
    server: str
    ca_file: Path
    node_name: str = "e2e-node"
    # The project's virtual environment comes first on PATH: `flowdpo`, `flowdpo-operator`, `python`.
    path_prefix: tuple[str, ...] = (str(Path(sys.executable).parent),)
    image_env: dict[str, str] = field(default_factory=dict)
    # Images whose containers run from the image with podman (e2e/support/podman.py) instead of as host
    # processes: the project's images that scripts/images.sh built.
    container_images: frozenset[str] = frozenset()
    capacity: dict[str, str] = field(default_factory=lambda: {
        "cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi", "nvidia.com/gpu": "8",
    })
    restart_backoff: tuple[float, float] = (0.5, 8.0)  # first, max seconds (a real kubelet: 10 s .. 5 min)
    max_grace_seconds: float = 10.0
    poll_seconds: float = 0.2


@dataclass
class ContainerRun:
    """One container's process and the status fields a kubelet reports for it."""

    spec: dict
    launch: LaunchSpec | None = None
    proc: subprocess.Popen | None = None
    restart_count: int = 0
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict = field(default_factory=dict)
    restart_at: float | None = None
    done: bool = False  # terminated and not going to be restarted

    def status(self) -> dict:
        running = "running" in self.state
        return {
            "name": self.spec["name"],
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"fake://{self.proc.pid}" if self.proc else "",
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


class PodWorker(threading.Thread):
    """Runs one pod: prepares the sandbox (retrying config errors), starts the containers, supervises them
    according to restartPolicy and writes the pod status; stops them when asked (pod deleted)."""

    def __init__(self, kubelet: FakeKubelet, pod: dict):
        super().__init__(name=f"pod-{describe(pod)}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.namespace = pod["metadata"]["namespace"]
        self.pod_name = pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        self.root = kubelet.config.root / self.namespace / f"{self.pod_name}-{self.uid[:8]}"
        self.sandbox = Sandbox(
            kubelet.core, pod, self.root, server=kubelet.config.server, ca_file=kubelet.config.ca_file,
            path_prefix=list(kubelet.config.path_prefix), image_env=kubelet.config.image_env,
        )
        self.containers = [ContainerRun(c) for c in pod["spec"]["containers"]]
        self.start_time = now()
        self._stop_requested = threading.Event()
        self._finish_deletion = False
        self.finished = threading.Event()

    # -- requests from the kubelet -------------------------------------------------------------------------
    def request_stop(self, finish_deletion: bool) -> None:
        self._finish_deletion = self._finish_deletion or finish_deletion
        self._stop_requested.set()

    @property
    def log_paths(self) -> dict[str, Path]:
        return {c.spec["name"]: self.root / "logs" / f"{c.spec['name']}.log" for c in self.containers}

    # -- status --------------------------------------------------------------------------------------------
    def _write_status(self, phase: str, reason: str | None = None, message: str | None = None) -> bool:
        """Patch the pod status; False if the pod is gone."""
        ready = phase == "Running" and all("running" in c.state for c in self.containers)
        conditions = [
            {"type": t, "status": s, "lastTransitionTime": self.start_time}
            for t, s in (("Initialized", "True"), ("PodScheduled", "True"),
                         ("ContainersReady", str(ready)), ("Ready", str(ready)))
        ]
        status = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
            "reason": reason,
            "message": message,
        }
        try:
            self.kubelet.core.patch_namespaced_pod_status(self.pod_name, self.namespace, {"status": status})
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            log.warning("status of %s/%s: %s", self.namespace, self.pod_name, e)
            return True

    # -- processes -----------------------------------------------------------------------------------------
    def _start(self, c: ContainerRun) -> None:
        launch = c.launch
        with open(launch.log_path, "ab") as out:
            out.write(f"\n=== {now()} start #{c.restart_count}: {' '.join(launch.argv)}\n".encode())
            out.flush()
            try:
                c.proc = subprocess.Popen(
                    launch.argv, env=launch.env, cwd=launch.cwd, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,  # own process group: killpg on delete
                )
            except OSError as e:
                out.write(f"=== cannot start: {e}\n".encode())
                c.proc = None
                c.state = {"terminated": {"exitCode": 128, "reason": "StartError", "message": str(e),
                                          "startedAt": now(), "finishedAt": now()}}
                self._after_exit(c, 128)
                return
        if launch.running_argv:
            self._wait_running(c)
        c.state = {"running": {"startedAt": now()}}
        for pod_port, local in launch.ports.items():
            self.kubelet.record_port(self.namespace, self.pod_name, c.spec["name"], pod_port, local)

    def _wait_running(self, c: ContainerRun, timeout: float = 120.0) -> None:
        """Until the runtime runs the container (or its client exited, or the pod is being deleted): the container
        stays ContainerCreating meanwhile, so Ready means what it means on a real node."""
        launch = c.launch
        assert launch is not None and launch.running_argv and c.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and c.proc.poll() is None and not self._stop_requested.is_set():
            probe = subprocess.run(launch.running_argv, env=launch.env, capture_output=True, text=True, check=False)
            if probe.returncode == 0 and probe.stdout.strip() == "true":
                return
            time.sleep(self.kubelet.config.poll_seconds)

    def _after_exit(self, c: ContainerRun, rc: int) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and rc != 0):
            lo, hi = self.kubelet.config.restart_backoff
            delay = min(hi, lo * 2 ** c.restart_count)
            c.last_state = c.state
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {delay:.1f}s restarting failed container"}}
            c.restart_at = time.monotonic() + delay
        else:
            c.done = True

    def _reap(self) -> bool:
        """Handle exited processes and due restarts; True if anything changed."""
        changed = False
        for c in self.containers:
            if c.proc is not None and "running" in c.state:
                rc = c.proc.poll()
                if rc is not None:
                    c.state = {"terminated": {
                        "exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                        "startedAt": c.state["running"]["startedAt"], "finishedAt": now()}}
                    self._after_exit(c, rc)
                    changed = True
            elif c.restart_at is not None and time.monotonic() >= c.restart_at:
                c.restart_at = None
                c.restart_count += 1
                self._start(c)
                changed = True
        return changed

    def _kill_all(self) -> None:
        grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        grace = min(float(grace if grace is not None else 30), self.kubelet.config.max_grace_seconds)
        alive = [c.proc for c in self.containers if c.proc is not None and c.proc.poll() is None]
        for p in alive:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in alive:
            _signal_group(p, signal.SIGKILL)  # also strays of an exited leader
            p.wait()
        for c in self.containers:
            if c.launch is not None and c.launch.stop_argv:
                subprocess.run(c.launch.stop_argv, check=False, env=c.launch.env, capture_output=True, timeout=60)

    # -- the pod's life ------------------------------------------------------------------------------------
    def _configure(self) -> bool:
        """Sandbox + launch specs, retried while config is missing; False if the pod must not run."""
        while not self._stop_requested.is_set():
            try:
                self.sandbox.materialise_volumes()
                for c in self.containers:
                    if c.spec.get("image") in self.kubelet.config.container_images:
                        c.launch = PodmanLaunch(self.sandbox, self.kubelet.config.server).launch_spec(c.spec)
                    else:
                        c.launch = self.sandbox.launch_spec(c.spec)
                return True
            except ContainerConfigError as e:
                for c in self.containers:
                    c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                if not self._write_status("Pending"):
                    return False
                self._stop_requested.wait(1.0)
            except UnsupportedPodError as e:
                for c in self.containers:
                    c.state = {"terminated": {"exitCode": 1, "reason": "UnsupportedByFakeKubelet",
                                              "message": str(e), "finishedAt": now()}}
                self._write_status("Failed", "UnsupportedByFakeKubelet", str(e))
                (self.root / "logs" / "kubelet.log").write_text(f"{e}\n")
                return False
        return False

    def run(self) -> None:
        try:
            if self.pod["spec"].get("initContainers"):
                msg = "init containers are not supported by the fake kubelet"
                self._write_status("Failed", "UnsupportedByFakeKubelet", msg)
            elif self._configure():
                self._supervise()
        except Exception:
            log.exception("pod %s/%s", self.namespace, self.pod_name)
        finally:
            self._kill_all()
            self.sandbox.cleanup()
            if self._finish_deletion:
                self.kubelet.finish_deletion(self.namespace, self.pod_name, self.uid)
            self.finished.set()

    def _supervise(self) -> None:
        for c in self.containers:
            self._start(c)
        changed = True
        while not self._stop_requested.is_set():
            if all(c.done for c in self.containers):
                failed = any(c.state["terminated"]["exitCode"] != 0 for c in self.containers)
                self._write_status("Failed" if failed else "Succeeded")
                return
            if changed and not self._write_status("Running"):
                return  # the pod object is gone
            self._stop_requested.wait(self.kubelet.config.poll_seconds)
            changed = self._reap()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class FakeKubelet:
    """Register the Node, watch its Pods, run them. `start()` / `stop()`; see the module docstring."""

    def __init__(self, api: kubernetes.client.ApiClient, config: KubeletConfig):
        self.api = api
        self.config = config
        self.core = kubernetes.client.CoreV1Api(api)
        self._workers: dict[str, PodWorker] = {}  # pod uid -> worker (finished ones kept: their logs)
        self._ports: dict[tuple[str, str, str], dict[int, int]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch_loop, name="kubelet-watch", daemon=True)
        self._watch: kubernetes.watch.Watch | None = None

    # -- node ----------------------------------------------------------------------------------------------
    def register_node(self) -> None:
        name = self.config.node_name
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                      "kubernetes.io/arch": "amd64"}}}
        try:
            self.core.create_node(node)
        except ApiException as e:
            if e.status != 409:
                raise
        # The TaintNodesByCondition admission plugin adds node.kubernetes.io/not-ready at creation; nothing
        # else (no node lifecycle controller runs) would ever remove it.
        self.core.patch_node(name, {"spec": {"taints": None}})
        t = now()
        self.core.patch_node_status(name, {"status": {
            "capacity": self.config.capacity,
            "allocatable": self.config.capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "fake kubelet is posting ready status", "lastHeartbeatTime": t,
                            "lastTransitionTime": t}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "fake://0", "osImage": "local",
                         "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }})

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.register_node()
        self._watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.request_stop(finish_deletion=False)
        for w in workers:
            w.join(timeout=self.config.max_grace_seconds + 5)
        self._watcher.join(timeout=10)

    # -- watch ---------------------------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.config.node_name}"
        rv = None
        while not self._stopping.is_set():
            try:
                if rv is None:
                    pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
                    rv = pods.metadata.resource_version
                    listed = set()
                    for pod in pods.items:
                        listed.add(pod.metadata.uid)
                        self._sync(self.api.sanitize_for_serialization(pod))
                    self._forget_missing(listed)
                self._watch = kubernetes.watch.Watch()
                for event in self._watch.stream(self.core.list_pod_for_all_namespaces, field_selector=selector,
                                                resource_version=rv, timeout_seconds=10):
                    if self._stopping.is_set():
                        break
                    if event["type"] == "ERROR":
                        raise ApiException(status=event["raw_object"].get("code", 500), reason="watch error")
                    pod = self.api.sanitize_for_serialization(event["object"])
                    rv = pod["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self._stop_worker(pod["metadata"]["uid"], finish_deletion=False)
                    else:
                        self._sync(pod)
            except ApiException as e:
                if e.status == 410:  # resourceVersion too old: list again
                    rv = None
                else:
                    log.warning("kubelet watch: %s", e)
                    rv = None
                    self._stopping.wait(1.0)
            except Exception:  # connection reset etc.: never let the kubelet die silently
                if not self._stopping.is_set():
                    log.exception("kubelet watch")
                    rv = None
                    self._stopping.wait(1.0)

    def _forget_missing(self, listed: set[str]) -> None:
        with self._lock:
            gone = [uid for uid in self._workers if uid not in listed]
        for uid in gone:
            self._stop_worker(uid, finish_deletion=False)

    def _stop_worker(self, uid: str, finish_deletion: bool) -> None:
        with self._lock:
            worker = self._workers.get(uid)
        if worker is not None:
            worker.request_stop(finish_deletion)

    def _sync(self, pod: dict) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if meta.get("deletionTimestamp"):
                if worker is not None and not worker.finished.is_set():
                    worker.request_stop(finish_deletion=True)
                else:
                    threading.Thread(target=self.finish_deletion, args=(meta["namespace"], meta["name"], uid),
                                     daemon=True).start()
                return
            if worker is None and status.get("phase") not in TERMINAL and not self._stopping.is_set():
                worker = self._workers[uid] = PodWorker(self, pod)
                worker.start()

    def finish_deletion(self, namespace: str, name: str, uid: str) -> None:
        """What a kubelet does once the containers are gone: delete the pod object for good."""
        try:
            self.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=0,
                body=kubernetes.client.V1DeleteOptions(grace_period_seconds=0,
                                                       preconditions=kubernetes.client.V1Preconditions(uid=uid)),
            )
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("finishing deletion of %s/%s: %s", namespace, name, e)

    # -- what tests look at --------------------------------------------------------------------------------
    def record_port(self, namespace: str, pod: str, container: str, pod_port: int, local: int) -> None:
        with self._lock:
            self._ports.setdefault((namespace, pod, container), {})[pod_port] = local

    def metrics_url(self, namespace: str, pod: str, container: str, pod_port: int = 9400) -> str:
        """URL of a container's `--metrics-port` on this host (its port inside the pod is `pod_port`)."""
        with self._lock:
            local = self._ports.get((namespace, pod, container), {}).get(pod_port)
        if local is None:
            raise KeyError(f"{namespace}/{pod}/{container} has no --metrics-port {pod_port} (yet)")
        return f"http://127.0.0.1:{local}/metrics"

    def workers(self, namespace: str | None = None) -> list[PodWorker]:
        with self._lock:
            return [w for w in self._workers.values() if namespace is None or w.namespace == namespace]

    def pid(self, namespace: str, pod: str, container: str) -> int | None:
        """PID of a running container process (None when not running)."""
        for w in self.workers(namespace):
            if w.pod_name == pod and not w.finished.is_set():
                for c in w.containers:
                    if c.spec["name"] == container and c.proc is not None and c.proc.poll() is None:
                        return c.proc.pid
        return None

    def log_paths(self, namespace: str | None = None) -> list[Path]:
        return [p for w in self.workers(namespace) for p in w.log_paths.values() if p.exists()]

    def tail_logs(self, namespace: str | None = None, lines: int = 30) -> str:
        """The last lines of every container log (of one namespace): for failure messages."""
        parts = []
        for path in sorted(self.log_paths(namespace)):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.relative_to(self.config.root)} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no container logs)"
