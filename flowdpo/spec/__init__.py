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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flowdpo.spec.cluster import (  # noqa: F401 - re-exported: `from flowdpo.spec import ...`
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    JobPolicySpec,
    KubernetesSpec,
    ModelCacheSpec,
    PodOptions,
    VLLMServerSpec,
)
from flowdpo.spec.sections import (  # noqa: F401 - re-exported: `from flowdpo.spec import ...`
    ANSWER_SYSTEM_PROMPT,
    API_GROUP,
    API_VERSION,
    BUILTIN_SMOLLM2,
    KIND,
    STOP_SYSTEM_PROMPT,
    STOP_USER_TEMPLATE,
    BaselinesSpec,
    CompileSpec,
    DataSpec,
    EvalSetSpec,
    EvaluationSpec,
    FlowSpec,
    LoraSpec,
    ModelSpec,
    ReasoningGymTask,
    RolloutSpec,
    SftLoraSpec,
    SftSpec,
    SpecError,
    SpecModel,
    StorageSpec,
    TrackingSpec,
    TrainingSpec,
)
from flowdpo.spec.yaml_file import RunFileError, load_run_yaml


class RunSpec(SpecModel):
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
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for sampling and training.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device of in-process models.")
    suspend: bool = Field(
        False, description="Cluster: scale rollout workers to zero and suspend the Jobs; false resumes the run."
    )
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec, description="Experiment tracking of the run's progress (MLflow, W&B, a file)."
    )

    def training_identity(self) -> dict[str, Any]:
        """The fields that decide what training computes: a stored run resumes only under an equal identity.
        Operational fields (suspend, cluster placement, tracking, replica count, credentials) and the compile section
        (read after training) may change at any time."""
        body = self.model_dump(mode="json", exclude={"compile", "suspend", "kubernetes", "tracking"})
        body["rollout"].pop("replicas")
        body["storage"].pop("secret_name")
        return body

    def stored_identity(self) -> dict[str, Any]:
        """What a run folder's stored spec must agree with to be resumed or compiled: the training identity
        without the folder's own location, so that a copied or moved run folder resumes (a running cluster
        run still may not change its storage: the operator checks `training_identity`)."""
        body = self.training_identity()
        body.pop("storage")
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
        raw = p.read_bytes()
    except OSError as e:
        raise SpecError(f"{p}: cannot read run file: {e.strerror}") from None
    try:
        data = load_run_yaml(raw, str(p))
    except RunFileError as e:
        raise SpecError(str(e)) from None
    return parse_document(data, str(p))


def quickstart_path() -> Path:
    """The embedded default run file (examples/quickstart.yaml, shipped inside the package)."""
    return Path(__file__).parent.parent / "examples" / "quickstart.yaml"
