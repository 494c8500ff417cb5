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


def adapters_per_context(adapter, n: int) -> list[str | None]:
    """`adapter` as one entry per context (a single name or None applies to all)."""
    if isinstance(adapter, (list, tuple)):
        if len(adapter) != n:
            raise ValueError(f"{len(adapter)} adapters for {n} contexts")
        return list(adapter)
    return [adapter] * n


def by_adapter(adapter, n: int) -> dict[str | None, list[int]]:
    """Context indices grouped by the adapter they run under, in first-seen order."""
    groups: dict[str | None, list[int]] = {}
    for i, a in enumerate(adapters_per_context(adapter, n)):
        groups.setdefault(a, []).append(i)
    return groups


class GenerationBackend(Protocol):
    # Tokens generated so far by this backend (live progress: tokens/s).
    tokens_generated: int

    def versions(self) -> dict[str, int]:
        """Adapter versions currently served, e.g. {"answer": 3, "stop": 2}."""

    def generate(
        self, contexts: list[list[int]], adapter, max_new_tokens: int, temperature: float, top_p: float
    ) -> list[list[int]]:
        """Sample a continuation of each context; each result ends at (and includes) the first EOS.
        `adapter`: "answer", "stop", None (the base model), or a list with one of those per context."""

    def next_token_logprobs(self, contexts: list[list[int]], adapter, token_ids: list[int]) -> list[list[float]]:
        """Log-probabilities of `token_ids` as the next token after each context (the Stop decision);
        `adapter` as for `generate`."""

    def load_adapter(self, name: str, version: int, files: dict[str, bytes]) -> None:
        """Serve `files` (a peft adapter folder: {filename: bytes}) as adapter `name` at `version`;
        requests issued after this call use it."""

    def reset(self) -> None:
        """Start of a unit of work (a shard): drop per-process caches whose state could change what is
        sampled, so that a redone shard samples exactly what its first attempt did."""


class TransformersBackend:
    """Both adapters on one in-process peft model.

    Generation and the Stop decision go through `flowdpo.flow.decoding.Decoder` (prefix KV cache, merged
    adapter weights, a plain decode loop) when the model's layers are all full attention; other models
    (sliding-window or hybrid layers) fall back to `model.generate()` on left-padded, length-sorted batches.
    `versions` name the weights each adapter has now: the in-process trainer updates them in place and
    calls `set_versions`, which drops what was cached for the old weights."""

    def __init__(self, model, tokenizer, eos_ids: frozenset[int], max_batch: int = 64, fast: bool | None = None):
        from flowdpo.flow.decoding import Decoder
        from flowdpo.flow.forward import hf_model, supports_fast_path

        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self._versions: dict[str, int] = {"answer": 0, "stop": 0}
        self._fallback_tokens = 0
        if fast is None:
            fast = supports_fast_path(hf_model(model))
        self.decoder = Decoder(model, eos_ids, tokenizer.pad_token_id, max_batch=max_batch) if fast else None

    @property
    def tokens_generated(self) -> int:
        return self._fallback_tokens + (self.decoder.tokens_generated if self.decoder else 0)

    def versions(self) -> dict[str, int]:
        return {k: v for k, v in self._versions.items() if k in ("answer", "stop")}

    def set_versions(self, versions: dict[str, int]) -> None:
        """The in-process trainer updated the shared model's weights itself: record the versions and
        forget merged weights and cached keys/values of every adapter whose version changed."""
        for name, v in versions.items():
            if self._versions.get(name) != v and self.decoder is not None:
                self.decoder.invalidate(name)
            self._versions[name] = v

    def load_adapter(self, name: str, version: int, files: dict[str, bytes]) -> None:
        from flowdpo.train.adapters import load_adapter_weights

        load_adapter_weights(self.model, name, files["adapter_model.safetensors"])
        self._versions[name] = version
        if self.decoder is not None:
            self.decoder.invalidate(name)

    def reset(self) -> None:
        """Forget cached keys/values, so that what follows computes exactly as in a fresh process (a redone
        shard samples the same tokens as the first attempt did)."""
        if self.decoder is not None:
            self.decoder.reset()

    def _modes(self, adapter, n: int) -> list[tuple[str | None, int]]:
        return [(a, self._versions.get(a, 0) if a is not None else 0) for a in adapters_per_context(adapter, n)]

    def generate(self, contexts, adapter, max_new_tokens, temperature, top_p):
        if self.decoder is not None:
            modes = self._modes(adapter, len(contexts))
            return self.decoder.generate(contexts, modes, max_new_tokens, temperature, top_p)
        return self._per_adapter(self._generate_hf, contexts, adapter, max_new_tokens, temperature, top_p)

    def next_token_logprobs(self, contexts, adapter, token_ids):
        if self.decoder is not None:
            return self.decoder.next_token_logprobs(contexts, self._modes(adapter, len(contexts)), token_ids)
        return self._per_adapter(self._next_token_logprobs_hf, contexts, adapter, token_ids)

    @staticmethod
    def _per_adapter(call, contexts, adapter, *args):
        out: list = [None] * len(contexts)
        for a, idx in by_adapter(adapter, len(contexts)).items():
            for i, r in zip(idx, call([contexts[i] for i in idx], a, *args)):
                out[i] = r
        return out

    # -- the fallback for models the decoder does not cover ----------------------------------------------
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
    def _generate_hf(self, contexts, adapter, max_new_tokens, temperature, top_p):
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
                    self._fallback_tokens += len(out[i])
        self.model.train(was_training)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _next_token_logprobs_hf(self, contexts, adapter, token_ids):
        from flowdpo.flow.forward import causal_lm_logits

        out: list[list[float] | None] = [None] * len(contexts)
        was_training = self.model.training
        self.model.eval()
        with self._adapter(adapter):
            for idx in self._batches(contexts):
                ids, mask = self._pad([contexts[i] for i in idx])
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = causal_lm_logits(self.model, ids, mask, pos, keep=1)
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
