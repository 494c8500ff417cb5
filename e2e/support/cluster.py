"""A real Kubernetes 1.20 control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) for one
pytest session, started by `scripts/testenv/k8s.sh` in a private work dir on free ports, so that several
sessions (or a developer's own instance) never share state.

There is no kubelet and no container runtime: `e2e.support.kubelet.FakeKubelet` plays that part.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "testenv" / "k8s.sh"
CRD_FILE = REPO / "crds" / "flowdporun.yaml"
COMPONENTS = ("etcd", "apiserver", "kcm", "sched")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says what to look at."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


@dataclass(frozen=True)
class Ports:
    apiserver: int
    kcm: int
    scheduler: int
    etcd: int
    etcd_peer: int

    @classmethod
    def pick(cls) -> Ports:
        # Ports are bound and released one by one: a race with another process is possible but harmless in
        # practice, and the script fails loudly (a component exits) if it happens.
        return cls(*(free_port() for _ in range(5)))


def bin_dir() -> Path:
    """Where `k8s.sh build` caches the binaries (keyed by the Debian package version)."""
    out = subprocess.run(["bash", str(SCRIPT), "bin-dir"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def ensure_built(log_path: Path) -> tuple[Path, float]:
    """Build the binaries unless cached (8-20 min the first time). Returns (bin dir, seconds spent building)."""
    binaries = bin_dir()
    if all((binaries / b).is_file() for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                               "kubectl", "etcd")):
        return binaries, 0.0
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        rc = subprocess.run(["bash", str(SCRIPT), "build"], stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise ControlPlaneError(
            f"building the local Kubernetes control plane failed (exit {rc}); it needs apt access to the Debian "
            f"bookworm mirror and root or sudo. Rerun `bash {SCRIPT.relative_to(REPO)} build` to resume. "
            f"Log {log_path}:\n{_tail(log_path)}"
        )
    return binaries, time.monotonic() - t0


@dataclass
class ControlPlane:
    """One control plane under `work_dir`. `start()` applies `crds` before the controller-manager starts, so
    its garbage collector knows the custom resource types from the first second."""

    work_dir: Path
    crds: Path | None = CRD_FILE
    scheduler: bool = True
    ports: Ports = field(default_factory=Ports.pick)
    start_seconds: float | None = None
    _bin: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "K8S_TESTENV_WORK": str(self.work_dir),
            "K8S_TESTENV_PORT": str(self.ports.apiserver),
            "K8S_TESTENV_KCM_PORT": str(self.ports.kcm),
            "K8S_TESTENV_SCHED_PORT": str(self.ports.scheduler),
            "K8S_TESTENV_ETCD_PORT": str(self.ports.etcd),
            "K8S_TESTENV_ETCD_PEER_PORT": str(self.ports.etcd_peer),
            "SCHED": "1" if self.scheduler else "0",
        }
        env.pop("KUBECONFIG", None)
        if self.crds is not None:
            env["CRDS"] = str(self.crds)
        return env

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig."""
        return self.work_dir / "pki" / "admin.kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        assert self._bin is not None, "start() first"
        return self._bin / "kubectl"

    def log_path(self, component: str) -> Path:
        """Log of one of COMPONENTS (etcd, apiserver, kcm, sched)."""
        return self.work_dir / "run" / f"{component}.log"

    def tail_logs(self, lines: int = 20) -> str:
        return "\n".join(
            f"--- {c} ({self.log_path(c)}) ---\n{_tail(self.log_path(c), lines)}"
            for c in COMPONENTS if self.log_path(c).exists()
        )

    def start(self) -> None:
        self._bin = bin_dir()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        out = subprocess.run(["bash", str(SCRIPT), "start"], env=self.env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise ControlPlaneError(
                f"`k8s.sh start` failed (exit {out.returncode}):\n{out.stderr[-3000:]}\n{self.tail_logs()}"
            )
        self.start_seconds = time.monotonic() - t0

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=self.env, capture_output=True, check=False)

    def api_client(self, kubeconfig: Path | None = None) -> kubernetes.client.ApiClient:
        """A client for the admin kubeconfig (or another one), with a connection pool big enough for the
        kubelet's threads."""
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig or self.kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        return kubernetes.client.ApiClient(cfg)

    def kubectl(self, *args: str, input: str | None = None, kubeconfig: Path | None = None,
                check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the cached kubectl 1.20 against this control plane; returns the completed process (text)."""
        cmd = [str(self.kubectl_path), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, check=check, timeout=timeout)

    def write_token_kubeconfig(self, token: str, user: str, path: Path, namespace: str = "default") -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.server,
                                                       "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "local", "user": user, "namespace": namespace}}],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)
        return path

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path,
                                   expiration_seconds: int = 3600) -> Path:
        """Mint a token for ServiceAccount `namespace/name` (TokenRequest API) and write a kubeconfig that
        authenticates as it: requests made with it get exactly that account's RBAC permissions."""
        with ExitStack() as stack:
            api = stack.enter_context(self.api_client())
            req = kubernetes.client.AuthenticationV1TokenRequest(
                spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
            )
            token = kubernetes.client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, req)
        return self.write_token_kubeconfig(
            token.status.token, f"system:serviceaccount:{namespace}:{name}", path, namespace
        )
