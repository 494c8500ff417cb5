"""Step 2 of `flowdpo compile`: SFT one LoRA model per trace source (paper: "compile" into a single model).

Identical for every source: the base model, the LoRA initialisation (seeded), the hyperparameters
(`compile.sft`: r16/alpha16/dropout 0.05 on all linear layers, lr 2e-4, 3 epochs, warmup 0.1, batch 16,
gradient accumulation 2, clipping 1.0) and the prompt: the Answer LLM's system prompt + the question as a
chat, the trace as the assistant's reply. trl's `SFTTrainer` on a conversational prompt-completion dataset
computes the loss on the completion only (the assistant's reply and its end-of-turn token).

Outputs: compile/sft/<source>/ (a peft folder) and then compile/sft/<source>.json (the training log, written
last: a source whose log exists and matches the current traces and hyperparameters is skipped on rerun).
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from flowdpo.compile.common import CompileError, fingerprint
from flowdpo.compile.traces import check_equal_data
from flowdpo.names import COMPILE_SOURCES
from flowdpo.spec import RunDocument
from flowdpo.storage import ObjectStore, RunLayout

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"


def sft_rows(traces: Sequence[dict], system_prompt: str) -> list[dict]:
    """Conversational prompt-completion rows (trl): the same system prompt for every source."""
    return [
        {
            "prompt": [
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": t["question"]},
            ],
            "completion": [{"role": "assistant", "content": t["trace"]}],
        }
        for t in traces
    ]


def _hyperparameters(doc: RunDocument) -> dict[str, Any]:
    return {
        "sft": doc.spec.compile.sft.model_dump(mode="json", by_alias=True),
        "systemPrompt": doc.spec.flow.answer_system_prompt,
        "model": doc.spec.model.model_dump(mode="json"),
        "seed": doc.spec.seed,
    }


def train_one(
    doc: RunDocument, source: str, traces: Sequence[dict], *, gradient_checkpointing: bool = True
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Train a fresh LoRA on `traces`; returns (peft folder files, training log).

    `gradient_checkpointing` trades compute for memory and changes no result (tested); off only to show that."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from trl import SFTConfig, SFTTrainer

    from flowdpo.models import load_base_model
    from flowdpo.train.adapters import adapter_files, lora_config

    spec = doc.spec
    sft = spec.compile.sft
    model, tok = load_base_model(spec.model, spec.device)
    torch.manual_seed(spec.seed)  # the same LoRA initialisation for every source
    model = get_peft_model(model, lora_config(sft.lora), adapter_name=ADAPTER_NAME)
    cuda = next(model.parameters()).device.type == "cuda"
    bf16 = cuda and next(model.parameters()).dtype == torch.bfloat16
    rows = sft_rows(traces, spec.flow.answer_system_prompt)
    with tempfile.TemporaryDirectory(prefix="flowdpo-sft-") as out:
        args = SFTConfig(
            output_dir=out,
            learning_rate=sft.learning_rate,
            num_train_epochs=sft.epochs,
            max_steps=sft.max_steps if sft.max_steps is not None else -1,
            warmup_steps=sft.warmup_ratio,  # a float in [0, 1) is a ratio of all steps
            lr_scheduler_type="linear",
            optim="adamw_torch",
            weight_decay=sft.weight_decay,
            per_device_train_batch_size=sft.batch_size,
            gradient_accumulation_steps=sft.gradient_accumulation,
            max_grad_norm=sft.grad_clip,
            max_length=sft.max_length,
            completion_only_loss=True,
            packing=False,
            # Recompute each layer's activations in the backward pass instead of keeping them all: the same
            # gradients (the recomputed forward is the same computation, and torch restores the RNG state, so
            # LoRA dropout draws the same masks) in a fraction of the memory. Measured on CPU: SFT of the 0.5B
            # model at batch 16 on ~400-token traces kept 20-24 GB of activations without it (killed for memory
            # on a 24 GB machine); with it the 32 longest traces of that run peaked at 10.2 GB.
            # Non-reentrant: works with frozen inputs (LoRA) and without input grads.
            gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
            bf16=bf16,
            fp16=False,
            use_cpu=not cuda,
            seed=spec.seed,
            data_seed=spec.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
        )
        t0 = time.monotonic()
        result = trainer.train()
        seconds = time.monotonic() - t0
        history = [
            {"step": h["step"], "loss": h["loss"]}
            for h in trainer.state.log_history
            if "loss" in h and "step" in h
        ]
    files = adapter_files(model, ADAPTER_NAME)
    train_log = {
        "source": source,
        "run": doc.name,
        "traces": len(traces),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "trainLoss": result.training_loss,
        "losses": history,
        "seconds": round(seconds, 1),
        "device": "cuda" if cuda else "cpu",
        "hyperparameters": _hyperparameters(doc),
    }
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return files, train_log


def train_all(
    doc: RunDocument, store: ObjectStore, sources: Sequence[str] = COMPILE_SOURCES
) -> dict[str, dict]:
    """SFT a model on each source's kept traces (skipping sources already trained on the same data)."""
    traces = {}
    for s in sources:
        if not store.exists(RunLayout.compile_traces(s)):
            raise CompileError(f"{store.uri}: no {RunLayout.compile_traces(s)}; generate the traces first")
        traces[s] = store.get_jsonl(RunLayout.compile_traces(s))
    kept = check_equal_data(traces)  # never train on unequal data
    if not kept:
        raise CompileError("no kept traces to train on")
    hp = _hyperparameters(doc)
    logs: dict[str, dict] = {}
    for s in sources:
        digest = fingerprint(traces[s])
        old = store.get_json_or(RunLayout.sft_log(s))
        if old is not None and old.get("tracesFingerprint") == digest and old.get("hyperparameters") == hp:
            log.info("sft %s: already trained on these traces, skipped", s)
            logs[s] = old
            continue
        files, train_log = train_one(doc, s, traces[s])
        train_log["tracesFingerprint"] = digest
        for name, blob in files.items():
            store.put(f"{RunLayout.sft_adapter(s)}/{name}", blob)
        store.put_json(RunLayout.sft_log(s), train_log)  # last: marks the adapter complete
        logs[s] = train_log
    return logs
