"""Benchmark (not a test): the compile's SFT with and without gradient checkpointing, in ONE run, side by side.

    nice -n 10 .venv/bin/python bench/bench_sft_memory.py                        # SmolLM2-135M, ~100-token traces
    nice -n 10 .venv/bin/python bench/bench_sft_memory.py --model builtin:qwen2.5-coder-0.5b-instruct --steps 1

`flowdpo compile` trains one LoRA per trace source with the spec's `compile.sft` settings (batch 16, gradient
accumulation 2, max length 1024). Without gradient checkpointing every layer's activations of a batch stay in
memory until the backward pass; the 0.5B model's SFT at batch 16 on ~400-token traces reached 23-24 GB and was
killed for memory on a 24 GB machine (the learning experiment). With it (compile/sft.py) each layer's activations
are recomputed in the backward pass.

Each setting trains in its own child process (its peak RSS is its own, from wait4) on the same synthetic traces
and seed: `--questions` prompt/answer pairs whose answers are about `--trace-tokens` tokens of worked arithmetic.
Reports peak RSS, wall time and their ratios, and whether the two adapters are bitwise equal (they must be: the
recomputed forward is the same computation and torch restores the RNG state for LoRA dropout).
Writes bench/results/sft_memory.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def traces(questions: int, trace_tokens: int) -> list[dict]:
    """Worked sums whose answers are about `trace_tokens` tokens long (~4 tokens a step line)."""
    out = []
    for q in range(questions):
        a, b = 17 + q, 29 + 3 * q
        steps, total = [], a
        while len(steps) * 12 < trace_tokens:
            steps.append(f"Step {len(steps) + 1}: {total} + {b} = {total + b}.")
            total += b
        out.append(
            {
                "question": f"Start at {a} and add {b} {len(steps)} times. What is the result?",
                "trace": " ".join(steps) + f" The answer is {total}.",
            }
        )
    return out


def child(args) -> int:
    """One training run; prints a JSON line with its wall time and the adapter's digest."""
    from flowdpo.compile.sft import train_one
    from flowdpo.spec import parse_document

    doc = parse_document(
        {
            "apiVersion": "flowdpo.dev/v1alpha1",
            "kind": "FlowDPORun",
            "metadata": {"name": "bench-sft"},
            "spec": {
                "model": {"name": args.model},
                "seed": 1,
                "storage": {"uri": "file:///tmp/flowdpo-bench-sft"},
                "compile": {"sft": {"maxSteps": args.steps}},  # batch 16, accumulation 2, max length 1024
            },
        }
    )
    t0 = time.monotonic()
    files, log = train_one(
        doc,
        "self-generated",
        traces(args.questions, args.trace_tokens),
        gradient_checkpointing=args.checkpointing,
    )
    digest = hashlib.sha256(files["adapter_model.safetensors"]).hexdigest()[:16]
    print(json.dumps({"seconds": time.monotonic() - t0, "adapter": digest, "losses": log["losses"]}))
    return 0


def run_one(args, checkpointing: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--questions",
        str(args.questions),
        "--trace-tokens",
        str(args.trace_tokens),
    ]
    if checkpointing:
        cmd.append("--checkpointing")
    # A watchdog: on a shared machine, a setting that does not fit must not get other processes killed for memory.
    over = False
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if not over and _rss_mib(proc.pid) > args.max_rss_gib * 1024:
                over = True
                proc.kill()
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
        out.seek(0)
        text = out.read()
    peak = round(usage.ru_maxrss / 1024)
    if over or proc.returncode != 0:
        why = f"stopped above --max-rss-gib {args.max_rss_gib}" if over else f"exit {proc.returncode}"
        return {"checkpointing": checkpointing, "failed": why, "peakRssMiB": peak}
    return {"checkpointing": checkpointing, "peakRssMiB": peak, **json.loads(text.strip().splitlines()[-1])}


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps (each: 2 batches of 16)")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--trace-tokens", type=int, default=100)
    ap.add_argument(
        "--max-rss-gib", type=float, default=9.0, help="stop a setting whose RSS passes this (default 9)"
    )
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    plain, checkpointed = run_one(args, False), run_one(args, True)
    result = {
        "model": args.model,
        "steps": args.steps,
        "questions": args.questions,
        "traceTokens": args.trace_tokens,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "loadAverageAtStart": os.getloadavg()[0],
        "withoutCheckpointing": plain,
        "withCheckpointing": checkpointed,
    }
    if "failed" not in plain and "failed" not in checkpointed:
        result["peakRssRatio"] = checkpointed["peakRssMiB"] / plain["peakRssMiB"]
        result["timeRatio"] = checkpointed["seconds"] / plain["seconds"]
        result["sameAdapter"] = (
            plain["adapter"] == checkpointed["adapter"] and plain["losses"] == checkpointed["losses"]
        )
    out = ROOT / "bench" / "results" / "sft_memory.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'':<26}{'peak RSS MiB':>14}{'seconds':>10}")
    for name, r in (("without checkpointing", plain), ("with checkpointing", checkpointed)):
        print(
            f"{name:<26}{r['peakRssMiB']:>14,}{r.get('seconds', float('nan')):>10.1f}  {r.get('failed', '')}"
        )
    if "peakRssRatio" in result:
        print(
            f"peak RSS ratio {result['peakRssRatio']:.2f}, time ratio {result['timeRatio']:.2f}, "
            f"same adapter and losses: {result['sameAdapter']}"
        )
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
