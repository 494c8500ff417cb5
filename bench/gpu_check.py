"""The GPU check (run it through scripts/gpu-check.sh): the trainer's DPO steps and the transformers backend's
flow on a real architecture (Llama: the 1B and 8B shapes of Llama-3.2-1B and Llama-3.1-8B) with random
weights, timed on one device, and the GPU-hours of the paper's 2,000-example run projected from them.

What runs is the project's own code: `flowdpo.train.adapters.attach_adapters` (both LoRA adapters, the run's
default LoRA settings), `flowdpo.train.dpo.dpo_step` (the trainer's optimizer step, reference = adapters
disabled) on batches of `training.batchSize` pairs, and `flowdpo.flow.engine.run_flows` on
`flowdpo.flow.backend.TransformersBackend` (its decoder: prefix cache, per-row LoRA) with the paper's chunk
size and chunk count. Random weights say nothing about answers, only about time and memory: the tokenizer
is a word-level one over the model's vocabulary (`synthetic_tokenizer`), the questions are random words of
a GSM8K question's length, and the Stop decision is forced to "continue" so every flow runs its full budget.

Projection (printed with its inputs), for N examples (paper: 2,000):

    GPU-hours = N * ( G / R  +  (A * t_answer + S * t_stop) / B ) / 3600

    R        generated tokens/s of the flow, measured (FLOW_ROWS flows advancing together)
    t_*      seconds of one DPO step on B pairs, measured (answer pairs: sequences; stop pairs: token sets)
    B        pairs per optimizer step (training.batchSize; paper 32)
    G, A, S  generated tokens, answer pairs and stop pairs per example. Default: the upper bound the flow
             allows with C = chunkTokens, M = maxChunks: every flow runs M chunks, every node is rolled out
             to the end and yields a pair: G = C * M * (M + 1) (main chain C*M, answer-node rollouts
             C*M(M+1)/2, stop-node rollouts C*M(M-1)/2), A = M, S = M - 1. Pass the values of a real run
             (progress.json: tokens and pairs per example) with --tokens-per-example/--pairs-per-example.

The rollouts of a cluster run are served by vLLM, usually faster than this in-process backend: R here is a
lower bound of the cluster's rollout speed, so the projection is an upper bound of its GPU-hours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import time
from dataclasses import dataclass

import torch

# Llama-3.2-1B and Llama-3.1-8B (their config.json); "tiny" is the CPU shape the CI test runs.
SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True, "rope_theta": 500000.0},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "rope_theta": 500000.0},
}  # fmt: skip
PAPER_EXAMPLES = 2000
QUESTION_WORDS = 60  # about a GSM8K question in tokens
SPECIAL = ["<pad>", "<unk>", "<eos>", "<system>", "<user>", "<assistant>", "yes", "no", "Yes", "No"]


@dataclass
class Workload:
    chunk_tokens: int
    max_chunks: int
    flow_rows: int  # flows advancing together (the rollout batch: main chains and rollouts)
    batch_pairs: int  # training.batchSize
    micro_batch: int  # training.microBatchSize
    dpo_steps: int  # timed steps per pair kind (after one warm-up step)


def workload(shape: str, args) -> Workload:
    from flowdpo.spec import FlowSpec, RolloutSpec, TrainingSpec

    flow, train = FlowSpec(), TrainingSpec()
    if shape == "tiny":
        return Workload(8, 2, 4, 4, 2, 1)
    rows = RolloutSpec().batch_examples * 4  # flowdpo.loader.rollout_batch of the default spec
    return Workload(flow.chunk_tokens, flow.max_chunks, rows, train.batch_size, train.micro_batch_size, args.dpo_steps)


def synthetic_tokenizer(vocab_size: int):
    """A word-level fast tokenizer with exactly `vocab_size` ids and a chat template: what `PromptBuilder`
    needs (single-token yes/no, an EOS, a pad token) without any downloaded file."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL + [f"w{i}" for i in range(vocab_size - len(SPECIAL))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    out.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    out.padding_side = "left"
    return out


def build_policy(shape: str, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from flowdpo.spec import LoraSpec
    from flowdpo.train.adapters import attach_adapters

    config = LlamaConfig(max_position_embeddings=8192, **SHAPES[shape])
    # bf16 on CUDA, as the runs load their models; float32 for the CPU smoke run (the tiny shape's ops are
    # all overhead, and bf16 emulation on CPUs without bf16 instructions only slows CI down).
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)  # random weights, created on the device in its dtype
    finally:
        torch.set_default_dtype(previous)
    model.to(dtype)  # a no-op unless the model kept some float32 parameters of its own
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    return attach_adapters(model, LoraSpec(), seed=0), params


class _Sync:
    def __init__(self, device: str):
        self.device = device

    def __call__(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        """Peak device memory of the phase (CUDA); on a CPU the process's peak RSS so far."""
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(len(SPECIAL), vocab) for _ in range(n)]


def time_dpo(model, tok, w: Workload, sync: _Sync, kind: str) -> dict:
    """The trainer's optimizer step on `batch_pairs` pairs of one kind, shaped like the flow's pairs."""
    from types import SimpleNamespace

    from flowdpo.spec import TrainingSpec
    from flowdpo.train.adapters import adapter_parameters
    from flowdpo.train.dpo import dpo_step

    rng, vocab = random.Random(1), len(tok)
    question = QUESTION_WORDS + 20  # chat template and system prompt
    partial = w.chunk_tokens * (w.max_chunks - 1) // 2  # the mean partial answer before a node
    yes, no = tok.convert_tokens_to_ids(["yes", "Yes"]), tok.convert_tokens_to_ids(["no", "No"])
    pairs = []
    for i in range(w.batch_pairs):
        if kind == "answer":
            p = {"promptIds": _ids(rng, question + partial, vocab), "chosenIds": _ids(rng, w.chunk_tokens, vocab),
                 "rejectedIds": _ids(rng, w.chunk_tokens, vocab), "scoring": "sequence"}  # fmt: skip
        else:
            p = {"promptIds": _ids(rng, question + partial + w.chunk_tokens, vocab), "chosenIds": yes,
                 "rejectedIds": no, "scoring": "token-set"}  # fmt: skip
        pairs.append({"pairId": f"{kind}-{i}", **p})
    t = TrainingSpec()
    training = SimpleNamespace(micro_batch_size=w.micro_batch, beta=t.beta, grad_clip=t.grad_clip)
    opt = torch.optim.AdamW(adapter_parameters(model, kind), lr=t.learning_rate, weight_decay=t.weight_decay)
    dpo_step(model, kind, pairs, opt, training, tok.pad_token_id, seed=0)  # warm-up (kernels, allocator)
    sync.reset_peak()
    t0 = sync()
    for s in range(w.dpo_steps):
        stats = dpo_step(model, kind, pairs, opt, training, tok.pad_token_id, seed=s + 1)
    step = (sync() - t0) / w.dpo_steps
    tokens = sum(len(p["promptIds"]) + len(p["chosenIds"]) + len(p["rejectedIds"]) for p in pairs)
    return {
        "pairs": len(pairs), "stepSeconds": step, "pairTokensPerSecond": tokens / step,
        "peakGiB": sync.peak_gib(), "loss": stats["loss"],
    }  # fmt: skip


class _NeverStop(random.Random):
    """Every Stop decision is "continue" (`apply_decision(stop = rng.random() < p_yes)`): full-length flows."""

    def random(self) -> float:
        return 1.0


def time_flow(model, tok, w: Workload, sync: _Sync) -> dict:
    from flowdpo.flow.backend import TransformersBackend
    from flowdpo.flow.engine import FlowState, run_flows
    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.spec import FlowSpec

    spec = FlowSpec(chunk_tokens=w.chunk_tokens, max_chunks=w.max_chunks)
    prompts = PromptBuilder(tok, spec)
    rng = random.Random(2)

    def states(n: int) -> list[FlowState]:
        out = []
        for _ in range(n):
            q = " ".join(tok.convert_ids_to_tokens(_ids(rng, QUESTION_WORDS, len(tok))))
            out.append(FlowState(question=q, prompt_ids=prompts.answer_prompt(q)))
        return out

    backend = TransformersBackend(model, tok, prompts.eos_ids, max_batch=w.flow_rows)
    warm = FlowSpec(chunk_tokens=min(8, w.chunk_tokens), max_chunks=1)
    run_flows(states(2), backend, prompts, warm, _NeverStop())  # warm-up
    backend.reset()
    sync.reset_peak()
    before = backend.tokens_generated
    flows = states(w.flow_rows)
    t0 = sync()
    run_flows(flows, backend, prompts, spec, _NeverStop())
    seconds = sync() - t0
    tokens = backend.tokens_generated - before
    return {
        "flows": len(flows), "seconds": seconds, "tokensGenerated": tokens, "tokensPerSecond": tokens / seconds,
        "meanChunks": sum(len(s.chunks) for s in flows) / len(flows), "peakGiB": sync.peak_gib(),
        "fastPath": backend.decoder is not None,
    }  # fmt: skip


def project(w: Workload, flow: dict, dpo: dict, args) -> dict:
    c, m = w.chunk_tokens, w.max_chunks
    g = args.tokens_per_example if args.tokens_per_example else c * m * (m + 1)
    a, s = (args.pairs_per_example if args.pairs_per_example else (m, m - 1))
    gen = g / flow["tokensPerSecond"]
    train = (a * dpo["answer"]["stepSeconds"] + s * dpo["stop"]["stepSeconds"]) / w.batch_pairs
    return {
        "formula": "GPU-hours = N * (G / R + (A * t_answer + S * t_stop) / B) / 3600",
        "N": args.examples, "G": g, "R": flow["tokensPerSecond"], "A": a, "S": s, "B": w.batch_pairs,
        "t_answer": dpo["answer"]["stepSeconds"], "t_stop": dpo["stop"]["stepSeconds"],
        "upperBoundCounts": not (args.tokens_per_example or args.pairs_per_example),
        "rolloutSecondsPerExample": gen, "trainSecondsPerExample": train,
        "gpuHours": args.examples * (gen + train) / 3600,
    }  # fmt: skip


def run_shape(shape: str, args, sync: _Sync, deadline: float) -> dict:
    w = workload(shape, args)
    t0 = time.perf_counter()
    tok = synthetic_tokenizer(SHAPES[shape]["vocab_size"])
    model, params = build_policy(shape, args.device)
    out: dict = {"shape": shape, "parameters": params, "buildSeconds": time.perf_counter() - t0,
                 "workload": w.__dict__, "dpo": {}}  # fmt: skip
    for kind in ("answer", "stop"):
        if time.perf_counter() > deadline:
            out["skipped"] = "time budget"
            return out
        out["dpo"][kind] = time_dpo(model, tok, w, sync, kind)
        _print(f"{shape} dpo {kind}", out["dpo"][kind])
    if time.perf_counter() > deadline:
        out["skipped"] = "time budget"
        return out
    out["flow"] = time_flow(model, tok, w, sync)
    _print(f"{shape} flow", out["flow"])
    out["projection"] = project(w, out["flow"], out["dpo"], args)
    _print(f"{shape} projection", out["projection"])
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return out


def _print(label: str, d: dict) -> None:
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()]
    print(f"[gpu-check] {label}: " + " ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--shapes", default="1b,8b", help=f"comma-separated, of {sorted(SHAPES)} (default 1b,8b)")
    p.add_argument("--dpo-steps", type=int, default=3, help="timed DPO steps per pair kind (default 3)")
    p.add_argument("--examples", type=int, default=PAPER_EXAMPLES, help="N of the projection (paper: 2000)")
    p.add_argument("--tokens-per-example", type=float, help="G of the projection (default: the flow's upper bound)")
    p.add_argument("--pairs-per-example", type=float, nargs=2, metavar=("ANSWER", "STOP"), help="A and S")
    p.add_argument("--budget-seconds", type=float, default=420.0, help="skip what would start after this (420)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        p.error(f"--shapes: unknown {unknown or shapes}; choose from {sorted(SHAPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (run with --device cpu --shapes tiny on a CPU)")
    if args.dpo_steps < 1 or args.examples < 1:
        p.error("--dpo-steps and --examples must be at least 1")
    start = time.perf_counter()
    sync = _Sync(args.device)
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": sys.version.split()[0], "shapes": [],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    for shape in shapes:
        report["shapes"].append(run_shape(shape, args, sync, start + args.budget_seconds))
    report["seconds"] = time.perf_counter() - start
    print(f"[gpu-check] done in {report['seconds']:.0f} s")
    for r in report["shapes"]:
        if "projection" in r:
            pr = r["projection"]
            bound = " (upper bound: every flow at full length, every node a pair)" if pr["upperBoundCounts"] else ""
            print(f"[gpu-check] {r['shape']}: {pr['N']} examples ~ {pr['gpuHours']:.2f} GPU-hours{bound}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if all("projection" in r for r in report["shapes"]) else 3


if __name__ == "__main__":
    sys.exit(main())
