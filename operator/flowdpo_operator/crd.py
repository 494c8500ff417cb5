"""Generate the FlowDPORun CustomResourceDefinition from the run-spec pydantic model.

The CRD's openAPIV3Schema is derived from `RunSpec` (one source of truth): `$ref`s are inlined,
`Optional[X]` becomes `nullable: true`, free-form dicts keep unknown fields, and pydantic-only keywords
(`title`, `$defs`) are dropped, since the Kubernetes structural-schema rules forbid or ignore them.

    python -m flowdpo_operator.crd > crds/flowdporun.yaml     # CI checks the committed file is not stale
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from flowdpo.spec import API_GROUP, KIND, RunSpec
from flowdpo_operator.status_model import RunStatus, printer_columns

PLURAL = "flowdporuns"
VERSION = "v1alpha1"

def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _resolve(value, defs)
    # Optional[X] -> X + nullable; other unions (e.g. str | list[str]) are left to pydantic's validation.
    any_of = out.pop("anyOf", None)
    if any_of:
        rest = [s for s in any_of if s.get("type") != "null"]
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
        if len(rest) < len(any_of):
            out["nullable"] = True
    # JSON Schema 2020 exclusive bounds -> OpenAPI v3.0 (boolean flags next to minimum/maximum).
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(flag), (int, float)) and not isinstance(out.get(flag), bool):
            out[bound] = out[flag]
            out[flag] = True
    if out.get("type") == "object" and "properties" not in out:
        additional = out.get("additionalProperties")
        if additional in (None, True, {}):
            out.pop("additionalProperties", None)
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("additionalProperties") is False:
        out.pop("additionalProperties")  # structural schemas prune unknown fields by default
    if "default" in out and out["default"] is None:
        # The API server drops `default: null`, so the stored CRD would never equal this file: server-side
        # apply (Helm 4 installs crds/ with it) then reports a conflict on .spec.versions with whoever
        # applied the CRD first.
        out.pop("default")
    if out.get("default") == "":
        # Kubernetes 1.20 reads `default: ''` as null and refuses the whole CRD ("must be of type string");
        # pydantic fills the empty string in anyway.
        out.pop("default")
    return out


def _strip(node: Any) -> Any:
    """Drop what the status schema must not carry: the printer-column notes (they become
    additionalPrinterColumns) and `nullable` (the operator never writes a null: `status.without_nulls`)."""
    if isinstance(node, list):
        return [_strip(n) for n in node]
    if not isinstance(node, dict):
        return node
    return {k: _strip(v) for k, v in node.items() if k not in ("x-printer-column", "nullable")}


def status_schema() -> dict[str, Any]:
    raw = RunStatus.model_json_schema(by_alias=True)
    return _strip(_resolve(raw, raw.get("$defs", {})))


def spec_schema() -> dict[str, Any]:
    raw = RunSpec.model_json_schema(by_alias=True)
    defs = raw.get("$defs", {})
    schema = _resolve(raw, defs)
    schema["description"] = "FlowDPORun spec: one Flow-DPO training run (see flowdpo/spec/)."
    return schema


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": "flowdporun",
                "shortNames": ["fdr"],
                "categories": ["flowdpo"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# GENERATED by `python -m flowdpo_operator.crd --write` from flowdpo/spec/ - do not edit; CI checks it is current.\n"

# The committed copies: the CRD itself, and the Helm chart's crds/ folder (Helm cannot read files outside
# the chart, and a symlink would not survive `helm package`).
ROOT = Path(__file__).resolve().parents[2]  # the repository (operator/flowdpo_operator/crd.py)
CRD_FILES = (ROOT / "crds" / "flowdporun.yaml", ROOT / "charts" / "flowdpo" / "crds" / "flowdporun.yaml")


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--write"]:
        text = render()
        for path in CRD_FILES:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
        return 0
    if args:
        print("usage: python -m flowdpo_operator.crd [--write]   (no flag: print the CRD)", file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
