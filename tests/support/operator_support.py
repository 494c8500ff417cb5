"""Shared helpers of the operator unit tests: run documents and FlowDPORun bodies from spec overrides."""

from __future__ import annotations

import copy
from typing import Any

from flowdpo.spec import API_VERSION, KIND, RunDocument, parse_document
from flowdpo_operator.builders import Owner

NAMESPACE = "team-a"
UID = "3f0e6a55-7d3c-4f5e-9a53-2b1f9c0a1d22"
OWNER = Owner("demo", NAMESPACE, UID)

# What a cluster run minimally needs: shared object storage and its Secret.
BASE_SPEC: dict[str, Any] = {"storage": {"uri": "s3://bucket/runs/{name}", "secretName": "flowdpo-storage"}}


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `patch` into a copy of `base` (a value None deletes the key)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_body(spec_patch: dict[str, Any] | None = None, *, name: str = "demo", generation: int = 1) -> dict[str, Any]:
    """A FlowDPORun object as the API returns it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": UID, "generation": generation},
        "spec": merge(BASE_SPEC, spec_patch or {}),
    }


def run_doc(spec_patch: dict[str, Any] | None = None, *, name: str = "demo") -> RunDocument:
    body = run_body(spec_patch, name=name)
    return parse_document({k: body[k] for k in ("apiVersion", "kind", "spec")} | {"metadata": {"name": name}})
