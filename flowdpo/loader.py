"""Every model a flowdpo process runs, loaded in one place: the tokenizer, the flow's policy (base model +
Answer and Stop adapters), adapter versions fetched from the run's store, the generation backend, and the
compile step's SFT models. Callers (the local runner, the worker and trainer programs, the signal check,
compile and eval) ask for what they need here instead of assembling it themselves.

Heavy libraries are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowdpo.flow.prompts import PromptBuilder
from flowdpo.names import ADAPTERS
from flowdpo.spec import RunDocument, RunSpec
from flowdpo.storage import CorruptObjectError, ObjectStore, RunLayout

# The files of a peft adapter folder the backends read.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class BackendError(RuntimeError):
    """The configured generation backend cannot be used."""


@dataclass
class Policy:
    """The flow's model: one base model carrying both LoRA adapters, its tokenizer and its prompts."""

    model: Any
    tokenizer: Any
    prompts: PromptBuilder


def load_policy(spec: RunSpec) -> Policy:
    """The base model with the Answer and Stop adapters attached (seeded initialisation: LoRA B = 0)."""
    from flowdpo.models import load_base_model
    from flowdpo.train.adapters import attach_adapters

    model, tok = load_base_model(spec.model, spec.device)
    model = attach_adapters(model, spec.lora, spec.seed)
    return Policy(model, tok, PromptBuilder(tok, spec.flow))


def transformers_backend(policy: Policy, max_batch: int):
    from flowdpo.flow.backend import TransformersBackend

    return TransformersBackend(policy.model, policy.tokenizer, policy.prompts.eos_ids, max_batch=max_batch)


def rollout_batch(spec: RunSpec) -> int:
    """Rows one rollout batch holds: the main chains and their rollouts of `rollout.batchExamples` examples."""
    return spec.rollout.batch_examples * 4


def fetch_adapter(store: ObjectStore, adapter: str, version: int) -> dict[str, bytes] | None:
    """The stored folder of one adapter version as {filename: bytes}; None when it is incomplete."""
    files = store.get_files(RunLayout.adapter(adapter, version))
    return files if all(f in files for f in ADAPTER_FILES) else None


def latest_versions(store: ObjectStore) -> dict[str, int]:
    """The adapter versions adapters/LATEST.json names (0 for an adapter not published yet)."""
    latest = store.get_json_or(RunLayout.adapters_latest) or {}
    if not isinstance(latest, dict) or not all(
        type(latest.get(a, 0)) is int and latest.get(a, 0) >= 0 for a in ADAPTERS
    ):
        raise CorruptObjectError(
            f"{store.uri}/{RunLayout.adapters_latest}", 'not an adapter version pointer ({"answer": N, "stop": M})'
        )
    return {a: latest.get(a, 0) for a in ADAPTERS}


def load_latest_adapters(backend, store: ObjectStore) -> dict[str, int]:
    """Load the adapter versions named by adapters/LATEST.json into `backend`; returns the versions served."""
    latest = latest_versions(store)
    for name in ADAPTERS:
        version = latest[name]
        if version > 0:
            files = fetch_adapter(store, name, version)
            if files is None:
                raise FileNotFoundError(f"adapter {name} v{version}: {RunLayout.adapter(name, version)} is incomplete")
            backend.load_adapter(name, version, files)
    return backend.versions()


def inference_dtype(model) -> None:
    """Inference only: LoRA weights in the base model's dtype (peft keeps them in float32 for training).
    A float32 LoRA next to bf16 weights costs a cast and a slow matmul per layer (2x the time on a CPU);
    vLLM serves LoRA in the model dtype too."""
    model.to(model.get_input_embeddings().weight.dtype)
    model.eval()


def load_trained_flow(doc: RunDocument, store: ObjectStore, max_batch: int, *, cast_lora: bool):
    """(backend, prompts): the flow with the run's adapters at adapters/LATEST.json. `cast_lora` puts the
    LoRA weights in the model's dtype (the compile step's traces; eval keeps them in float32)."""
    policy = load_policy(doc.spec)
    backend = transformers_backend(policy, max_batch)
    load_latest_adapters(backend, store)
    if cast_lora:
        inference_dtype(policy.model)
    return backend, policy.prompts


def load_sft_models(doc: RunDocument, store: ObjectStore, sources: Sequence[str]):
    """(backend, prompts): the base model with each compile source's SFT adapter as `sft-<source>`. With no
    source, a zero adapter, so that the 0-shot row can run under `disable_adapter()`."""
    from peft import PeftModel, get_peft_model

    from flowdpo.models import load_base_model
    from flowdpo.names import sft_row
    from flowdpo.train.adapters import lora_config

    spec = doc.spec
    model, tok = load_base_model(spec.model, spec.device)
    with tempfile.TemporaryDirectory(prefix="flowdpo-eval-") as tmp:
        for i, s in enumerate(sources):
            folder = store.get_folder(RunLayout.sft_adapter(s), Path(tmp) / s)
            if i == 0:
                model = PeftModel.from_pretrained(model, str(folder), adapter_name=sft_row(s))
            else:
                model.load_adapter(str(folder), adapter_name=sft_row(s))
    if not sources:
        model = get_peft_model(model, lora_config(spec.compile.sft.lora))
    inference_dtype(model)
    prompts = PromptBuilder(tok, spec.flow)
    return transformers_backend(Policy(model, tok, prompts), spec.compile.evaluation.batch_size), prompts


def make_backend(
    spec: RunSpec,
    *,
    vllm_url: str | None = None,
    adapter_dir: str | None = None,
    server_adapter_dir: str | None = None,
):
    """(backend, prompts) for `spec.rollout.backend`: in-process transformers + peft, or a vLLM server."""
    if spec.rollout.backend == "transformers":
        policy = load_policy(spec)
        return transformers_backend(policy, rollout_batch(spec)), policy.prompts
    if spec.rollout.backend == "vllm":
        try:
            vllm_backend = importlib.import_module("flowdpo.flow.vllm_backend")
        except ModuleNotFoundError as e:
            if e.name not in ("flowdpo.flow.vllm_backend", "httpx"):
                raise
            raise BackendError(
                "spec.rollout.backend is 'vllm' but the vLLM backend is not available in this installation "
                f"({e}); use rollout.backend: transformers"
            ) from None
        from flowdpo.models import load_tokenizer, resolve_model_path

        model_path = resolve_model_path(spec.model)
        prompts = PromptBuilder(load_tokenizer(spec.model, model_path), spec.flow)
        url = vllm_url or os.environ.get("FLOWDPO_VLLM_URL", "http://127.0.0.1:8000")
        backend = vllm_backend.VLLMBackend(
            url,
            prompts.eos_ids,
            adapter_dir or os.environ.get("FLOWDPO_ADAPTER_DIR"),
            model_path=model_path,
            lora=spec.lora,
            server_adapter_dir=server_adapter_dir or os.environ.get("FLOWDPO_SERVER_ADAPTER_DIR"),
            max_concurrency=max(64, spec.rollout.in_flight),  # one connection per in-flight request chain
        )
        backend.wait_ready()
        return backend, prompts
    raise BackendError(f"spec.rollout.backend: unknown backend {spec.rollout.backend!r}")
