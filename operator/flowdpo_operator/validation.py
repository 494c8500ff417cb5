"""A FlowDPORun custom object -> a validated `RunDocument`, or errors that each name the field to fix.

Two layers:
1. the run-spec model (`flowdpo.spec.parse_document`): everything `flowdpo run` checks too. The CRD's
   schema already rejects most of these at `kubectl apply`; validators it cannot express (cross-field rules,
   templates) surface here;
2. cluster-only rules (`cluster_errors`): what is fine on one machine but cannot work in pods.

Storage credentials: `s3://` needs `spec.storage.secretName`. The operator reads progress.json with the
same credentials as the pods, and the only credentials it can borrow for a run are that run's Secret
(S3-compatible stores also need AWS_ENDPOINT_URL, which has no ambient source). `gs://`, `az://` and
`abfs://` may omit it: pods then use the cluster's workload identity, and the operator its own.

`immutable_changes` guards a running run: the fields that decide what training computes
(`RunSpec.training_identity`) cannot change once the run's ConfigMap exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes.utils import parse_quantity
from pydantic.alias_generators import to_camel

from flowdpo.spec import (
    API_VERSION,
    BUILTIN_SMOLLM2,
    KIND,
    PodOptions,
    RunDocument,
    SpecError,
    parse_document,
)

from .builders import JOB_STEPS, ROLLOUT, child_name
from .world import ServerVersion

# Children are named `<run>-<component>`; the longest suffix is 8 characters and a Job's name must fit in a
# label value (63 characters: Kubernetes labels each Job's pods with job-name).
MAX_NAME_LENGTH = 63 - max(len(child_name("", c)) for c in (*JOB_STEPS, ROLLOUT, "config"))
OBJECT_STORAGE_SCHEMES = ("s3", "gs", "az", "abfs")
# vLLM accepts only these --max-lora-rank values (vllm/config/lora.py, MaxLoRARanks, vLLM 0.32).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Flags the operator sets on the vLLM server itself; extraArgs must not repeat them.
VLLM_MANAGED_FLAGS = (
    "--model", "--port", "--dtype", "--enable-lora", "--max-loras", "--max-lora-rank",
    "--gpu-memory-utilization", "--revision",
)  # fmt: skip
_RESOURCE_KEYS = ("requests", "limits")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclass(frozen=True)
class Validation:
    doc: RunDocument | None  # None when there are errors
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(
    body: Mapping[str, Any], allowed_images: tuple[str, ...] = (), server: ServerVersion | None = None
) -> Validation:
    """Validate a FlowDPORun object as read from the API (metadata beyond the name is ignored).
    `allowed_images`: image prefixes run pods may use (empty: any); creating a FlowDPORun creates pods.
    `server`: the API server's version (Kueue needs Job.spec.suspend); None: not checked."""
    meta = body.get("metadata") or {}
    raw = {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body.get("kind", KIND),
        "metadata": {"name": meta.get("name")},
        "spec": body.get("spec") or {},
    }
    try:
        doc = parse_document(raw, f"FlowDPORun {meta.get('namespace', '')}/{meta.get('name', '')}")
    except SpecError as e:
        # parse_document's message: a headline, then one "  field: problem" line per error.
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        return Validation(None, tuple(lines) or (str(e),))
    errors = cluster_errors(doc) + image_errors(doc, allowed_images) + server_errors(doc, server)
    return Validation(None if errors else doc, tuple(errors))


def image_errors(doc: RunDocument, allowed: tuple[str, ...]) -> list[str]:
    """Images outside the operator's allowlist (chart: allowedImages). A prefix ending in '/' or ':' allows a
    registry path or a repository's tags; otherwise it must match the whole image."""
    if not allowed:
        return []
    k = doc.spec.kubernetes
    images = {"spec.kubernetes.image": k.image}
    if doc.spec.rollout.backend == "vllm":
        images["spec.kubernetes.vllm.image"] = k.vllm.image

    def ok(image: str) -> bool:
        return any(image == a or (a.endswith(("/", ":")) and image.startswith(a)) for a in allowed)

    return [
        f"{field}: {image!r} is not an allowed image (the operator allows: {', '.join(allowed)})"
        for field, image in images.items()
        if not ok(image)
    ]


def server_errors(doc: RunDocument, server: ServerVersion | None) -> list[str]:
    """What this API server cannot do for the spec."""
    if server is None or doc.spec.kubernetes.queue_name is None or server.has_job_suspend:
        return []
    message = (
        f"spec.kubernetes.queueName: Kueue admits Jobs through Job.spec.suspend, which this API server ({server}) "
        "does not have (Kubernetes 1.22+); remove queueName on this cluster"
    )
    return [message]


def cluster_errors(doc: RunDocument) -> list[str]:
    """Rules for running the spec as pods; each message starts with the field to change."""
    spec, k = doc.spec, doc.spec.kubernetes
    errors: list[str] = []
    if len(doc.name) > MAX_NAME_LENGTH:
        errors.append(
            f"metadata.name: at most {MAX_NAME_LENGTH} characters on a cluster (children such as "
            f"'{child_name(doc.name, 'trainer')}' must fit in 63)"
        )
    scheme = spec.storage.uri.split("://", 1)[0]
    if scheme not in OBJECT_STORAGE_SCHEMES:
        errors.append(
            f"spec.storage.uri: {spec.storage.uri!r} is not shared between pods; use object storage "
            "such as s3://bucket/runs/{name} (gs://, az://, abfs:// work too)"
        )
    elif scheme == "s3" and not spec.storage.secret_name:
        errors.append(
            "spec.storage.secretName: required for s3:// storage: name a Secret with AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL / AWS_REGION where needed)"
        )
    if spec.rollout.backend == "vllm":
        errors += _vllm_errors(doc)
    pods = {"rollout": k.rollout, "trainer": k.trainer, "prepare": k.prepare, "compile": k.compile}
    for name, options in pods.items():
        errors += _pod_option_errors(f"spec.kubernetes.{name}", options)
    if k.rollout.active_deadline_seconds is not None:
        errors.append(
            "spec.kubernetes.rollout.activeDeadlineSeconds: rollout workers are a Deployment (they run until "
            "training ends); set a deadline on spec.kubernetes.trainer instead"
        )
    if spec.device == "cuda":
        # The pods that load a model in-process (a vLLM worker only loads a tokenizer).
        needs = ["trainer"] + (["compile"] if k.run_compile else [])
        needs += ["rollout"] if spec.rollout.backend == "transformers" else []
        errors += [
            f"spec.kubernetes.{name}.gpus: spec.device is 'cuda' but this pod requests no GPU"
            for name in needs
            if pods[name].gpus == 0
        ]
    return errors


def _vllm_errors(doc: RunDocument) -> list[str]:
    spec, v = doc.spec, doc.spec.kubernetes.vllm
    errors = []
    if spec.model.name == BUILTIN_SMOLLM2 or spec.model.name.startswith("builtin:"):
        errors.append(
            f"spec.model.name: {spec.model.name!r} exists only for rollout.backend 'transformers'; "
            "a vLLM server needs a Hugging Face model id (or a path inside the rollout image)"
        )
    if v.max_lora_rank not in VLLM_LORA_RANKS:
        errors.append(f"spec.kubernetes.vllm.maxLoraRank: vLLM accepts only {list(VLLM_LORA_RANKS)}")
    if spec.lora.r > v.max_lora_rank:
        errors.append(
            f"spec.kubernetes.vllm.maxLoraRank: {v.max_lora_rank} is below spec.lora.r ({spec.lora.r}); "
            "vLLM refuses adapters above --max-lora-rank"
        )
    if doc.spec.kubernetes.metrics_port == v.port:
        errors.append(
            f"spec.kubernetes.metricsPort: {v.port} is also spec.kubernetes.vllm.port; the worker and the "
            "vLLM server share the pod's network, pick two ports"
        )
    if v.metrics_port in (v.port, doc.spec.kubernetes.metrics_port):
        errors.append(
            f"spec.kubernetes.vllm.metricsPort: {v.metrics_port} is also spec.kubernetes.vllm.port or "
            "spec.kubernetes.metricsPort; the containers of a rollout pod share its network, pick distinct ports"
        )
    for arg in v.extra_args:
        flag = arg.split("=", 1)[0]
        if flag in VLLM_MANAGED_FLAGS:
            errors.append(
                f"spec.kubernetes.vllm.extraArgs: {flag} is set by the operator from the spec "
                "(model, kubernetes.vllm.*); remove it from extraArgs"
            )
    return errors


def _pod_option_errors(path: str, options: PodOptions) -> list[str]:
    errors = []
    for key, value in options.resources.items():
        if key not in _RESOURCE_KEYS:
            errors.append(
                f"{path}.resources: unknown key {key!r}; use {{requests: {{cpu: ..., memory: ...}}, limits: {{...}}}}"
            )
            continue
        if not isinstance(value, Mapping):
            errors.append(f"{path}.resources.{key}: must map resource names to quantities")
            continue
        for resource, quantity in value.items():
            if resource in (options.gpu_resource, "nvidia.com/gpu"):
                errors.append(
                    f"{path}.resources.{key}: set accelerators with {path}.gpus (and {path}.gpuResource), "
                    f"not {resource}"
                )
                continue
            try:
                parse_quantity(quantity)
            except (ValueError, TypeError):
                errors.append(f"{path}.resources.{key}.{resource}: {quantity!r} is not a Kubernetes quantity")
    for i, toleration in enumerate(options.tolerations):
        unknown = sorted(set(toleration) - _TOLERATION_KEYS)
        if unknown:
            errors.append(f"{path}.tolerations[{i}]: unknown field(s) {unknown}; known: {sorted(_TOLERATION_KEYS)}")
    return errors


def immutable_changes(stored_run_yaml: str | None, doc: RunDocument) -> list[str]:
    """Errors for fields of `RunSpec.training_identity` that differ from the run document the pods already
    have (the run's ConfigMap). The run in object storage was computed with the old values; workers and
    trainer would refuse the new ones (RunConflictError) and crash-loop."""
    if not stored_run_yaml:
        return []
    try:
        stored = parse_document(yaml.safe_load(stored_run_yaml), "stored run document")
    except (SpecError, yaml.YAMLError):
        return []  # not ours to judge: it is replaced by the current spec
    changes = _diff(stored.spec.training_identity(), doc.spec.training_identity(), "spec")
    return [
        f"{path}: cannot change after the run started (was {old!r}, now {new!r}); restore it, or create "
        "a new FlowDPORun for a new run"
        for path, old, new in changes
    ]


def _diff(old: Any, new: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{path}.{to_camel(key)}")
        return out
    return [] if old == new else [(path, old, new)]
