"""How the fake kubelet turns one container of a Pod into a local process: the pod's volumes become folders of
a per-pod sandbox, environment variables are resolved through the API the way a kubelet resolves them, and
every path under a volume's `mountPath` in the command, args and env is rewritten to the sandbox folder.

Pods are handled as plain dicts in API (camelCase) form, exactly as `kubectl get -o yaml` shows them.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.rest import ApiException

# A real kubelet mounts the pod's ServiceAccount token, CA and namespace here, and in-cluster clients read
# them from this fixed path. Processes here run on the host where that path is not the pod's, so the kubelet
# stand-in writes the same credentials as a kubeconfig file and points KUBECONFIG at it instead.
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ContainerConfigError(Exception):
    """The container cannot be configured yet (a Secret or ConfigMap is missing, ...). Like a kubelet's
    CreateContainerConfigError: the pod stays Pending with the reason, and the kubelet retries."""


class UnsupportedPodError(Exception):
    """The pod uses something this stand-in does not implement; it fails the pod with a message saying so."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expand_refs(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are substituted, unknown references stay as written,
    and $$ escapes a dollar."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


@dataclass(frozen=True)
class PathMapper:
    """Rewrites container paths under a mountPath to the sandbox folder of that volume. A value is rewritten
    when it is a mounted path (`/etc/flowdpo/run.yaml`) or an option carrying one (`--config=/etc/flowdpo`)."""

    mounts: tuple[tuple[str, str], ...]  # (mountPath, local path), longest mountPath first

    @classmethod
    def of(cls, mounts: dict[str, Path]) -> PathMapper:
        pairs = sorted(((m.rstrip("/") or "/", str(p)) for m, p in mounts.items()), key=lambda x: -len(x[0]))
        return cls(tuple(pairs))

    def _map_path(self, value: str) -> str:
        for mount, local in self.mounts:
            if value == mount or value.startswith(mount + "/"):
                return local + value[len(mount):]
        return value

    def __call__(self, value: str) -> str:
        if value.startswith("/"):
            return self._map_path(value)
        head, eq, tail = value.partition("=")
        if eq and tail.startswith("/"):
            return head + eq + self._map_path(tail)
        return value


def rewrite_metrics_port(argv: list[str]) -> tuple[list[str], dict[int, int]]:
    """Give each `--metrics-port N` a free local port (many pods share this host). Returns the new argv and
    {port in the pod: port on this host}."""
    out, ports = list(argv), {}
    for i, arg in enumerate(out):
        if arg == "--metrics-port" and i + 1 < len(out) and out[i + 1].isdigit():
            ports[int(out[i + 1])] = local = free_port()
            out[i + 1] = str(local)
        elif arg.startswith("--metrics-port=") and arg.split("=", 1)[1].isdigit():
            ports[int(arg.split("=", 1)[1])] = local = free_port()
            out[i] = f"--metrics-port={local}"
    return out, ports


@dataclass
class LaunchSpec:
    """Everything needed to start one container as a process."""

    container: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    ports: dict[int, int] = field(default_factory=dict)
    # Run after the process is killed: a container runtime's client can die and leave its container running.
    stop_argv: list[str] | None = None
    # Prints "true" once the container runs: a runtime's client (`podman run`) is up before its container is, and
    # a kubelet reports a container running only once the runtime started it.
    running_argv: list[str] | None = None


def _decode(data: dict[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


class Sandbox:
    """The per-pod folder (volumes/, logs/, containers/) and the API lookups a kubelet does for a pod.

    `image_env` plays the role of the image's ENV (e.g. the model cache the trainer image would bake in);
    the container's own env overrides it, as with a real runtime."""

    def __init__(self, core: kubernetes.client.CoreV1Api, pod: dict, root: Path, *, server: str,
                 ca_file: Path, path_prefix: list[str], image_env: dict[str, str]):
        self.core = core
        self.pod = pod
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.root = root
        self.server = server
        self.ca_file = ca_file
        self.path_prefix = path_prefix
        self.image_env = image_env
        self.volumes: dict[str, Path] = {}
        for sub in ("volumes", "logs", "containers"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # -- API lookups ---------------------------------------------------------------------------------------
    def _secret(self, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            return _decode(self.core.read_namespaced_secret(name, self.namespace).data)
        except ApiException as e:
            if e.status == 404 and optional:
                return None
            if e.status == 404:
                raise ContainerConfigError(f'secret "{name}" not found') from e
            raise

    def _config_map(self, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            cm = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as e:
            if e.status == 404 and optional:
                return None
            if e.status == 404:
                raise ContainerConfigError(f'configmap "{name}" not found') from e
            raise
        return {**{k: v.encode() for k, v in (cm.data or {}).items()}, **_decode(cm.binary_data)}

    def _claim_folder(self, claim: str) -> Path:
        """The host folder of a PersistentVolumeClaim: the `hostPath` of the PersistentVolume it is bound to
        (binding is the real controller-manager's; a real kubelet would mount the volume there)."""
        try:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, self.namespace)
        except ApiException as e:
            if e.status == 404:
                raise ContainerConfigError(f'persistentvolumeclaim "{claim}" not found') from e
            raise
        if pvc.status.phase != "Bound" or not pvc.spec.volume_name:
            raise ContainerConfigError(f'persistentvolumeclaim "{claim}" is not bound')
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        if pv.spec.host_path is None:
            raise UnsupportedPodError(f"PersistentVolume {pv.metadata.name}: only hostPath volumes are supported")
        folder = Path(pv.spec.host_path.path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _field(self, path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        if path not in values:
            raise UnsupportedPodError(f"fieldRef {path} is not supported by the fake kubelet")
        return values[path]

    def _token(self, source: dict) -> bytes:
        """A bound ServiceAccount token (projected volume), minted through the TokenRequest API."""
        body = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(
                audiences=[source["audience"]] if source.get("audience") else [],
                expiration_seconds=int(source.get("expirationSeconds", 3600)),
                bound_object_ref=kubernetes.client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=self.name, uid=self.pod["metadata"]["uid"]
                ),
            )
        )
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        return self.core.create_namespaced_service_account_token(sa, self.namespace, body).status.token.encode()

    # -- volumes -------------------------------------------------------------------------------------------
    @staticmethod
    def _write_files(folder: Path, data: dict[str, bytes], items: list[dict] | None, mode: int | None) -> None:
        chosen = {i["key"]: i.get("path", i["key"]) for i in items} if items else {k: k for k in data}
        for key, rel in chosen.items():
            if key not in data:
                raise ContainerConfigError(f'key "{key}" not found for a volume of pod {folder.parent.parent.name}')
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])
            path.chmod(mode if mode is not None else 0o644)

    def _materialise(self, volume: dict, folder: Path) -> Path:
        """Create the volume's content; returns where it is (`folder`, or a PersistentVolume's own folder)."""
        if "persistentVolumeClaim" in volume:
            return self._claim_folder(volume["persistentVolumeClaim"]["claimName"])
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
        elif "configMap" in volume:
            src = volume["configMap"]
            data = self._config_map(src["name"], src.get("optional", False))
            folder.mkdir(parents=True, exist_ok=True)
            self._write_files(folder, data or {}, src.get("items"), src.get("defaultMode"))
        elif "secret" in volume:
            src = volume["secret"]
            data = self._secret(src["secretName"], src.get("optional", False))
            folder.mkdir(parents=True, exist_ok=True)
            self._write_files(folder, data or {}, src.get("items"), src.get("defaultMode"))
        elif "projected" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            mode = volume["projected"].get("defaultMode")
            for src in volume["projected"].get("sources") or []:
                if "configMap" in src:
                    c = src["configMap"]
                    self._write_files(folder, self._config_map(c["name"], c.get("optional", False)) or {},
                                      c.get("items"), mode)
                elif "secret" in src:
                    s = src["secret"]
                    self._write_files(folder, self._secret(s["name"], s.get("optional", False)) or {},
                                      s.get("items"), mode)
                elif "serviceAccountToken" in src:
                    t = src["serviceAccountToken"]
                    self._write_files(folder, {"token": self._token(t)}, [{"key": "token", "path": t["path"]}], mode)
                elif "downwardAPI" in src:
                    self._downward(folder, src["downwardAPI"].get("items") or [])
                else:
                    raise UnsupportedPodError(f"projected source {sorted(src)} is not supported by the fake kubelet")
        elif "downwardAPI" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            self._downward(folder, volume["downwardAPI"].get("items") or [])
        else:
            kind = sorted(k for k in volume if k != "name")
            raise UnsupportedPodError(f"volume {volume['name']}: type {kind} is not supported by the fake kubelet")
        return folder

    def _downward(self, folder: Path, items: list[dict]) -> None:
        for item in items:
            if "fieldRef" not in item:
                raise UnsupportedPodError("downwardAPI items other than fieldRef are not supported")
            path = folder / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self._field(item["fieldRef"]["fieldPath"]))

    def materialise_volumes(self) -> None:
        """Create every volume of the pod under volumes/<name> (again on each retry: a Secret may have
        appeared since)."""
        for volume in self.pod["spec"].get("volumes") or []:
            folder = self.root / "volumes" / volume["name"]
            self.volumes[volume["name"]] = self._materialise(volume, folder)

    # -- containers ----------------------------------------------------------------------------------------
    def mounts(self, container: dict) -> dict[str, Path]:
        mounts = {}
        for m in container.get("volumeMounts") or []:
            if m["name"] not in self.volumes:
                raise UnsupportedPodError(f"container {container['name']} mounts unknown volume {m['name']}")
            local = self.volumes[m["name"]]
            if m.get("subPath"):
                local = local / m["subPath"]
            mounts[m["mountPath"]] = local
        return mounts

    def _service_account_kubeconfig(self, folder: Path) -> Path:
        token = (folder / "token").read_text().strip()
        ca = folder / "ca.crt"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "in-cluster", "cluster": {
                "server": self.server, "certificate-authority": str(ca if ca.exists() else self.ca_file)}}],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "in-cluster", "user": "pod",
                                                     "namespace": self.namespace}}],
            "current-context": "pod",
        }
        path = self.root / "serviceaccount.kubeconfig"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)
        return path

    def _env(self, container: dict, mounts: dict[str, Path]) -> dict[str, str]:
        """The process environment: what the runtime and image provide (host paths, never rewritten), then
        the container's envFrom and env (resolved through the API; mount paths rewritten)."""
        (self.root / "home").mkdir(exist_ok=True)
        provided = {
            "PATH": ":".join([*self.path_prefix, "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(self.root / "home"),
            "HOSTNAME": self.name,
            "PYTHONUNBUFFERED": "1",
            **self.image_env,
        }
        if SERVICE_ACCOUNT_MOUNT in mounts:
            provided["KUBECONFIG"] = str(self._service_account_kubeconfig(mounts[SERVICE_ACCOUNT_MOUNT]))
        mapper = PathMapper.of(mounts)
        return {**provided, **{k: mapper(v) for k, v in self.declared_env(container, provided).items()}}

    def declared_env(self, container: dict, provided: dict[str, str]) -> dict[str, str]:
        """The container's envFrom and env, resolved through the API as a kubelet resolves them; `provided`
        is what the runtime and image set (the targets of $(VAR) references besides the declared ones)."""
        declared: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                ref = src["secretRef"]
                data = self._secret(ref["name"], ref.get("optional", False)) or {}
            elif "configMapRef" in src:
                ref = src["configMapRef"]
                data = self._config_map(ref["name"], ref.get("optional", False)) or {}
            else:
                raise UnsupportedPodError(f"envFrom source {sorted(src)} is not supported")
            declared.update({prefix + k: v.decode() for k, v in data.items()})
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                declared[var["name"]] = expand_refs(var.get("value", ""), {**provided, **declared})
                continue
            src = var["valueFrom"]
            if "secretKeyRef" in src or "configMapKeyRef" in src:
                is_secret = "secretKeyRef" in src
                ref = src["secretKeyRef" if is_secret else "configMapKeyRef"]
                optional = ref.get("optional", False)
                data = (self._secret if is_secret else self._config_map)(ref["name"], optional) or {}
                if ref["key"] not in data:
                    if optional:
                        continue
                    raise ContainerConfigError(f'couldn\'t find key {ref["key"]} in {ref["name"]}')
                declared[var["name"]] = data[ref["key"]].decode()
            elif "fieldRef" in src:
                declared[var["name"]] = self._field(src["fieldRef"]["fieldPath"])
            else:
                raise UnsupportedPodError(f"env {var['name']}: valueFrom {sorted(src)} is not supported")
        return declared

    def launch_spec(self, container: dict) -> LaunchSpec:
        """Resolve one container into argv / env / cwd. Raises ContainerConfigError (retry later) or
        UnsupportedPodError (fail the pod)."""
        name = container["name"]
        if not container.get("command"):
            raise UnsupportedPodError(
                f"container {name} has no `command`: the fake kubelet cannot read an image's ENTRYPOINT, so "
                "every container must set its command explicitly"
            )
        mounts = self.mounts(container)
        env = self._env(container, mounts)
        mapper = PathMapper.of(mounts)
        argv = [mapper(expand_refs(a, env)) for a in [*container["command"], *(container.get("args") or [])]]
        argv, ports = rewrite_metrics_port(argv)
        resolved = shutil.which(argv[0], path=env["PATH"]) if "/" not in argv[0] else argv[0]
        argv[0] = resolved or argv[0]
        cwd = Path(mapper(container["workingDir"])) if container.get("workingDir") else self.root / "containers" / name
        cwd.mkdir(parents=True, exist_ok=True)
        return LaunchSpec(name, argv, env, cwd, self.root / "logs" / f"{name}.log", ports)

    def cleanup(self) -> None:
        """Remove volume contents (secrets on disk); logs stay for the test report."""
        shutil.rmtree(self.root / "volumes", ignore_errors=True)
        (self.root / "serviceaccount.kubeconfig").unlink(missing_ok=True)


def describe(obj: Any) -> str:
    """Short `namespace/name` of a pod dict."""
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
