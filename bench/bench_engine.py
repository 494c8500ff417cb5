"""Benchmark (not a test): the flow engine against a naive reference, against the model's own decode floor,
its scaling with chunk count and size, and the quickstart's wall time quiet and under load. ONE run:

    python bench/bench_engine.py                    # ~30-40 min on 2 cores
    python bench/bench_engine.py --examples 8 --scaling-examples 4 --no-quickstart      # quicker

(a) Engine vs naive, on the same examples, model and adapters, alternating batch by batch (a change in the
    machine's load hits both alike):
    - engine: `rollout_examples` (flowdpo/flow/rollouts.py) on `TransformersBackend` with its fast decoder
      (flowdpo/flow/decoding.py: prefix KV cache, rows of every adapter in one batch, plain decode loop);
    - naive: `naive_rollouts` below: the same algorithm written the obvious way, one flow at a time, one
      `model.generate()` / Stop forward per node, no cache (`TransformersBackend(fast=False)`).
    Reported: examples/hour of each and the ratio, calls and tokens per example.
(b) Engine vs the decode floor: the engine's effective generated tokens/s (all its time, prefill and Stop
    included) against a pure decode loop of the same model at the engine's mean decode batch size (rows that
    never stop, a short prompt; only the decode steps are timed).
(c) Scaling (engine only): seconds per example for flow.maxChunks in {2, 4, 8} and flow.chunkTokens in
    {12, 24, 48}; the Stop LLM is forced to "no", so flows run until maxChunks unless the Answer LLM ends.
(d) The quickstart (`flowdpo run`, 96 examples + both baselines, no report) quiet, then with one competing
    CPU-bound process, as subprocesses: wall time of each and the ratio;
(e) peak RSS of each quickstart run (the process's own maximum resident set).

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
from flowdpo.flow.engine import END_NO_ALTERNATIVE, FlowState, after_chunk, apply_decision, stop_probability
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

    def reset(self):
        self.inner.reset()


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
                after_chunk(state, chunk, spec, eos)
                break
        else:
            state.done, state.end_reason = True, END_NO_ALTERNATIVE
        if state.done:
            break
        (lp,) = backend.next_token_logprobs(
            [prompts.stop_prompt(state.question, prompts.decode(state.partial_ids(eos)))],
            "stop" if state.use_adapters else None,
            cands,
        )
        p_yes = stop_probability(lp, len(prompts.yes_ids), spec.stop_temperature)
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


def engine_vs_naive(batches, fast, naive, prompts, flow, seed):
    """(a): alternate engine and naive batch by batch; returns per-implementation totals."""
    stats = {
        k: {"seconds": 0.0, "examples": 0, "flows": 0, "tokens": 0, "generateCalls": 0, "stopCalls": 0}
        for k in ("engine", "naive")
    }
    dec0 = dict(fast.decoder.stats)
    for bi, batch in enumerate(batches):
        for key in ("engine", "naive"):
            b = CountingBackend(fast if key == "engine" else naive)
            b.inner.reset()
            rng = random.Random(seed * 1000 + bi)
            torch.manual_seed(seed * 1000 + bi)
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
    dec = {k: fast.decoder.stats[k] - dec0.get(k, 0) for k in fast.decoder.stats}
    stats["engine"]["decoder"] = dec
    stats["engine"]["meanDecodeBatch"] = dec["decode_rows"] / max(1, dec["decode_steps"])
    stats["engine"]["cachedShareOfContextTokens"] = dec["cached_tokens"] / max(
        1, dec["cached_tokens"] + dec["prefill_tokens"]
    )
    return stats


def decode_floor(model, tok, batch: int, steps: int = 32, prompt_len: int = 48) -> dict:
    """(b): tokens/s of a pure decode loop of the same model at `batch` rows (rows never stop); the time of a
    1-token call (prefill only) is subtracted from a (steps+1)-token call on the same cold contexts."""
    from flowdpo.flow.decoding import Decoder

    floor = Decoder(model, frozenset(), tok.pad_token_id, max_batch=max(batch, 1))
    rng = random.Random(0)
    contexts = [[rng.randrange(1000, 20000) for _ in range(prompt_len)] for _ in range(batch)]
    modes = [(None, 0)] * batch
    best = None
    for _ in range(2):
        floor.reset()
        t0 = time.monotonic()
        floor.generate(contexts, modes, 1, 1.0, 1.0)
        prefill = time.monotonic() - t0
        floor.reset()
        t0 = time.monotonic()
        floor.generate(contexts, modes, steps + 1, 1.0, 1.0)
        decode = time.monotonic() - t0 - prefill
        best = decode if best is None else min(best, decode)
    return {
        "batch": batch,
        "steps": steps,
        "secondsPerStep": best / steps,
        "tokensPerSecond": batch * steps / best,
    }


def scaling_runs(examples, inner, prompts, flow, seed, chunk_counts, chunk_sizes):
    """(c)"""
    points = [("maxChunks", int(c), flow.chunk_tokens, int(c)) for c in chunk_counts.split(",")]
    points += [("chunkTokens", int(t), int(t), flow.max_chunks) for t in chunk_sizes.split(",")]
    out = []
    for axis, value, chunk_tokens, max_chunks in points:
        f = flow.model_copy(update={"chunk_tokens": chunk_tokens, "max_chunks": max_chunks})
        b = NeverStop(inner, prompts)
        inner.reset()
        tok0, t0 = b.tokens_generated, time.monotonic()
        rs = rollout_examples(examples, b, prompts, f, random.Random(seed))
        dt = time.monotonic() - t0
        chunks = sum(len(r.main.chunks) + sum(len(x.state.chunks) for x in r.branches) for r in rs)
        out.append(
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
    return out


def quickstart_run(spec_path: str, busy: bool, keep: str | None = None) -> dict:
    """(d, e): `flowdpo run` of the quickstart in a fresh folder, optionally beside one CPU-bound process.
    Also checks the ETA a person watches: the `etaSeconds` of progress.json at the first poll after 60 s
    and after 25% of the run, against the time the run then really took. `keep`: copy the run folder there
    (for `flowdpo report`)."""
    import shutil
    import subprocess
    import tempfile

    hog = None
    if busy:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    etas: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="flowdpo-bench-") as tmp:
            cmd = [
                sys.executable,
                "-m",
                "flowdpo.cli.main",
                "run",
                spec_path,
                "--storage",
                tmp,
                "--no-report",
                "--no-progress",
            ]
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            samples: list[tuple[float, float | None, int]] = []
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(2.0)
                try:
                    p = json.loads((Path(tmp) / "progress.json").read_text())
                    samples.append((time.monotonic() - t0, p.get("etaSeconds"), p.get("examples", 0)))
                except (OSError, ValueError):
                    pass
            wall = time.monotonic() - t0
            err = proc.stderr.read().decode(errors="replace")
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(f"quickstart failed ({proc.returncode}): {err[-2000:]}")
            progress = json.loads((Path(tmp) / "progress.json").read_text())
            if keep:
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(tmp, keep)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    for label, after in (("after 60 s", 60.0), ("after 25% of the run", 0.25 * wall)):
        at = next(((t, eta) for t, eta, _ in samples if t >= after and eta is not None), None)
        if at is not None:
            remaining = wall - at[0]
            etas.append(
                {
                    "when": label,
                    "atSeconds": at[0],
                    "etaSeconds": at[1],
                    "actualRemainingSeconds": remaining,
                    "relativeError": (at[1] - remaining) / remaining if remaining > 0 else None,
                }
            )
    return {
        "busy": busy,
        "wallSeconds": wall,
        "peakRssMiB": usage.ru_maxrss / 1024,  # Linux: KiB
        "examples": progress["examples"],
        "progressiveAccuracy": progress["progressiveAccuracy"],
        "baselines": progress["baselines"],
        "eta": etas,
        # (seconds since start, published ETA, examples counted) at every poll: how the ETA converges
        "etaTrace": [[round(t, 1), eta, n] for t, eta, n in samples],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "examples/quickstart.yaml"))
    ap.add_argument("--examples", type=int, default=16, help="examples for engine vs naive")
    ap.add_argument("--scaling-examples", type=int, default=8, help="examples per scaling point")
    ap.add_argument("--chunk-counts", default="2,4,8")
    ap.add_argument("--chunk-sizes", default="12,24,48")
    ap.add_argument("--no-quickstart", action="store_true", help="skip (d) and (e)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/engine.json"))
    ap.add_argument("--keep-quickstart", default=None, help="copy the quiet quickstart run's folder here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    spec = load_document(args.spec).spec
    flow = spec.flow
    examples, _ = load_examples(spec.data, limit=args.examples)
    model, tok = load_base_model(spec.model)
    model = attach_adapters(model, spec.lora, seed=spec.seed)
    prompts = PromptBuilder(tok, flow)
    fast = TransformersBackend(model, tok, prompts.eos_ids)
    naive = TransformersBackend(model, tok, prompts.eos_ids, max_batch=1, fast=False)
    fast.generate([prompts.answer_prompt(examples[0].question)], "answer", 8, flow.temperature, flow.top_p)
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]

    size = spec.rollout.batch_examples
    batches = [examples[i : i + size] for i in range(0, len(examples), size)]
    stats = engine_vs_naive(batches, fast, naive, prompts, flow, args.seed)
    ratio = stats["engine"]["examplesPerHour"] / stats["naive"]["examplesPerHour"]
    tps_ratio = stats["engine"]["tokensPerSecond"] / stats["naive"]["tokensPerSecond"]
    floor = decode_floor(model, tok, max(1, round(stats["engine"]["meanDecodeBatch"])))
    floor_ratio = stats["engine"]["tokensPerSecond"] / floor["tokensPerSecond"]
    print(f"decode floor at batch {floor['batch']}: {floor['tokensPerSecond']:.1f} tokens/s", flush=True)
    scaling = scaling_runs(
        examples[: args.scaling_examples], fast, prompts, flow, args.seed, args.chunk_counts, args.chunk_sizes
    )
    quick = []
    if not args.no_quickstart:
        del model, fast, naive  # the quickstart runs measure their own memory, not this process's
        for busy in (False, True):
            quick.append(quickstart_run(args.spec, busy, None if busy else args.keep_quickstart))
            print(f"quickstart {'busy' if busy else 'quiet'}: {quick[-1]['wallSeconds']:.0f} s", flush=True)

    result = {
        "spec": args.spec,
        "flow": {"chunkTokens": flow.chunk_tokens, "maxChunks": flow.max_chunks, "batchExamples": size},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torchThreads": torch.get_num_threads(),
            "ompWaitPolicy": os.environ.get("OMP_WAIT_POLICY"),
            "loadAverageStart": load0,
            "loadAverageEnd": os.getloadavg()[0],
        },
        "engineVsNaive": {**stats, "ratioExamplesPerHour": ratio, "ratioTokensPerSecond": tps_ratio},
        "decodeFloor": {
            **floor,
            "engineTokensPerSecond": stats["engine"]["tokensPerSecond"],
            "ratio": floor_ratio,
        },
        "scaling": scaling,
        "quickstart": quick,
        "wallSeconds": time.monotonic() - t_start,
    }
    if len(quick) == 2:
        result["quickstartBusyOverQuiet"] = quick[1]["wallSeconds"] / quick[0]["wallSeconds"]
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
    print(
        f"\nengine {e['tokensPerSecond']:.1f} tokens/s vs decode floor {floor['tokensPerSecond']:.1f} tokens/s at batch "
        f"{floor['batch']}: {floor_ratio:.2f}"
    )
    print("\n| axis | value | s/example | chunks | tokens | s/1k tokens |\n|---|---:|---:|---:|---:|---:|")
    for p in scaling:
        print(
            f"| {p['axis']} | {p['value']} | {p['secondsPerExample']:.2f} | {p['chunks']} | {p['tokens']} | "
            f"{p['secondsPerKiloToken']:.1f} |"
        )
    for q in quick:
        print(
            f"quickstart {'busy ' if q['busy'] else 'quiet'}: {q['wallSeconds']:.0f} s, peak RSS {q['peakRssMiB']:.0f} MiB"
        )
        for e in q["eta"]:
            err = "" if e["relativeError"] is None else f" ({100 * e['relativeError']:+.0f}%)"
            print(
                f"  ETA {e['when']} ({e['atSeconds']:.0f} s): {e['etaSeconds']:.0f} s, really {e['actualRemainingSeconds']:.0f} s{err}"
            )
    if "quickstartBusyOverQuiet" in result:
        print(f"busy / quiet: {result['quickstartBusyOverQuiet']:.2f}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
