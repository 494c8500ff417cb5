"""Step 2 of `flowdpo compile`: SFT one LoRA model per trace source (paper: "compile" into a single model).

Identical for every source: the base model, the LoRA initialisation (seeded), the hyperparameters
(`compile.sft`: r16/alpha16/dropout 0.05 on all linear layers, lr 2e-4, 3 epochs, warmup 0.1, batch 16,
gradient accumulation 2, clipping 1.0) and the prompt: the Answer LLM's system prompt + the question as a
chat, the trace as the assistant's reply. trl's `SFTTrainer` on a conversational prompt-completion dataset
computes the loss on the completion only (the assistant's reply and its end-of-turn token).

Outputs: compile/sft/<source>/ (a peft folder) and then compile/sft/<source>.json (the training log, written
last: a source whose log exists and matches the current traces and hyperparameters is skipped on rerun).

An SFT can take hours (on a CPU, or a large model on a preemptible GPU node): every
FLOWDPO_SFT_CHECKPOINT_SECONDS (300 s) of training it saves a checkpoint -- adapter, optimizer, scheduler, RNG
states, trainer state -- to compile/sft/<source>.checkpoint/, and a rerun resumes from it when it was made
from the same traces and hyperparameters: the resumed SFT learns exactly what an uninterrupted one learns
(tested). The checkpoint is removed once the adapter and its log are stored.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowdpo.compile.common import CompileError, fingerprint
from flowdpo.compile.traces import check_equal_data
from flowdpo.envvars import env_number
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


class SFTCheckpoints:
    """One source's SFT checkpoints in the run's storage: `LATEST.json` ({"step", "fingerprint"}) names the
    folder `step-NNNNNN/` of the newest complete one; the pointer is written after the folder, and older folders
    are deleted after the pointer, so an interruption at any point leaves a usable checkpoint or none."""

    def __init__(self, store: ObjectStore, source: str, fingerprint: str, every_seconds: float | None = None):
        self.store, self.fingerprint = store, fingerprint
        self.prefix = RunLayout.sft_checkpoint(source)
        self.pointer = f"{self.prefix}/LATEST.json"
        self.every_seconds = (
            env_number("FLOWDPO_SFT_CHECKPOINT_SECONDS", 300.0, positive=True) if every_seconds is None else every_seconds
        )

    def _folder(self, step: int) -> str:
        return f"{self.prefix}/step-{step:06d}"

    def restore(self, into: Path) -> Path | None:
        """Download the newest checkpoint of the same traces and hyperparameters into `into`; None if none."""
        latest = self.store.get_json_or(self.pointer)
        if not isinstance(latest, dict) or latest.get("fingerprint") != self.fingerprint:
            return None  # none, or made from other traces / settings: start afresh
        step = latest.get("step")
        folder = into / f"checkpoint-{step}"
        try:
            self.store.get_folder(self._folder(int(step)), folder)
        except (KeyError, TypeError, ValueError):
            log.warning("%s/%s names a checkpoint that is not there; training from the start", self.store.uri, self.pointer)
            return None
        return folder

    def save(self, folder: Path, step: int) -> None:
        self.store.put_folder(self._folder(step), folder)
        self.store.put_json(self.pointer, {"step": step, "fingerprint": self.fingerprint})
        keep = self._folder(step) + "/"
        for key in self.store.list(self.prefix + "/"):
            if key != self.pointer and not key.startswith(keep):
                self.store.delete(key)

    def clear(self) -> None:
        for key in self.store.list(self.prefix + "/"):
            if key != self.pointer:
                self.store.delete(key)
        self.store.delete(self.pointer)


def train_one(
    doc: RunDocument,
    source: str,
    traces: Sequence[dict],
    *,
    gradient_checkpointing: bool = True,
    checkpoints: SFTCheckpoints | None = None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Train a fresh LoRA on `traces` (or resume it from `checkpoints`); returns (peft folder files, training log).

    `gradient_checkpointing` trades compute for memory and changes no result (tested); off only to show that."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import TrainerCallback
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
            save_strategy="no",  # checkpoints are asked for by time (_SaveEvery below), not by step count
            save_total_limit=1,
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        callbacks = []
        resume = None
        if checkpoints is not None:

            class _SaveEvery(TrainerCallback):
                """Ask for a checkpoint after a step once `every_seconds` have passed; copy it to storage."""

                last = time.monotonic()

                def on_step_end(self, args, state, control, **kwargs):
                    due = time.monotonic() - self.last >= checkpoints.every_seconds
                    if due and state.global_step < state.max_steps:
                        control.should_save = True
                    return control

                def on_save(self, args, state, control, **kwargs):
                    checkpoints.save(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)
                    self.last = time.monotonic()
                    return control

            callbacks.append(_SaveEvery())
            resume = checkpoints.restore(Path(out) / "restored")
            if resume is not None:
                log.info("sft %s: resuming from %s", source, resume.name)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=callbacks
        )
        t0 = time.monotonic()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
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
        "seconds": round(seconds, 1),  # of this process: after a resume, the time since it
        "resumedFromStep": int(resume.name.split("-")[-1]) if resume is not None else None,
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
        checkpoints = SFTCheckpoints(store, s, fingerprint({"traces": digest, "hyperparameters": hp}))
        files, train_log = train_one(doc, s, traces[s], checkpoints=checkpoints)
        train_log["tracesFingerprint"] = digest
        for name, blob in files.items():
            store.put(f"{RunLayout.sft_adapter(s)}/{name}", blob)
        store.put_json(RunLayout.sft_log(s), train_log)  # last: marks the adapter complete
        checkpoints.clear()
        logs[s] = train_log
    return logs
