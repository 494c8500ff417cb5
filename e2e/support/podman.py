"""Containers from the project's built images for the fake kubelet: a pod container whose image was built here
(scripts/images.sh, in podman's storage under the cache) runs with `podman run` instead of as a host process,
so chart + image + RBAC + securityContext are exercised together.

What a kubelet does and this does too: the pod's volumes are bind-mounted at their mountPaths (readOnly kept),
the ServiceAccount volume carries token + ca.crt + namespace and KUBERNETES_SERVICE_HOST/PORT point at the API
server, so the in-cluster client configuration is the real one; the container's `command`/`args` replace the
image's ENTRYPOINT/CMD; the securityContext's runAsUser/runAsGroup, readOnlyRootFilesystem, dropped
capabilities and allowPrivilegeEscalation=false become podman flags; runAsNonRoot is enforced against the
image's USER as a kubelet does. Networking is the host's (every pod is 127.0.0.1 in this harness).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from urllib.parse import urlsplit

from e2e.support.containers import (
    SERVICE_ACCOUNT_MOUNT,
    ContainerConfigError,
    LaunchSpec,
    Sandbox,
    expand_refs,
    rewrite_metrics_port,
)
from tests.support.podman import image_user, podman_env


def _runs_as_root(user: str) -> bool:
    uid = user.split(":", 1)[0]
    return not uid.isdigit() or int(uid) == 0  # a name cannot be verified to be non-root: a kubelet refuses it too


@dataclass(frozen=True)
class PodmanLaunch:
    """How one container of a pod becomes `podman run ...`."""

    sandbox: Sandbox
    server: str  # https://127.0.0.1:PORT of the API server

    def container_name(self, container: dict) -> str:
        pod = self.sandbox.pod["metadata"]
        return f"e2e-{pod['namespace']}-{pod['name']}-{container['name']}"[:120]

    def _security_flags(self, container: dict, image: str) -> list[str]:
        pod_sc = self.sandbox.pod["spec"].get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        flags: list[str] = []
        effective = image_user(image) or "0"
        if "runAsUser" in sc or "runAsGroup" in sc:
            user = effective.split(":", 1)
            uid = str(sc.get("runAsUser", user[0]))
            gid = str(sc.get("runAsGroup", user[1] if len(user) > 1 else "0"))
            effective = f"{uid}:{gid}"
            flags += ["--user", effective]
        if sc.get("runAsNonRoot") and _runs_as_root(effective):
            raise ContainerConfigError(
                f"container has runAsNonRoot and image {image} will run as root (user {effective!r})")
        if sc.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        if "ALL" in ((sc.get("capabilities") or {}).get("drop") or []):
            flags += ["--cap-drop", "ALL"]
        if sc.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        return flags

    def launch_spec(self, container: dict) -> LaunchSpec:
        name, image = container["name"], container["image"]
        mounts = self.sandbox.mounts(container)
        read_only = {m["mountPath"] for m in container.get("volumeMounts") or [] if m.get("readOnly")}
        volumes: list[str] = []
        for path, local in mounts.items():
            if path == SERVICE_ACCOUNT_MOUNT and not (local / "ca.crt").exists():
                shutil.copyfile(self.sandbox.ca_file, local / "ca.crt")
            if path not in read_only:
                local.chmod(0o777)  # emptyDir semantics: writable by the pod's (non-root) user
            volumes += ["-v", f"{local}:{path}:{'ro' if path in read_only else 'rw'}"]
        api = urlsplit(self.server)
        provided = {"HOSTNAME": self.sandbox.name, "KUBERNETES_SERVICE_HOST": api.hostname or "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": str(api.port or 443)}
        env = {**provided, **self.sandbox.declared_env(container, provided)}
        argv = [expand_refs(a, env) for a in container.get("args") or []]
        argv, ports = rewrite_metrics_port(argv)
        cname = self.container_name(container)
        run = ["podman", "run", "--rm", "--replace", "--name", cname, "--network", "host", "--pull", "never",
               *self._security_flags(container, image), *volumes]
        for k, v in env.items():
            run += ["--env", f"{k}={v}"]
        if container.get("workingDir"):
            run += ["--workdir", container["workingDir"]]
        if container.get("command"):
            run += ["--entrypoint", json.dumps([expand_refs(a, env) for a in container["command"]])]
        cwd = self.sandbox.root / "containers" / name
        cwd.mkdir(parents=True, exist_ok=True)
        host_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(podman_env() or {})}
        return LaunchSpec(name, [*run, image, *argv], host_env, cwd, self.sandbox.root / "logs" / f"{name}.log",
                          ports, stop_argv=["podman", "rm", "--force", "--time", "0", "--ignore", cname],
                          running_argv=["podman", "container", "inspect", "--format", "{{.State.Running}}", cname])
