"""Generation backends: the flow engine talks to the models only through `GenerationBackend`.

A backend serves the two adapters of the flow (`"answer"`, `"stop"`) and the bare base model
(`adapter=None`, used for the untrained-flow and zero-shot baselines), works on token ids, and reports
which adapter versions it is serving so every outcome and pair records its lineage.

`TransformersBackend` runs in-process on one peft model holding both adapters (CPU or GPU). The vLLM
backend (HTTP, runtime LoRA loading) implements the same protocol.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch


class GenerationBackend(Protocol):
    def versions(self) -> dict[str, int]:
        """Adapter versions currently served, e.g. {"answer": 3, "stop": 2}."""

    def generate(
        self, contexts: list[list[int]], adapter: str | None, max_new_tokens: int, temperature: float, top_p: float
    ) -> list[list[int]]:
        """Sample a continuation of each context; each result ends at (and includes) the first EOS."""

    def next_token_logprobs(self, contexts: list[list[int]], adapter: str | None, token_ids: list[int]) -> list[list[float]]:
        """Log-probabilities of `token_ids` as the next token after each context (the Stop decision)."""

    def load_adapter(self, name: str, version: int, files: dict[str, bytes]) -> None:
        """Serve `files` (a peft adapter folder: {filename: bytes}) as adapter `name` at `version`;
        requests issued after this call use it."""


class TransformersBackend:
    """Both adapters on one in-process peft model; batches are left-padded and length-sorted."""

    def __init__(self, model, tokenizer, eos_ids: frozenset[int], max_batch: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self._versions = {"answer": 0, "stop": 0}
        self.tokens_generated = 0

    def versions(self) -> dict[str, int]:
        return dict(self._versions)

    def set_versions(self, versions: dict[str, int]) -> None:
        """The in-process trainer updated the shared model's weights itself: only record the versions."""
        self._versions.update(versions)

    def load_adapter(self, name: str, version: int, files: dict[str, bytes]) -> None:
        from flowdpo.train.adapters import load_adapter_weights

        load_adapter_weights(self.model, name, files["adapter_model.safetensors"])
        self._versions[name] = version

    @contextlib.contextmanager
    def _adapter(self, adapter: str | None):
        if adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    def _pad(self, contexts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(c) for c in contexts)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for i, c in enumerate(contexts):
            ids[i, width - len(c) :] = torch.tensor(c, dtype=torch.long)
            mask[i, width - len(c) :] = 1
        dev = self.model.device
        return ids.to(dev), mask.to(dev)

    def _batches(self, contexts: list[list[int]]):
        order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
        for start in range(0, len(order), self.max_batch):
            yield order[start : start + self.max_batch]

    @torch.no_grad()
    def generate(self, contexts, adapter, max_new_tokens, temperature, top_p):
        out: list[list[int] | None] = [None] * len(contexts)
        was_training = self.model.training
        self.model.eval()
        with self._adapter(adapter):
            for idx in self._batches(contexts):
                ids, mask = self._pad([contexts[i] for i in idx])
                sample = temperature > 0
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=top_p if sample else None,
                    top_k=0 if sample else None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=sorted(self.eos_ids),
                )
                new = gen[:, ids.shape[1] :].tolist()
                for i, toks in zip(idx, new):
                    out[i] = _cut_at_eos(toks, self.eos_ids)
                    self.tokens_generated += len(out[i])
        self.model.train(was_training)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def next_token_logprobs(self, contexts, adapter, token_ids):
        out: list[list[float] | None] = [None] * len(contexts)
        was_training = self.model.training
        self.model.eval()
        with self._adapter(adapter):
            for idx in self._batches(contexts):
                ids, mask = self._pad([contexts[i] for i in idx])
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
                logp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)[:, token_ids]
                for i, row in zip(idx, logp.tolist()):
                    out[i] = row
        self.model.train(was_training)
        return out  # type: ignore[return-value]


def _cut_at_eos(tokens: list[int], eos_ids: frozenset[int]) -> list[int]:
    for j, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: j + 1]
    return tokens
