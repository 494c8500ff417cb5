"""The names every part of flowdpo shares, defined once: the flow's adapters, the run phases, the compile
step's trace sources and the rows of the compile table. Stored objects and metrics use these exact strings,
so changing one is a format change."""

from __future__ import annotations

# The flow's two LoRA adapters on one base model (pairs, adapter folders, metrics' `adapter` label).
ANSWER, STOP = "answer", "stop"
ADAPTERS = (ANSWER, STOP)

# A run's phase (FlowDPORun status.phase, the flowdpo_run_phase metric, progress.json "phase").
PHASES = ("Pending", "Preparing", "Training", "Compiling", "Succeeded", "Failed")

# How a flow's main chain can end (flowdpo/flow/engine.py END_*; results' "endReason", the
# flowdpo_flow_ends_total metric's `reason`): the Answer LLM's EOS, the Stop LLM's yes, the token budget.
MAIN_CHAIN_ENDS = ("eos", "stop", "max_chunks")

# Trace sources of the compile step (paper Table 1 rows): dataset solutions, base model, trained flow.
COMPILE_SOURCES = ("ground-truth", "self-generated", "flow-generated")
SOURCE_LABELS = {
    "ground-truth": "SFT (ground truth)",
    "self-generated": "SFT (self-generated)",
    "flow-generated": "SFT (flow-generated)",
}

# Rows of the compile table (eval/table.json): the 0-shot model, one SFT model per source, the flow itself
# (compile.evaluation.flowRows) and the 0-shot model decoded like the flow (its sampling and token budget).
ZERO_SHOT = "zero-shot"
FLOW_TRAINED, FLOW_UNTRAINED = "flow-trained", "flow-untrained"
ZERO_SHOT_SAMPLED = "zero-shot-sampled"
SFT_FLOW_ROW = "sft-flow-generated"


def sft_row(source: str) -> str:
    return f"sft-{source}"
