"""The `kubernetes` section of a run spec: what only the operator reads (images, pods, the vLLM server)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from flowdpo.spec.sections import SpecModel

# Kueue's labels (kueue.x-k8s.io/v1beta1): the LocalQueue a workload is submitted to, and its
# WorkloadPriorityClass.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# A label value / object name of one DNS label (LocalQueue, PriorityClass, PVC names are DNS subdomains;
# one label is what fits in a label value too).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# An extended resource name: <domain>/<name>, e.g. nvidia.com/gpu, nvidia.com/mig-1g.10gb, amd.com/gpu.
_EXTENDED_RESOURCE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_AFFINITY_KEYS = ("nodeAffinity", "podAffinity", "podAntiAffinity")


def _dns_label(value: str | None) -> str | None:
    if value is not None and (len(value) > 63 or not _DNS_LABEL.match(value)):
        raise ValueError(f"{value!r} is not a DNS label (lowercase letters, digits and '-', at most 63 characters)")
    return value


class PodOptions(SpecModel):
    """Scheduling and resources of one kind of pod the operator creates (cluster only)."""

    gpus: int = Field(0, le=64, ge=0, description="Accelerators (`gpuResource`) requested (and limited) per pod.")
    gpu_resource: str = Field(
        "nvidia.com/gpu",
        description="Extended resource name of the accelerator: nvidia.com/gpu, a MIG slice such as "
        "nvidia.com/mig-1g.10gb (GPU operator, mixed strategy), amd.com/gpu, gpu.intel.com/i915, ...",
    )
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Kubernetes ResourceRequirements of the main container (requests/limits for cpu, memory); "
        "the accelerator request comes from `gpus` and `gpuResource`.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        description="Pod affinity (Kubernetes Affinity: nodeAffinity, podAffinity, podAntiAffinity), as is.",
    )
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the pods (scheduling order and preemption; Kueue reads it too)."
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=31_536_000,
        description="Jobs only (prepare, trainer, compile/eval): Job activeDeadlineSeconds, the most seconds the "
        "step may run (its pods are stopped and the run fails with DeadlineExceeded). Not for rollout pods.",
    )

    @field_validator("gpu_resource")
    @classmethod
    def _extended_resource(cls, v: str) -> str:
        if not _EXTENDED_RESOURCE.match(v) or v.startswith(("kubernetes.io/", "requests.")):
            raise ValueError(f"{v!r} is not an extended resource name such as nvidia.com/gpu or nvidia.com/mig-1g.10gb")
        return v

    @field_validator("priority_class_name")
    @classmethod
    def _priority_class(cls, v: str | None) -> str | None:
        return _dns_label(v)

    @field_validator("affinity")
    @classmethod
    def _affinity_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(_AFFINITY_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; a Kubernetes Affinity has {list(_AFFINITY_KEYS)}")
        return v


def _gpu_pod(**kw: Any) -> PodOptions:
    return PodOptions(gpus=1, **kw)


class VLLMServerSpec(SpecModel):
    """The vLLM container of each rollout pod (rollout.backend=vllm)."""

    image: str = Field(
        "ghcr.io/flowdpo/flowdpo-rollout:0.1.0",
        description="Rollout image: vLLM's OpenAI server plus flowdpo (rollout_image/Dockerfile).",
    )
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI-compatible server inside the pod.")
    max_loras: int = Field(4, le=1024, ge=1, description="--max-loras: adapter versions resident at once (answer, stop, next).")
    max_lora_rank: int = Field(16, le=1024, ge=1, description="--max-lora-rank (>= lora.r).")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="--gpu-memory-utilization.")
    extra_args: list[str] = Field(default_factory=list, description="More vLLM server flags, appended verbatim.")
    metrics_port: int = Field(
        9401,
        ge=1,
        le=65535,
        description="Port (named vllm-metrics) where a relay container serves the vLLM server's own /metrics, "
        "read-only (the server itself listens on 127.0.0.1 only: its LoRA endpoints are an admin API).",
    )


class JobPolicySpec(SpecModel):
    """Settings of every Job the operator creates (prepare, trainer, compile, eval, prefetch)."""

    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=60,
        le=31_536_000,
        description="Delete a finished Job (and its pods) this long after it ends (Kubernetes 1.21+; ignored on "
        "older servers). The run keeps what it learnt (its status conditions); a Failed Job deleted this way is "
        "retried, like a Failed Job deleted by hand. At least 60 s, so the operator sees every Job finish.",
    )
    ignore_disruptions: bool = Field(
        True,
        description="podFailurePolicy (Kubernetes 1.26+): a pod stopped by a disruption (preemption, eviction, "
        "node drain; condition DisruptionTarget) does not count against backoffLimit (the step resumes anyway).",
    )
    fail_on_exit_codes: list[int] = Field(
        default_factory=list,
        description="podFailurePolicy (Kubernetes 1.26+): fail the Job at once when its container exits with one "
        "of these codes instead of retrying, e.g. [2]: flowdpo's exit code for errors a retry cannot fix (spec, "
        "model, data, a conflicting run, storage refusing the credentials).",
    )

    @field_validator("fail_on_exit_codes")
    @classmethod
    def _exit_codes(cls, v: list[int]) -> list[int]:
        bad = sorted({c for c in v if not 1 <= c <= 255})
        if bad:
            raise ValueError(f"exit codes are 1..255 (0 is success); got {bad}")
        if len(v) > 255:
            raise ValueError("at most 255 exit codes")
        return sorted(set(v))


class ModelCacheSpec(SpecModel):
    """A PersistentVolumeClaim holding the model weights, shared by the trainer, the compile/eval Jobs and every
    rollout pod (worker and vLLM server) instead of a download per pod. A `prefetch` Job (the run's first step)
    downloads the model into it; every other pod mounts it read-only with HF_HUB_OFFLINE=1."""

    claim_name: str = Field(
        ...,
        description="An existing PersistentVolumeClaim in the run's namespace. ReadWriteMany (or ReadWriteOnce "
        "with every pod on one node) lets the prefetch Job fill it; a ReadOnlyMany volume filled beforehand "
        "works with prefetch: false.",
    )
    # None, not "": Kubernetes 1.20 turns a `default: ''` in a CRD schema into null and refuses the CRD.
    sub_path: str | None = Field(
        None, description="Folder inside the volume (several runs or models can share one claim); none: the root."
    )
    prefetch: bool = Field(
        True, description="Run `flowdpo prefetch` as a Job before prepare: download the model into the volume."
    )

    @field_validator("claim_name")
    @classmethod
    def _claim(cls, v: str) -> str:
        return _dns_label(v) or v

    @field_validator("sub_path")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = v.split("/")
        if not v or v.startswith("/") or ".." in parts:
            raise ValueError(f"{v!r}: a relative path inside the volume, without '..'")
        return v


class KubernetesSpec(SpecModel):
    """How the operator runs this spec on a cluster (ignored by `flowdpo run`)."""

    image: str = Field(
        "ghcr.io/flowdpo/flowdpo-trainer:0.1.0",
        description="Image with flowdpo + CUDA torch (trainer_image/Dockerfile): prepare, worker, trainer, compile.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="For every container.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secret names for private registries.")
    vllm: VLLMServerSpec = Field(default_factory=VLLMServerSpec)
    rollout: PodOptions = Field(default_factory=_gpu_pod, description="Rollout pods (one GPU each by default).")
    trainer: PodOptions = Field(default_factory=_gpu_pod, description="Trainer Job pod (one GPU by default).")
    prepare: PodOptions = Field(default_factory=PodOptions, description="Prepare Job pod (CPU only).")
    compile: PodOptions = Field(default_factory=_gpu_pod, description="Compile and eval Job pods.")
    run_compile: bool = Field(
        True, description="After training, run `flowdpo compile` and `flowdpo eval` as Jobs (phase Compiling)."
    )
    metrics_port: int = Field(9400, ge=1, le=65535, description="Prometheus port of worker and trainer containers.")
    backoff_limit: int = Field(3, le=1000, ge=0, description="Pod retries of each Job (they resume where they stopped).")
    jobs: JobPolicySpec = Field(default_factory=JobPolicySpec, description="Settings of every Job of the run.")
    queue_name: str | None = Field(
        None,
        description="Kueue LocalQueue: every Job and the rollout Deployment get the label "
        f"{KUEUE_QUEUE_LABEL}, Jobs are created suspended and Kueue starts them when it admits them "
        "(Kubernetes 1.22+; see docs/kubernetes.md).",
    )
    workload_priority_class: str | None = Field(
        None, description=f"Kueue WorkloadPriorityClass (label {KUEUE_PRIORITY_LABEL}); needs queueName."
    )
    model_cache: ModelCacheSpec | None = Field(
        None, description="A volume with the model weights shared by every pod, filled by a prefetch Job."
    )

    @field_validator("queue_name", "workload_priority_class")
    @classmethod
    def _label_values(cls, v: str | None) -> str | None:
        return _dns_label(v)

    @model_validator(mode="after")
    def _priority_needs_queue(self) -> KubernetesSpec:
        if self.workload_priority_class and not self.queue_name:
            raise ValueError("workloadPriorityClass needs queueName (it is a Kueue setting)")
        return self
