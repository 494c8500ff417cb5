"""FlowDPORuns in e2e tests: the tiny run document, applying it with kubectl, listing the children the
operator made for it, and recording the phases it went through."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from typing_extensions import Self

from e2e.support.cluster import ControlPlane
from e2e.support.waiting import GROUP, PLURAL, VERSION

RUN_LABEL = "flowdpo.dev/run"
COMPONENT_LABEL = "app.kubernetes.io/component"

# The sizes of tests/conftest.py's tiny run (6 examples in shards of 3), with the short flow of
# tests/model/test_compile.py's compile run (answers of 1-digit products fit in 2 chunks of 6 tokens), and the
# smallest compile that still keeps traces: 8 questions, 2 attempts each, one SFT step, 4 held-out questions.
TINY_SPEC: dict[str, Any] = {
    "model": {"name": "builtin:smollm2-135m-instruct"},
    "flow": {
        "chunkTokens": 16, "maxChunks": 2, "temperature": 0.7,
        "answerSystemPrompt": "You are a helpful math assistant. Reply with the result only.",
        "stopSystemPrompt": "Reply yes or no.",
        "stopUserTemplate": "Question: {problem}\nAnswer: {solution}\nComplete?",
    },
    "training": {"learningRate": 1.0e-3, "beta": 0.5, "batchSize": 4, "microBatchSize": 4},
    "data": {
        "numExamples": 6, "shardSize": 3, "seed": 3,
        "tasks": [{"name": "products", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}],
    },
    "rollout": {"backend": "transformers", "batchExamples": 3, "replicas": 1},
    "baselines": {"untrainedFlow": False, "zeroShot": False},
    "compile": {
        "numQuestions": 8, "samplesPerQuestion": 2, "batchQuestions": 8,
        "sft": {"epochs": 1, "warmupRatio": 0, "batchSize": 4, "gradientAccumulation": 1, "maxLength": 128,
                "maxSteps": 1},
        "evaluation": {"maxNewTokens": 10, "batchSize": 8, "sets": [{"name": "heldout", "numQuestions": 4}]},
    },
    "seed": 1,
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_run(name: str, uri: str, secret: str | None, **overrides: Any) -> dict:
    """A FlowDPORun document of the tiny run storing under `uri`; `overrides` are merged into the spec."""
    spec = _merge(TINY_SPEC, {"storage": {"uri": uri, **({"secretName": secret} if secret else {})}})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FlowDPORun", "metadata": {"name": name},
            "spec": _merge(spec, overrides)}


def kubectl_apply(cp: ControlPlane, namespace: str, doc: dict, folder: Path):
    """`kubectl apply -f FILE` of one document, as a user would; returns the completed process."""
    path = folder / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cp.kubectl("apply", "-n", namespace, "-f", str(path))


def children(api: kubernetes.client.ApiClient, namespace: str, run: str) -> dict[str, list[dict]]:
    """What the operator made for `run`, by kind (ConfigMap, Job, Deployment), as API dicts: selected by the
    run label, so strays with the label (duplicates) show up too."""
    core, batch, apps = (kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api),
                         kubernetes.client.AppsV1Api(api))
    sel = f"{RUN_LABEL}={run}"
    found = {
        "ConfigMap": core.list_namespaced_config_map(namespace, label_selector=sel).items,
        "Job": batch.list_namespaced_job(namespace, label_selector=sel).items,
        "Deployment": apps.list_namespaced_deployment(namespace, label_selector=sel).items,
    }
    # Items of a list carry no `kind`; put it back so each dict reads like `kubectl get -o yaml`.
    return {kind: [{**api.sanitize_for_serialization(o), "kind": kind} for o in items]
            for kind, items in found.items()}


def child_names(api: kubernetes.client.ApiClient, namespace: str, run: str) -> list[str]:
    """Sorted `Kind/name` of every child (the empty list once garbage-collected)."""
    return sorted(f"{k}/{o['metadata']['name']}" for k, objs in children(api, namespace, run).items() for o in objs)


class PhaseRecorder:
    """Watches one FlowDPORun and records each phase it shows, in order (a poll could miss a short one)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, name: str):
        self.api, self.namespace, self.name = api, namespace, name
        self.phases: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"phases-{name}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        custom = kubernetes.client.CustomObjectsApi(self.api)
        while not self._stop.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(
                    custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                    field_selector=f"metadata.name={self.name}", timeout_seconds=5,
                ):
                    phase = (event["object"].get("status") or {}).get("phase")
                    if phase and (not self.phases or self.phases[-1] != phase):
                        self.phases.append(phase)
                    if self._stop.is_set():
                        return
            except kubernetes.client.rest.ApiException:
                self._stop.wait(0.5)
