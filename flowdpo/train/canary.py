"""Adapter arrival, verified: a canary published with every adapter version and checked by every worker on
its own server after each load.

Trainer side (`expected`): with the version just trained, the next-token log-probs of the `CANARY_TOKENS`
most likely tokens after a fixed context (the Answer prompt of `CANARY_QUESTION` for the Answer adapter, the
Stop prompt with `CANARY_PARTIAL` for the Stop adapter), written as `canary.json` into the version's folder
next to the peft files.

Worker side (`check`): right after `load_adapter`, the same log-probs from the backend under the adapter's
new version; the largest absolute difference is the canary's deviation, and the version counts as arrived
when it is within `TOLERANCE`. A server that kept serving an older version (a load that silently did not
take, a replica behind the rest) is off by what one training step moved those log-probs; two engines in
bf16 on the same weights differ by rounding only (tests/integration/test_vllm_backend.py: a few hundredths
on likely tokens). The deviation is exported per adapter (`flowdpo_adapter_canary_deviation`), and the
result goes into the run's storage (`RunLayout.adapter_check`), from where progress.json's
`adaptersInSync` and the operator's `AdaptersInSync` condition are built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flowdpo.flow.prompts import PromptBuilder

CANARY_FILE = "canary.json"
CANARY_QUESTION = "Canary check: what is 17 + 25?"
CANARY_PARTIAL = "17 + 25 = 42."
CANARY_TOKENS = 5
# Largest |log-prob difference| accepted between the trainer's values (its own engine, float32 LoRA on bf16
# weights) and the server's (bf16 LoRA) on the most likely tokens of the canary context.
TOLERANCE = 0.15


def context(prompts: PromptBuilder, adapter: str) -> list[int]:
    if adapter == "stop":
        return prompts.stop_prompt(CANARY_QUESTION, CANARY_PARTIAL)
    return prompts.answer_prompt(CANARY_QUESTION)


def expected(model, prompts: PromptBuilder, adapter: str, version: int) -> bytes:
    """canary.json for `adapter` at `version` as the in-process peft model computes it now."""
    import torch

    ctx = context(prompts, adapter)
    was_training = model.training
    active = model.active_adapter
    model.eval()
    try:
        model.set_adapter(adapter)
        with torch.no_grad():
            ids = torch.tensor([ctx], device=next(model.parameters()).device)
            logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(lp, CANARY_TOKENS)
    finally:
        model.set_adapter(active)
        model.train(was_training)
    data = {
        "adapter": adapter,
        "version": version,
        "contextIds": ctx,
        "tokenIds": [int(t) for t in top.indices],
        "logprobs": [round(float(x), 5) for x in top.values],
        "tolerance": TOLERANCE,
    }
    return (json.dumps(data) + "\n").encode()


@dataclass(frozen=True)
class CanaryCheck:
    adapter: str
    version: int
    deviation: float  # max |served - expected| over the canary tokens
    tolerance: float

    @property
    def arrived(self) -> bool:
        return self.deviation <= self.tolerance

    def record(self) -> dict:
        return {"adapter": self.adapter, "version": self.version, "deviation": round(self.deviation, 4),
                "tolerance": self.tolerance, "arrived": self.arrived}  # fmt: skip


def check(backend, adapter: str, version: int, canary_bytes: bytes) -> CanaryCheck:
    """Ask `backend` (serving `adapter` at `version` now) for the canary's log-probs and compare."""
    try:
        data = json.loads(canary_bytes)
        ctx, tokens, want = data["contextIds"], data["tokenIds"], data["logprobs"]
        tolerance = float(data.get("tolerance", TOLERANCE))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"adapter {adapter} v{version}: {CANARY_FILE} is not a canary ({e})") from None
    if data.get("adapter") != adapter or data.get("version") != version:
        raise ValueError(
            f"adapter {adapter} v{version}: {CANARY_FILE} is for {data.get('adapter')} v{data.get('version')}"
        )
    got = backend.next_token_logprobs([ctx], adapter, tokens)[0]
    return CanaryCheck(adapter, version, max(abs(g - w) for g, w in zip(got, want)), tolerance)
