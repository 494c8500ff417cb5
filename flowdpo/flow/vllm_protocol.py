"""What goes over the wire to a vLLM OpenAI-compatible server and how its answers are read (the request
bodies and response parsing `flowdpo.flow.vllm_backend.VLLMBackend` uses; verified against vLLM 0.32 in
tests/integration/test_vllm_backend.py). No I/O here."""

from __future__ import annotations

import math

import httpx


class VLLMError(RuntimeError):
    """The vLLM server refused a request or could not be reached."""


class VLLMUnavailable(VLLMError):
    """The server did not answer (connection refused, reset, timeout) within the retry budget."""


class VLLMAdapterError(VLLMError):
    """The server could not load a LoRA adapter (missing folder, rank above --max-lora-rank, ...)."""


def sampling_body(eos_ids: frozenset[int], max_new_tokens: int, temperature: float, top_p: float) -> dict:
    """A chunk request: sampling pinned explicitly so the server's generation-config defaults never change
    the distribution; token ids back (`return_token_ids`), stopping on the flow's EOS ids."""
    return {
        "max_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p if temperature > 0 else 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop_token_ids": sorted(eos_ids),
        "ignore_eos": False,
        "return_token_ids": True,
    }


def logprob_body(token_ids: list[int]) -> dict:
    """A next-token log-prob request: the raw log-softmax of exactly `token_ids`, keyed "token_id:N"."""
    return {
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": 1,
        "logprob_token_ids": sorted(set(token_ids)),
        "return_tokens_as_token_ids": True,
    }


def chunk_ids(choice: dict, eos_ids: frozenset[int]) -> list[int]:
    """The generated ids of one choice, ending at (and including) the first EOS."""
    return cut_at_eos([int(t) for t in choice["token_ids"]], eos_ids)


def choice_logprobs(choice: dict, token_ids: list[int], url: str) -> list[float]:
    """The log-probs of `token_ids` (in that order) from one choice of a `logprob_body` request."""
    top = (choice.get("logprobs") or {}).get("top_logprobs") or [None]
    row = top[0] or {}
    try:
        return [as_float(row[f"token_id:{t}"]) for t in token_ids]
    except KeyError as e:
        raise VLLMError(f"vLLM at {url} returned no log-prob for token {e} (got {sorted(row)})") from None


def cut_at_eos(tokens: list[int], eos_ids: frozenset[int]) -> list[int]:
    for j, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: j + 1]
    return tokens


def as_float(x) -> float:
    if x is None:
        return -math.inf
    if isinstance(x, dict):  # {"logprob": ...} in some response shapes
        x = x.get("logprob")
    return float(x) if x is not None else -math.inf


def error_message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except ValueError:
        pass
    return r.text[:500]
