"""The fast decoder (flowdpo/flow/decoding.py) on the REAL SmolLM2 model, in float32 so that results can be
compared with plain transformers forwards to float precision: prefix-cache hits, rows of different lengths
sharing a batch, merged adapter weights and the decode loop must all give the model's own numbers."""

from __future__ import annotations

import random

import pytest
import torch

from flowdpo.flow.decoding import Decoder
from flowdpo.flow.forward import gqa_attention, sample_tokens
from flowdpo.flow.prefix_cache import PrefixCache

pytestmark = pytest.mark.slow

EOS = frozenset({2})
ANSWER = [("answer", 0)]


@pytest.fixture(scope="module")
def model32():
    from flowdpo.models import load_base_model
    from flowdpo.spec import LoraSpec, ModelSpec
    from flowdpo.train.adapters import attach_adapters

    model, tok = load_base_model(ModelSpec(dtype="float32"))
    model = attach_adapters(model, LoraSpec(), seed=0)
    with torch.no_grad():  # a non-trivial Answer adapter, so merged weights differ from the base
        g = torch.Generator().manual_seed(0)
        for n, p in model.named_parameters():
            if "lora_B" in n and ".answer." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return model, tok


def _contexts(seed=0, n=4):
    rng = random.Random(seed)
    ctxs = [[rng.randrange(100, 20000) for _ in range(rng.randrange(5, 40))] for _ in range(n)]
    ctxs.append(ctxs[0] + [123, 456, 789])  # extends a context: a prefix-cache hit once ctxs[0] ran
    ctxs.append(ctxs[1][:3] + [11])  # shares a short prefix only
    return ctxs


def _reference_logprobs(model, ctx, adapter, ids):
    x = torch.tensor([ctx])
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                logits = model(input_ids=x).logits[0, -1].float()
        else:
            model.set_adapter(adapter)
            logits = model(input_ids=x).logits[0, -1].float()
    return torch.log_softmax(logits, -1)[ids]


@pytest.mark.parametrize("adapter", [None, "answer"])
def test_next_token_logprobs_equal_a_plain_forward_cold_and_from_the_prefix_cache(model32, adapter):
    model, tok = model32
    dec = Decoder(model, EOS, tok.pad_token_id)
    ctxs, ids = _contexts(), list(range(100, 110))
    for attempt in ("cold", "cached"):
        got = dec.next_token_logprobs(ctxs, [(adapter, 0)] * len(ctxs), ids)
        for g, c in zip(got, ctxs):
            assert torch.allclose(torch.tensor(g), _reference_logprobs(model, c, adapter, ids), atol=2e-4), attempt
    assert dec.stats["cached_tokens"] > sum(len(c) for c in ctxs) // 2  # the second pass reused the cache


def test_greedy_generation_equals_transformers_generate(model32):
    model, tok = model32
    dec = Decoder(model, EOS, tok.pad_token_id, max_batch=3)  # several batches, rows finishing at different steps
    ctxs = _contexts(seed=1)
    got = dec.generate(ctxs, [(None, 0)] * len(ctxs), 10, 0.0, 1.0)
    with model.disable_adapter(), torch.no_grad():
        for c, g in zip(ctxs, got):
            ref = model.generate(
                input_ids=torch.tensor([c]), attention_mask=torch.ones(1, len(c), dtype=torch.long),
                max_new_tokens=10, do_sample=False, eos_token_id=sorted(EOS), pad_token_id=tok.pad_token_id,
            )[0, len(c):].tolist()
            cut = next((i + 1 for i, t in enumerate(ref) if t in EOS), len(ref))
            assert g == ref[:cut]


def test_continuing_a_generation_from_the_cache_equals_generating_it_in_one_go(model32):
    model, tok = model32
    ctxs = _contexts(seed=2)[:4]
    one = Decoder(model, EOS, tok.pad_token_id).generate(ctxs, ANSWER * len(ctxs), 12, 0.0, 1.0)
    dec = Decoder(model, EOS, tok.pad_token_id)
    first = dec.generate(ctxs, ANSWER * len(ctxs), 6, 0.0, 1.0)
    rest = dec.generate([c + f for c, f in zip(ctxs, first)], ANSWER * len(ctxs), 6, 0.0, 1.0)
    for o, f, r in zip(one, first, rest):
        joined = f + r if not (f and f[-1] in EOS) else f
        assert joined == o[: len(joined)]
    assert dec.stats["cached_tokens"] >= sum(len(c) + len(f) - 1 for c, f in zip(ctxs, first))


def test_sampling_is_seeded_and_a_reset_decoder_repeats_itself(model32):
    model, tok = model32
    dec = Decoder(model, EOS, tok.pad_token_id)
    ctxs = _contexts(seed=3)

    def run():
        dec.reset()
        torch.manual_seed(7)
        a = dec.generate(ctxs, ANSWER * len(ctxs), 10, 0.9, 0.95)
        b = dec.generate([c + x for c, x in zip(ctxs, a)], ANSWER * len(ctxs), 10, 0.9, 0.95)
        return a, b

    assert run() == run()


def test_new_adapter_version_drops_cached_keys(model32):
    model, tok = model32
    dec = Decoder(model, EOS, tok.pad_token_id)
    ctxs = _contexts(seed=4)
    dec.next_token_logprobs(ctxs, ANSWER * len(ctxs), [5])
    hits = dec.stats["cached_tokens"]
    dec.invalidate("answer")
    dec.next_token_logprobs(ctxs, [("answer", 1)] * len(ctxs), [5])
    assert dec.stats["cached_tokens"] == hits  # nothing of version 0 was reused


def test_rows_of_different_adapters_share_a_batch_and_peft_is_restored(model32):
    """Base, Answer and Stop rows in one call give what each gives alone; afterwards the peft model computes
    exactly as before (the per-row LoRA forward is only installed during a call)."""
    model, tok = model32
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n and ".stop." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    ctxs, ids = _contexts(seed=5), list(range(200, 205))
    modes = [(None, 0), ("answer", 0), ("stop", 0)] * 2
    ctxs = ctxs[: len(modes)] + ctxs[: len(modes) - len(ctxs)]
    x = torch.tensor([ctxs[0]])
    with torch.no_grad():
        model.set_adapter("stop")
        before = model(input_ids=x).logits
    dec = Decoder(model, EOS, tok.pad_token_id)
    got = dec.next_token_logprobs(ctxs, modes, ids)
    for g_, c, (adapter, _) in zip(got, ctxs, modes):
        assert torch.allclose(torch.tensor(g_), _reference_logprobs(model, c, adapter, ids), atol=2e-4), adapter
    with torch.no_grad():
        model.set_adapter("stop")
        assert torch.equal(model(input_ids=x).logits, before)


def test_prefix_cache_longest_prefix_lru_and_superseded_entries():
    cache = PrefixCache(max_bytes=10_000)
    kv = lambda n: torch.zeros((1, 2, 1, n, 4))  # 32 bytes per token
    cache.insert([1, 2, 3], kv(3))
    entry, n = cache.lookup([1, 2, 3, 4])
    assert n == 3 and entry.tokens == [1, 2, 3]
    assert cache.lookup([1, 2, 9])[1] == 2 and cache.lookup([9])[1] == 0
    cache.insert([1, 2, 3, 4, 5], kv(5))  # extends [1, 2, 3]: the shorter entry is dropped
    assert len(cache) == 1 and cache.lookup([1, 2, 3, 4, 5, 6])[1] == 5
    for i in range(400):  # fill past the byte budget: the oldest entries leave first
        cache.insert([1000 + i, 7], kv(2))
    assert cache.bytes <= cache.max_bytes
    assert cache.lookup([1, 2, 3, 4, 5])[1] == 0 and cache.lookup([1399, 7])[1] == 2


def test_sample_tokens_greedy_top_p_and_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    assert sample_tokens(logits, 0.0, 1.0).tolist() == [0, 2]
    torch.manual_seed(0)
    draws = torch.stack([sample_tokens(logits, 1.0, 1.0) for _ in range(4000)])
    freq0 = torch.bincount(draws[:, 0], minlength=3).float() / len(draws)
    assert torch.allclose(freq0, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)
    # top-p 0.6 keeps the smallest set reaching 0.6: tokens 0 and 1 of row 0, token 2 of row 1.
    nucleus = torch.stack([sample_tokens(logits, 1.0, 0.6) for _ in range(500)])
    assert set(nucleus[:, 0].tolist()) == {0, 1} and set(nucleus[:, 1].tolist()) == {2}


def test_gqa_attention_equals_attention_with_repeated_heads():
    torch.manual_seed(0)
    b, h, hkv, q, t, d = 2, 6, 2, 3, 5, 4
    query, key, value = torch.randn(b, h, q, d), torch.randn(b, hkv, t, d), torch.randn(b, hkv, t, d)
    mask = torch.zeros(b, 1, q, t)
    mask[0, :, :, 0] = float("-inf")
    out, _ = gqa_attention(torch.nn.Module(), query, key, value, mask, scaling=0.5)
    rk, rv = key.repeat_interleave(h // hkv, dim=1), value.repeat_interleave(h // hkv, dim=1)
    ref = torch.softmax(query @ rk.transpose(-1, -2) * 0.5 + mask, -1) @ rv
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
