"""The FlowDPORun status as one model: the CRD's status schema and its printer columns (`kubectl get fdr`) are
generated from it (`crd.py`), and every status the reconciler writes validates against it
(tests/unit/test_operator_reconcile.py), so the schema, the columns and the writer cannot drift apart."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flowdpo.names import PHASES


def _printer(name: str, type_: str, description: str | None = None) -> dict[str, Any]:
    column = {"name": name, "type": type_}
    if description:
        column["description"] = description
    return {"x-printer-column": column}


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, alias="lastTransitionTime", json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, alias="observedGeneration", json_schema_extra={"format": "int64"})


class RunStatus(BaseModel):
    """Observed state, written by the operator (progress mirrored from progress.json)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    phase: Literal[PHASES] | None = Field(None, json_schema_extra=_printer("Phase", "string"))  # type: ignore[valid-type]
    observed_generation: int | None = Field(None, alias="observedGeneration", json_schema_extra={"format": "int64"})
    conditions: list[Condition] | None = None
    progressive_accuracy: float | None = Field(
        None,
        alias="progressiveAccuracy",
        json_schema_extra=_printer("Accuracy", "number", "progressive validation accuracy"),
    )
    examples: int | None = Field(None, json_schema_extra=_printer("Examples", "integer"))
    examples_total: int | None = Field(None, alias="examplesTotal")
    pairs: dict[str, Any] | None = None
    pairs_total: int | None = Field(None, alias="pairsTotal", json_schema_extra=_printer("Pairs", "integer"))
    adapter_version: str | None = Field(
        None, alias="adapterVersion", json_schema_extra=_printer("Adapter", "string", "answer/stop versions")
    )
    adapter_versions: dict[str, int] | None = Field(None, alias="adapterVersions")
    progress: dict[str, Any] | None = None


def printer_columns() -> list[dict[str, Any]]:
    """`kubectl get fdr` columns, in field order, then the age."""
    columns = []
    for name, prop in RunStatus.model_json_schema(by_alias=True)["properties"].items():
        column = prop.get("x-printer-column")
        if column:
            columns.append({"name": column["name"], "type": column["type"], "jsonPath": f".status.{name}",
                            **({"description": column["description"]} if "description" in column else {})})
    return [*columns, {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
