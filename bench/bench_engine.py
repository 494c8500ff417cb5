"""Benchmark (not a test): the flow engine's throughput against a naive reference implementation of the same
algorithm, and how time per example grows with the number and size of chunks. Measured in ONE run.

    python bench/bench_engine.py                   # 16 examples of the quickstart spec, ~10-15 min on 2 cores
    python bench/bench_engine.py --examples 8 --scaling-examples 4      # quicker

1. Engine vs naive, on the same examples, with the same model and adapters:
   - engine: `rollout_examples` (flowdpo/flow/rollouts.py): the main chains of a batch of examples advance
     together, then all their node rollouts, through `run_flows` (ONE batched Answer call and ONE batched Stop
     call per step for every flow that needs one);
   - naive: `naive_rollouts` below: the same algorithm written the obvious way, one flow at a time and one
     `generate` / Stop call per node, no batching.
   The two alternate batch by batch, so a change in the machine's background load hits both alike.
   Reported: examples/hour of each and the ratio, plus generate calls and tokens per example (the two
   implementations sample different tokens, so tokens per example are shown to make the comparison honest).
2. Scaling (engine only): seconds per example for flow.maxChunks in {2, 4, 8} at the spec's chunkTokens,
   and for flow.chunkTokens in {12, 24, 48} at the spec's maxChunks; main chain + one rollout per node, as in
   training. The Stop LLM is forced to say "no", so flows go on until maxChunks unless the Answer LLM ends its
   answer (an empty chunk); the actual chunks and tokens generated are reported with each point.

Writes bench/results/engine.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from flowdpo.data import Example, load_examples
from flowdpo.flow.backend import TransformersBackend
from flowdpo.flow.engine import FlowState, _after_chunk, _stop_probability, apply_decision
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import branches_of, main_state, rollout_examples
from flowdpo.models import load_base_model
from flowdpo.spec import FlowSpec, load_document
from flowdpo.train.adapters import attach_adapters


class CountingBackend:
    """Counts backend calls (generate / Stop) around a real backend."""

    def __init__(self, inner: TransformersBackend):
        self.inner = inner
        self.generate_calls = 0
        self.stop_calls = 0

    def versions(self):
        return self.inner.versions()

    def generate(self, contexts, adapter, max_new_tokens, temperature, top_p):
        self.generate_calls += 1
        return self.inner.generate(contexts, adapter, max_new_tokens, temperature, top_p)

    def next_token_logprobs(self, contexts, adapter, token_ids):
        self.stop_calls += 1
        return self.inner.next_token_logprobs(contexts, adapter, token_ids)

    @property
    def tokens_generated(self) -> int:
        return self.inner.tokens_generated


class NeverStop(CountingBackend):
    """Scaling runs: the Stop LLM always says "no" (P(yes) = 0), so flow length is set by maxChunks."""

    def __init__(self, inner: TransformersBackend, prompts: PromptBuilder):
        super().__init__(inner)
        self.n_yes = len(prompts.yes_ids)

    def next_token_logprobs(self, contexts, adapter, token_ids):
        out = super().next_token_logprobs(contexts, adapter, token_ids)
        return [[-1e9] * self.n_yes + lp[self.n_yes :] for lp in out]


def naive_flow(state: FlowState, backend, prompts: PromptBuilder, spec: FlowSpec, rng: random.Random) -> None:
    """One flow to its end, one backend call per node (the reference the engine is measured against)."""
    eos = prompts.eos_ids
    cands = prompts.yes_ids + prompts.no_ids
    while not state.done:
        for _attempt in range(spec.resample_attempts):
            (chunk,) = backend.generate(
                [state.prompt_ids + state.partial_ids(eos)],
                "answer" if state.use_adapters else None,
                spec.chunk_tokens,
                spec.temperature,
                spec.top_p,
            )
            if state.forbid_chunk is None or chunk != state.forbid_chunk:
                _after_chunk(state, chunk, spec, eos)
                break
        else:
            state.done, state.end_reason = True, "no_alternative"
        if state.done:
            break
        (lp,) = backend.next_token_logprobs(
            [prompts.stop_prompt(state.question, prompts.decode(state.partial_ids(eos)))],
            "stop" if state.use_adapters else None,
            cands,
        )
        p_yes = _stop_probability(lp, len(prompts.yes_ids), spec.stop_temperature)
        apply_decision(state, rng.random() < p_yes, p_yes)


def naive_rollouts(
    examples: list[Example], backend, prompts: PromptBuilder, spec: FlowSpec, rng: random.Random
):
    """Main chain, then one rollout per node, example by example and flow by flow."""
    out = []
    for ex in examples:
        main = main_state(ex, prompts)
        naive_flow(main, backend, prompts, spec, rng)
        branches = branches_of(main)
        for b in branches:
            naive_flow(b.state, backend, prompts, spec, rng)
        out.append((main, branches))
    return out


def flows_of_engine(results) -> int:
    return sum(1 + len(r.branches) for r in results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "examples/quickstart.yaml"))
    ap.add_argument("--examples", type=int, default=16, help="examples for engine vs naive")
    ap.add_argument("--scaling-examples", type=int, default=8, help="examples per scaling point")
    ap.add_argument("--chunk-counts", default="2,4,8")
    ap.add_argument("--chunk-sizes", default="12,24,48")
    ap.add_argument(
        "--torch-threads", type=int, default=int(os.environ.get("FLOWDPO_TORCH_THREADS", "0")) or None
    )
    ap.add_argument("--out", default=str(ROOT / "bench/results/engine.json"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    spec = load_document(args.spec).spec
    flow = spec.flow
    examples, _ = load_examples(spec.data, limit=args.examples)
    model, tok = load_base_model(spec.model)
    model = attach_adapters(model, spec.lora, seed=spec.seed)
    prompts = PromptBuilder(tok, flow)
    inner = TransformersBackend(model, tok, prompts.eos_ids, max_batch=spec.rollout.batch_examples * 4)
    inner.generate([prompts.answer_prompt(examples[0].question)], "answer", 8, flow.temperature, flow.top_p)
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]

    # 1. engine vs naive, alternating batch by batch.
    size = spec.rollout.batch_examples
    batches = [examples[i : i + size] for i in range(0, len(examples), size)]
    stats = {
        k: {"seconds": 0.0, "examples": 0, "flows": 0, "tokens": 0, "generateCalls": 0, "stopCalls": 0}
        for k in ("engine", "naive")
    }
    for bi, batch in enumerate(batches):
        for key in ("engine", "naive"):
            b = CountingBackend(inner)
            rng = random.Random(args.seed * 1000 + bi)
            tok0, t0 = b.tokens_generated, time.monotonic()
            if key == "engine":
                flows = flows_of_engine(rollout_examples(batch, b, prompts, flow, rng))
            else:
                flows = sum(1 + len(br) for _, br in naive_rollouts(batch, b, prompts, flow, rng))
            s = stats[key]
            s["seconds"] += time.monotonic() - t0
            s["examples"] += len(batch)
            s["flows"] += flows
            s["tokens"] += b.tokens_generated - tok0
            s["generateCalls"] += b.generate_calls
            s["stopCalls"] += b.stop_calls
        print(
            f"batch {bi + 1}/{len(batches)}: engine {stats['engine']['seconds']:.0f} s, "
            f"naive {stats['naive']['seconds']:.0f} s",
            flush=True,
        )
    for s in stats.values():
        s["examplesPerHour"] = 3600 * s["examples"] / s["seconds"]
        s["secondsPerExample"] = s["seconds"] / s["examples"]
        s["tokensPerSecond"] = s["tokens"] / s["seconds"]
        s["tokensPerExample"] = s["tokens"] / s["examples"]
    ratio = stats["engine"]["examplesPerHour"] / stats["naive"]["examplesPerHour"]
    tps_ratio = stats["engine"]["tokensPerSecond"] / stats["naive"]["tokensPerSecond"]

    # 2. scaling of the engine with chunk count and chunk size (every flow forced to full length).
    scal_examples = examples[: args.scaling_examples]
    points = [("maxChunks", int(c), flow.chunk_tokens, int(c)) for c in args.chunk_counts.split(",")]
    points += [("chunkTokens", int(t), int(t), flow.max_chunks) for t in args.chunk_sizes.split(",")]
    scaling = []
    for axis, value, chunk_tokens, max_chunks in points:
        f = flow.model_copy(update={"chunk_tokens": chunk_tokens, "max_chunks": max_chunks})
        b = NeverStop(inner, prompts)
        tok0, t0 = b.tokens_generated, time.monotonic()
        rs = rollout_examples(scal_examples, b, prompts, f, random.Random(args.seed))
        dt = time.monotonic() - t0
        chunks = sum(len(r.main.chunks) + sum(len(x.state.chunks) for x in r.branches) for r in rs)
        scaling.append(
            {
                "axis": axis,
                "value": value,
                "chunkTokens": chunk_tokens,
                "maxChunks": max_chunks,
                "examples": len(rs),
                "seconds": dt,
                "secondsPerExample": dt / len(rs),
                "flows": flows_of_engine(rs),
                "chunks": chunks,
                "tokens": b.tokens_generated - tok0,
                "secondsPerKiloToken": 1000 * dt / max(1, b.tokens_generated - tok0),
                "generateCalls": b.generate_calls,
                "stopCalls": b.stop_calls,
            }
        )
        print(f"scaling {axis}={value}: {dt / len(rs):.2f} s/example ({chunks} chunks)", flush=True)

    result = {
        "spec": args.spec,
        "flow": {"chunkTokens": flow.chunk_tokens, "maxChunks": flow.max_chunks, "batchExamples": size},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torchThreads": torch.get_num_threads(),
            "loadAverageStart": load0,
            "loadAverageEnd": os.getloadavg()[0],
        },
        "engineVsNaive": {**stats, "ratioExamplesPerHour": ratio, "ratioTokensPerSecond": tps_ratio},
        "scaling": scaling,
        "wallSeconds": time.monotonic() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    e, n = stats["engine"], stats["naive"]
    print("\n| | engine | naive | ratio |\n|---|---:|---:|---:|")
    print(f"| examples/hour | {e['examplesPerHour']:.0f} | {n['examplesPerHour']:.0f} | {ratio:.2f} |")
    print(
        f"| generated tokens/s | {e['tokensPerSecond']:.1f} | {n['tokensPerSecond']:.1f} | {tps_ratio:.2f} |"
    )
    print(f"| tokens/example | {e['tokensPerExample']:.0f} | {n['tokensPerExample']:.0f} | |")
    print(
        f"| backend calls/example | {(e['generateCalls'] + e['stopCalls']) / e['examples']:.1f} | "
        f"{(n['generateCalls'] + n['stopCalls']) / n['examples']:.1f} | |"
    )
    print("\n| axis | value | s/example | chunks | tokens | s/1k tokens |\n|---|---:|---:|---:|---:|---:|")
    for p in scaling:
        print(
            f"| {p['axis']} | {p['value']} | {p['secondsPerExample']:.2f} | {p['chunks']} | {p['tokens']} | "
            f"{p['secondsPerKiloToken']:.1f} |"
        )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
