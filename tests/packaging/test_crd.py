"""The committed CRD is generated from the run-spec model and is structurally valid for Kubernetes."""


import yaml

from flowdpo_operator.crd import CRD_FILES, build_crd, render
from tests.support.paths import ROOT

FORBIDDEN = {"$ref", "$defs", "anyOf", "title", "const"}


def _walk(node, path="schema"):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            if k not in ("default", "enum"):
                yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_committed_crds_are_current():
    """crds/ and the chart's crds/ both hold exactly what the spec model generates."""
    assert {p.relative_to(ROOT).as_posix() for p in CRD_FILES} == {
        "crds/flowdporun.yaml",
        "charts/flowdpo/crds/flowdporun.yaml",
    }
    for path in CRD_FILES:
        assert path.read_text() == render(), f"{path} is stale: run `python -m flowdpo_operator.crd --write`"


def test_schema_is_structural():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, key, value in _walk(schema):
        assert key not in FORBIDDEN, f"{path}: {key} is not allowed in a structural schema"
        if key == "properties":
            for name, sub in value.items():
                assert "type" in sub or sub.get("x-kubernetes-preserve-unknown-fields"), f"{path}.{name} has no type"
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert value is True
        if key == "default":
            assert value not in (None, ""), f"{path}: Kubernetes 1.20 refuses a CRD with a null or '' default"


def test_schema_carries_defaults_bounds_and_enums_of_the_pydantic_model():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    chunk = spec["flow"]["properties"]["chunkTokens"]
    assert (chunk["type"], chunk["default"], chunk["minimum"]) == ("integer", 160, 1)
    assert "reasoning-gym" in spec["data"]["properties"]["source"]["enum"]
    assert spec["data"]["properties"]["path"]["nullable"] is True
    cols = [c["name"] for c in build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Phase", "Accuracy", "Examples", "Pairs", "Adapter", "Age"]
    assert yaml.safe_load(render())["metadata"]["name"] == "flowdporuns.flowdpo.dev"
