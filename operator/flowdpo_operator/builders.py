"""Pure builders: a validated run document -> the Kubernetes objects of one FlowDPORun, as plain dicts.

Nothing here talks to the API; `reconcile` decides which of these bodies to create, replace or delete and
`k8s` sends them. Children of run `<run>` (namespace of the run, controller ownerReference to it):

    ConfigMap   <run>-config    run.yaml: the run document every pod reads (mounted at /etc/flowdpo)
    Job         <run>-weights   flowdpo prefetch     (the model into the model cache volume; kubernetes.modelCache)
    Job         <run>-prepare   flowdpo prepare      (example shards into object storage)
    Deployment  <run>-rollout   flowdpo worker       (+ a vLLM server container for rollout.backend=vllm)
    Job         <run>-trainer   flowdpo trainer
    Job         <run>-compile   flowdpo compile      (kubernetes.runCompile)
    Job         <run>-eval      flowdpo eval         (kubernetes.runCompile)

Every pod: no Kubernetes API access (automountServiceAccountToken: false), non-root (UID 10001, GID 0),
storage credentials from `envFrom: secretRef` of spec.storage.secretName, HOME and caches on an emptyDir
at /tmp (images may run with a read-only or foreign-owned root filesystem). Each body carries the hash of
its own content in the annotation `flowdpo.dev/spec-hash`, so the reconciler can tell a stale child from
a current one without comparing against server-side defaults. Placement, Kueue labels, Job policy and the
model cache volume come from `placement`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from flowdpo.spec import API_GROUP, API_VERSION, KIND, PodOptions, RunDocument
from flowdpo.train.launch import torchrun_command

from .placement import (
    MODEL_CACHE_READERS,
    PREFETCH,
    job_policy,
    kueue_labels,
    model_cache_env,
    model_cache_mount,
    model_cache_volume,
    pod_placement,
)
from .world import ServerVersion

# Where pods find things (the same paths in every container of a pod).
CONFIG_DIR = "/etc/flowdpo"
RUN_FILE = f"{CONFIG_DIR}/run.yaml"
VLLM_HEALTH_PROBE = "import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/health', timeout=4)"
SCRATCH_DIR = "/tmp"  # HOME, Hugging Face and flowdpo caches (emptyDir)
ADAPTER_DIR = "/adapters"  # vLLM mode: the worker writes adapter versions here, vLLM loads them from here
SHM_DIR = "/dev/shm"  # torch / NCCL / vLLM need more shared memory than the container default (64 MiB)

RUN_FILE_KEY = "run.yaml"
SPEC_HASH_ANNOTATION = f"{API_GROUP}/spec-hash"
MANAGED_BY = "flowdpo-operator"
GPU_RESOURCE = "nvidia.com/gpu"  # the default accelerator (PodOptions.gpuResource)

# Pods run as this user (the images create it; GID 0 owns HOME so any UID in group 0 can write there).
RUN_AS_USER = 10001
RUN_AS_GROUP = 0

# The steps that run as Jobs, in pipeline order, and the component label of the rollout Deployment.
JOB_STEPS = (PREFETCH, "prepare", "trainer", "compile", "eval")
ROLLOUT = "rollout"
CONFIG = "config"


@dataclass(frozen=True)
class Owner:
    """The FlowDPORun that owns the children (garbage collection deletes them with it)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        # No blockOwnerDeletion: it would require `update` on flowdporuns/finalizers wherever the
        # OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift), and background
        # deletion (kubectl's default) does not use it.
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid, "controller": True}


def child_name(run: str, component: str) -> str:
    """`<run>-config`, `<run>-prepare`, `<run>-rollout`, `<run>-trainer`, `<run>-compile`, `<run>-eval`."""
    return f"{run}-{component}"


def labels(run: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "flowdpo",
        "app.kubernetes.io/instance": run,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{API_GROUP}/run": run,
    }


def selector_labels(run: str, component: str) -> dict[str, str]:
    """The immutable subset used as the rollout Deployment's selector."""
    return {f"{API_GROUP}/run": run, "app.kubernetes.io/component": component}


def spec_hash(body: dict[str, Any]) -> str:
    """Hash of a body's content, ignoring the hash annotation itself and server-owned metadata."""
    clean = copy.deepcopy(body)
    meta = clean.get("metadata", {})
    meta.get("annotations", {}).pop(SPEC_HASH_ANNOTATION, None)
    meta.pop("resourceVersion", None)
    return hashlib.sha256(json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _metadata(doc: RunDocument, owner: Owner, component: str) -> dict[str, Any]:
    return {
        "name": child_name(doc.name, component),
        "namespace": owner.namespace,
        "labels": labels(doc.name, component),
        "annotations": {},
        "ownerReferences": [owner.reference()],
    }


def _sealed(body: dict[str, Any]) -> dict[str, Any]:
    body["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(body)
    return body


# -- the run document --------------------------------------------------------------------------------------
def run_document(doc: RunDocument) -> dict[str, Any]:
    """The document the pods read: header, name and the fully resolved spec (defaults filled in, so a later
    operator with other defaults cannot change what a running run computes). Without `suspend`: it means
    nothing inside a pod, and toggling it must not rewrite the pods' configuration."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": doc.name},
        "spec": doc.spec.model_dump(mode="json", by_alias=True, exclude={"suspend"}),
    }


def config_map(doc: RunDocument, owner: Owner) -> dict[str, Any]:
    return _sealed(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(doc, owner, CONFIG),
            "data": {RUN_FILE_KEY: yaml.safe_dump(run_document(doc), sort_keys=False)},
        }
    )


# -- pieces of pod templates -------------------------------------------------------------------------------
def resources(options: PodOptions) -> dict[str, Any]:
    """The container's ResourceRequirements: `options.resources` plus `options.gpus` of `options.gpuResource`
    (nvidia.com/gpu, a MIG slice, ...) in both requests and limits (extended resources must have requests ==
    limits)."""
    out: dict[str, Any] = {key: dict(value) for key, value in options.resources.items()}
    if options.gpus:
        for key in ("requests", "limits"):
            out.setdefault(key, {})[options.gpu_resource] = str(options.gpus)
    return out


def _env(extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    base = {"HOME": SCRATCH_DIR, "PYTHONUNBUFFERED": "1", **(extra or {})}
    return [{"name": k, "value": v} for k, v in base.items()]


def _hf_token(doc: RunDocument) -> list[dict[str, Any]]:
    """Only HF_TOKEN of the run's Secret (if it has one): the vLLM server downloads the model (gated models
    need a token) but never touches object storage, so it gets no storage credentials."""
    secret = doc.spec.storage.secret_name
    if not secret:
        return []
    ref = {"name": secret, "key": "HF_TOKEN", "optional": True}
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}}]


def _env_from(doc: RunDocument) -> list[dict[str, Any]]:
    secret = doc.spec.storage.secret_name
    return [{"secretRef": {"name": secret}}] if secret else []


def _container_security() -> dict[str, Any]:
    """Pod Security "restricted", and a read-only root filesystem: every write goes to an emptyDir (HOME and
    caches under /tmp, /dev/shm, /adapters)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def literal_args(args: list[str]) -> list[str]:
    """Container arguments as literal strings: Kubernetes expands `$(VAR)` in command and args, so a user
    string such as a model name `x$(AWS_SECRET_ACCESS_KEY)` would otherwise read the pod's environment.
    `$$` is Kubernetes' escape for one `$`."""
    return [a.replace("$", "$$") for a in args]


def _mounts(*, shm: bool, adapters: bool = False, cache: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    mounts = [*cache,
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    ]
    if shm:
        mounts.append({"name": "shm", "mountPath": SHM_DIR})
    if adapters:
        mounts.append({"name": "adapters", "mountPath": ADAPTER_DIR})
    return mounts


def _flowdpo_container(
    doc: RunDocument,
    name: str,
    args: list[str],
    options: PodOptions | None,
    *,
    metrics: bool = False,
    env: dict[str, str] | None = None,
    shm: bool = False,
    adapters: bool = False,
    cache: str = "",
) -> dict[str, Any]:
    """A container running `flowdpo <args>` from kubernetes.image. `options` None: no resource settings
    (the worker next to a vLLM server, which holds the pod's GPUs). `cache`: "read" or "write" mounts the model
    cache volume (kubernetes.modelCache) at /models and points the Hugging Face and flowdpo caches there."""
    k = doc.spec.kubernetes
    writable = cache == "write"
    if cache:
        env = {**(env or {}), **model_cache_env(doc, writable=writable)}
    container: dict[str, Any] = {
        "name": name,
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": literal_args(["flowdpo", *args]),
        "env": _env(env),
        "envFrom": _env_from(doc),
        "resources": resources(options) if options is not None else {},
        "volumeMounts": _mounts(
            shm=shm, adapters=adapters, cache=model_cache_mount(doc, writable=writable) if cache else []
        ),
        "securityContext": _container_security(),
    }
    if metrics:
        container["ports"] = [{"name": "metrics", "containerPort": k.metrics_port, "protocol": "TCP"}]
    return container


def _pod_template(
    doc: RunDocument,
    component: str,
    containers: list[dict[str, Any]],
    options: PodOptions,
    *,
    restart_policy: str,
    shm: bool = False,
    adapters: bool = False,
    cache: str = "",
) -> dict[str, Any]:
    k = doc.spec.kubernetes
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {
                "name": child_name(doc.name, CONFIG),
                "items": [{"key": RUN_FILE_KEY, "path": RUN_FILE_KEY}],
            },
        },
        {"name": "scratch", "emptyDir": {}},
    ]
    if shm:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    if adapters:
        volumes.append({"name": "adapters", "emptyDir": {}})
    if cache:
        volumes += model_cache_volume(doc, writable=cache == "write")
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        # Workers and trainer exchange everything through object storage: no Kubernetes API access.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_GROUP,
            "fsGroup": RUN_AS_GROUP,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": volumes,
    }
    if k.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in k.image_pull_secrets]
    spec.update(pod_placement(options))
    return {"metadata": {"labels": {**labels(doc.name, component), **kueue_labels(doc)}}, "spec": spec}


# -- Jobs ----------------------------------------------------------------------------------------------------
def step_options(doc: RunDocument, step: str) -> PodOptions:
    """The PodOptions of a step: compile and eval share kubernetes.compile, the prefetch Job kubernetes.prepare."""
    k = doc.spec.kubernetes
    return {PREFETCH: k.prepare, "prepare": k.prepare, "trainer": k.trainer, "compile": k.compile, "eval": k.compile}[step]


def step_command(step: str) -> list[str]:
    """`flowdpo` arguments of each Job step. compile/eval: no progress bars (logs are not terminals)."""
    return {
        PREFETCH: ["prefetch", RUN_FILE],
        "prepare": ["prepare", RUN_FILE],
        "trainer": ["trainer", RUN_FILE],
        "compile": ["compile", RUN_FILE, "--no-progress"],
        "eval": ["eval", RUN_FILE, "--no-progress"],
    }[step]


def job(doc: RunDocument, owner: Owner, step: str, server: ServerVersion | None = None) -> dict[str, Any]:
    """The Job of one pipeline step. Every step resumes from object storage, so a retried pod (backoffLimit)
    or a Job recreated after a suspend continues where the last one stopped. `server`: the API server's
    version (which Job fields it has; default: the oldest supported)."""
    if step not in JOB_STEPS:
        raise ValueError(f"unknown step {step!r}; expected one of {JOB_STEPS}")
    k = doc.spec.kubernetes
    options = step_options(doc, step)
    args = step_command(step)
    metrics = step == "trainer"
    if metrics:
        args = [*args, "--metrics-port", str(k.metrics_port)]
    gpu = options.gpus > 0
    cache = "write" if step == PREFETCH else "read" if step in MODEL_CACHE_READERS else ""
    container = _flowdpo_container(doc, step, args, options, metrics=metrics, shm=gpu, cache=cache)
    if step == "trainer" and options.gpus > 1:  # data-parallel trainer: one rank per GPU (flowdpo/train/parallel.py)
        container["command"] = literal_args(torchrun_command(options.gpus, args))
    meta = _metadata(doc, owner, step)
    meta["labels"].update(kueue_labels(doc))
    return _sealed(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {
                "backoffLimit": k.backoff_limit,
                "completions": 1,
                "parallelism": 1,
                **job_policy(doc, options, server or ServerVersion()),
                # Never: each retry is a new pod, so the failed pod's logs stay readable.
                "template": _pod_template(
                    doc, step, [container], options, restart_policy="Never", shm=gpu, cache=cache
                ),
            },
        }
    )


# -- the rollout Deployment -------------------------------------------------------------------------------
def vllm_args(doc: RunDocument) -> list[str]:
    """The vLLM OpenAI server's command line. Started as `python3 -m vllm.entrypoints.openai.api_server`
    (the same flags as `vllm serve`), which works in every vLLM distribution, CPU builds included."""
    spec, v = doc.spec, doc.spec.kubernetes.vllm
    args = [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", spec.model.name,
        # Pod-local: runtime LoRA loading is an admin API (load, replace or unload the flow's adapters); only
        # the worker next to it, on 127.0.0.1, may reach it.
        "--host", "127.0.0.1",
        "--port", str(v.port),
        "--dtype", spec.model.dtype,
        "--enable-lora",
        "--max-loras", str(v.max_loras),
        "--max-lora-rank", str(v.max_lora_rank),
        "--gpu-memory-utilization", str(v.gpu_memory_utilization),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    gpus = doc.spec.kubernetes.rollout.gpus
    if gpus > 1 and not any(a.startswith(("--tensor-parallel-size", "-tp")) for a in v.extra_args):
        args += ["--tensor-parallel-size", str(gpus)]
    return [*args, *v.extra_args]


def _vllm_container(doc: RunDocument) -> dict[str, Any]:
    k = doc.spec.kubernetes
    return {
        "name": "vllm",
        "image": k.vllm.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": literal_args(vllm_args(doc)),
        # Adapters are loaded at run time with POST /v1/load_lora_adapter, one new name per version.
        "env": _env({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **model_cache_env(doc, writable=False)})
        + _hf_token(doc),
        # The server listens on 127.0.0.1 only, so the kubelet cannot probe it over the pod IP: probe from
        # inside the container.
        "readinessProbe": {
            "exec": {"command": ["python3", "-c", VLLM_HEALTH_PROBE.format(port=k.vllm.port)]},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": resources(k.rollout),
        "volumeMounts": _mounts(shm=True, adapters=True, cache=model_cache_mount(doc, writable=False)),
        "securityContext": _container_security(),
    }


def rollout_deployment(doc: RunDocument, owner: Owner) -> dict[str, Any]:
    """Rollout workers: `spec.rollout.replicas` pods (0 while spec.suspend). With rollout.backend=vllm each pod
    runs a vLLM server and the worker, which share an emptyDir at /adapters: the worker writes each adapter
    version there and asks the server (on 127.0.0.1) to load it from the same path. Workers run with --linger:
    a Deployment restarts containers that exit, so a worker whose shards are done idles until training ends
    (then the Deployment is scaled down) instead of reloading the model in a restart loop."""
    spec, k = doc.spec, doc.spec.kubernetes
    port = str(k.metrics_port)
    if spec.rollout.backend == "vllm":
        worker = _flowdpo_container(
            doc,
            "worker",
            [
                "worker", RUN_FILE, "--metrics-port", port, "--linger",
                "--vllm-url", f"http://127.0.0.1:{k.vllm.port}", "--adapter-dir", ADAPTER_DIR,
            ],
            None,
            metrics=True,
            env={"FLOWDPO_SERVER_ADAPTER_DIR": ADAPTER_DIR},
            adapters=True,
            cache="read",
        )  # fmt: skip
        relay = _flowdpo_container(
            doc, "vllm-metrics",
            ["metrics-proxy", "--upstream", f"http://127.0.0.1:{k.vllm.port}/metrics",
             "--metrics-port", str(k.vllm.metrics_port)],
            None,
        )  # fmt: skip
        relay["ports"] = [{"name": "vllm-metrics", "containerPort": k.vllm.metrics_port, "protocol": "TCP"}]
        relay["resources"] = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
        containers = [_vllm_container(doc), worker, relay]
        shm, adapters = True, True
    else:
        shm, adapters = k.rollout.gpus > 0, False
        worker = _flowdpo_container(
            doc, "worker", ["worker", RUN_FILE, "--metrics-port", port, "--linger"], k.rollout, metrics=True, shm=shm,
            cache="read",
        )
        containers = [worker]
    meta = _metadata(doc, owner, ROLLOUT)
    meta["labels"].update(kueue_labels(doc))
    return _sealed(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 0 if spec.suspend else spec.rollout.replicas,
                "selector": {"matchLabels": selector_labels(doc.name, ROLLOUT)},
                # Recreate: GPU pods, no spare GPU for a surge pod; workers are stateless (shard claims
                # have leases in object storage), so replacing them all at once loses nothing.
                "strategy": {"type": "Recreate"},
                "template": _pod_template(
                    doc, ROLLOUT, containers, k.rollout, restart_policy="Always", shm=shm, adapters=adapters,
                    cache="read",
                ),
            },
        }
    )
