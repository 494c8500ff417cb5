"""The `kubernetes` section of a run spec: what only the operator reads (images, pods, the vLLM server)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from flowdpo.spec.sections import SpecModel


class PodOptions(SpecModel):
    """Scheduling and resources of one kind of pod the operator creates (cluster only)."""

    gpus: int = Field(0, le=64, ge=0, description="nvidia.com/gpu requested (and limited) per pod.")
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Kubernetes ResourceRequirements of the main container (requests/limits for cpu, memory); "
        "the GPU request comes from `gpus`.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")


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
