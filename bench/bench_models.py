"""Benchmark (not a test): the builtin models side by side, in ONE run on the same questions, 1 torch thread.

    nice -n 10 .venv/bin/python bench/bench_models.py                    # every installed builtin
    nice -n 10 .venv/bin/python bench/bench_models.py --questions 20 --models builtin:smollm2-135m-instruct

    nice -n 10 .venv/bin/python bench/bench_models.py --skip-accuracy   # refresh load/RSS/speed only

For each model (conversion in one child process, then the model in another, so load time and RSS are its own):
* convert time (first use only: GGUF -> bf16 safetensors folder), load time (warm page cache), RSS after
  load (the safetensors are mmapped) and after one batch of 16 (every weight touched), peak RSS;
* zero-shot accuracy on two reasoning-gym mixes, greedy AND sampled (temperature 0.7, top_p 1, no top_k,
  as the flow samples): the default `DataSpec().tasks` (1-digit) and the 1-2 digit mix of
  docs/results/cpu-repro/run.yaml; the first N questions of each mix's training stream (`load_examples`), the
  same for every model. Prompt: `ANSWER_SYSTEM_PROMPT` + the question through the model's chat template
  (`PromptBuilder`), generation through the rollout worker's `TransformersBackend` (batches of 16), a budget
  of 96 new tokens (the cpu-repro flow's 4 chunks x 24), graded with `flowdpo.grading.grade`. Also the
  fraction of answers that ended with EOS inside the budget;
* decode tokens/s at batch 1 and batch 16 (greedy, EOS ignored: (T(1+64 tokens) - T(1 token)) per 64 tokens).

Writes bench/results/models.json (with Wilson 95% CIs) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
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

BUDGET = 96
TEMPERATURE = 0.7
BATCH = 16
SPEED_TOKENS = 64
MIXES = {
    "default-1digit": None,  # DataSpec().tasks
    "cpu-repro-1to2digit": ROOT / "docs" / "results" / "cpu-repro" / "run.yaml",
}


def _rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_questions(n: int) -> dict[str, list[dict]]:
    from flowdpo.data import load_examples
    from flowdpo.spec import DataSpec, load_document

    out = {}
    for mix, path in MIXES.items():
        data = DataSpec() if path is None else load_document(path).spec.data
        examples, _ = load_examples(data, limit=n)
        out[mix] = [
            {"id": e.id, "question": e.question, "answer": e.answer, "task": e.source} for e in examples
        ]
    return out


def _sync_time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def convert(name: str, result_file: Path) -> None:
    """First use of a builtin: GGUF -> bf16 safetensors folder (in its own process: its memory is not the
    model's). Records the time, 0 when the folder already exists."""
    from flowdpo.models import resolve_model_path
    from flowdpo.spec import ModelSpec

    t = time.perf_counter()
    resolve_model_path(ModelSpec(name=name))
    result_file.write_text(
        json.dumps(
            {
                "convert_s": round(time.perf_counter() - t, 1),
                "convert_peak_rss_mb": round(_rss_mb("VmHWM"), 0),
            }
        )
    )


def worker(
    name: str, questions_file: Path, result_file: Path, seed: int, skip_accuracy: bool = False
) -> None:
    """One model: load, accuracy on every mix (greedy + sampled), decode speed. Writes result_file."""
    import torch

    torch.set_num_threads(1)
    from flowdpo.flow.backend import TransformersBackend
    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.grading import grade
    from flowdpo.models import BUILTINS, builtin_part_paths, load_base_model, resolve_model_path
    from flowdpo.spec import FlowSpec, ModelSpec

    spec = ModelSpec(name=name)
    res: dict = {"model": name}
    if name in BUILTINS:
        b = BUILTINS[name]
        res.update(
            description=b.model,
            pip=b.pip,
            gguf_mb=round(sum(p.stat().st_size for p in builtin_part_paths(b)) / 2**20, 1),
        )
    folder = Path(resolve_model_path(spec))  # converted beforehand by a --convert child
    res["converted_mb"] = round(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20, 1)
    rss0 = _rss_mb()
    t = time.perf_counter()
    model, tok = load_base_model(spec, device="cpu")
    res["load_s"] = round(time.perf_counter() - t, 1)
    res["rss_after_load_mb"] = round(_rss_mb(), 0)  # safetensors are mmapped: pages come in on first use
    res["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    res["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    res["torch_threads"] = torch.get_num_threads()

    class PlainBackend(TransformersBackend):
        """The rollout worker's generate() on the plain model (no LoRA adapters attached)."""

        @contextlib.contextmanager
        def _adapter(self, adapter):
            yield

    prompts = PromptBuilder(tok, FlowSpec())
    backend = PlainBackend(model, tok, prompts.eos_ids, max_batch=BATCH)
    qs = json.loads(questions_file.read_text())
    first = next(iter(qs.values()))
    backend.generate(
        [prompts.answer_prompt(q["question"]) for q in (first * BATCH)[:BATCH]], None, 2, 0.0, 1.0
    )
    res["rss_ready_mb"] = round(_rss_mb(), 0)  # after one batch of 16: every weight page touched
    res["rss_model_mb"] = round(_rss_mb() - rss0, 0)
    res["mixes"] = {}
    for mix, items in [] if skip_accuracy else qs.items():
        ctx = [prompts.answer_prompt(q["question"]) for q in items]
        res["mixes"][mix] = {}
        for mode, temp in (("greedy", 0.0), ("sampled", TEMPERATURE)):
            torch.manual_seed(seed)
            t = time.perf_counter()
            outs = backend.generate(ctx, None, BUDGET, temp, 1.0)
            wall = time.perf_counter() - t
            rows = []
            for q, ids in zip(items, outs):
                text = prompts.decode(ids)
                g = grade(text, q["answer"])
                rows.append(
                    {
                        "id": q["id"],
                        "correct": g.correct,
                        "extracted": g.extracted,
                        "eos": len(ids) < BUDGET,
                        "tokens": len(ids),
                        "text": text,
                    }
                )
            n = len(rows)
            res["mixes"][mix][mode] = {
                "n": n,
                "correct": sum(r["correct"] for r in rows),
                "eos": sum(r["eos"] for r in rows),
                "mean_tokens": round(sum(r["tokens"] for r in rows) / n, 1),
                "wall_s": round(wall, 1),
                "rows": rows,
            }
            print(
                f"[{name}] {mix} {mode}: {res['mixes'][mix][mode]['correct']}/{n} correct, "
                f"{res['mixes'][mix][mode]['eos']}/{n} EOS, {wall:.0f}s",
                flush=True,
            )

    # Decode speed: greedy, EOS ignored (min_new_tokens), short chat prompts from the first mix.
    res["speed"] = {}
    for bs in (1, BATCH):
        ctx = [prompts.answer_prompt(q["question"]) for q in (first * bs)[:bs]]
        ids, mask = backend._pad(ctx)

        def gen(k: int, ids=ids, mask=mask) -> None:
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=k,
                    min_new_tokens=k,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )

        gen(2)  # warm-up
        t1 = min(_sync_time(lambda: gen(1)) for _ in range(2))
        tn = _sync_time(lambda: gen(1 + SPEED_TOKENS))
        res["speed"][f"batch{bs}"] = {
            "decode_tok_s": round(bs * SPEED_TOKENS / max(tn - t1, 1e-9), 1),
            "prefill_s": round(t1, 2),
            "prompt_tokens_max": int(ids.shape[1]),
        }
        print(f"[{name}] batch {bs}: {res['speed'][f'batch{bs}']['decode_tok_s']} tok/s", flush=True)
    res["peak_rss_mb"] = round(_rss_mb("VmHWM"), 0)
    result_file.write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--models", nargs="*", help="model names (default: every builtin whose packages are installed)"
    )
    ap.add_argument("--questions", type=int, default=120, help="questions per mix (same for every model)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed of the sampled runs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "models.json")
    ap.add_argument(
        "--skip-accuracy",
        action="store_true",
        help="only load time, RSS and decode speed; updates those fields of the models already in --out",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--convert", help=argparse.SUPPRESS)
    ap.add_argument("--questions-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.convert:
        convert(a.convert, a.result_file)
        return
    if a.worker:
        worker(a.worker, a.questions_file, a.result_file, a.seed, a.skip_accuracy)
        return

    from flowdpo.models import BUILTINS, ModelError, builtin_part_paths
    from flowdpo.report.stats import wilson_interval

    names = a.models
    if not names:
        names = []
        for n, b in BUILTINS.items():
            try:
                builtin_part_paths(b)
                names.append(n)
            except ModelError as e:
                print(f"skipping {n}: {e}", flush=True)
    qs = build_questions(a.questions)
    results = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FLOWDPO_TORCH_THREADS="1")
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "questions.json"
        qfile.write_text(json.dumps(qs))
        for i, name in enumerate(names):
            rfile = Path(tmp) / f"result-{i}.json"
            cfile = Path(tmp) / f"convert-{i}.json"
            conv = [sys.executable, __file__, "--convert", name, "--result-file", str(cfile)]
            if subprocess.run(conv, env=env, check=False).returncode != 0 or not cfile.is_file():
                results.append({"model": name, "error": "conversion failed"})
                continue
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--questions-file",
                str(qfile),
                "--result-file",
                str(rfile),
                "--seed",
                str(a.seed),
            ] + (["--skip-accuracy"] if a.skip_accuracy else [])
            t = time.perf_counter()
            r = subprocess.run(cmd, env=env, check=False)
            if r.returncode != 0 or not rfile.is_file():
                results.append({"model": name, "error": f"worker exited {r.returncode}"})
                continue
            res = json.loads(rfile.read_text()) | json.loads(cfile.read_text())
            res["process_wall_s"] = round(time.perf_counter() - t, 1)
            for mix in res["mixes"].values():
                for m in mix.values():
                    lo, hi = wilson_interval(m["correct"], m["n"])
                    m["accuracy"] = round(m["correct"] / m["n"], 4)
                    m["ci95"] = [round(lo, 4), round(hi, 4)]
                    m["eos_rate"] = round(m["eos"] / m["n"], 4)
                    m["questions_per_cpu_hour"] = round(m["n"] / m["wall_s"] * 3600, 0)
            results.append(res)
    doc = {
        "benchmark": "bench/bench_models.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": 1,
            "python": platform.python_version(),
        },
        "settings": {
            "questions_per_mix": a.questions,
            "budget_new_tokens": BUDGET,
            "batch": BATCH,
            "temperature_sampled": TEMPERATURE,
            "top_p": 1.0,
            "seed": a.seed,
            "mixes": {
                k: (str(v.relative_to(ROOT)) if v else "flowdpo.spec.DataSpec().tasks")
                for k, v in MIXES.items()
            },
            "questions": "load_examples(data, limit=N): the first N of the training stream",
        },
        "wall_s": round(time.time() - started, 0),
        "results": results,
    }
    if a.skip_accuracy:
        doc = merge_resources(a.out, doc)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(doc)
    print(f"wrote {a.out}")


RESOURCE_FIELDS = ("load_s", "rss_after_load_mb", "rss_ready_mb", "rss_model_mb", "peak_rss_mb", "speed")


def merge_resources(out: Path, new: dict) -> dict:
    """--skip-accuracy: the new load/RSS/speed numbers replace those of the same models in `out` (whose
    accuracy rows are kept); the replaced values stay under "resources_before"."""
    if not out.is_file():
        return new
    doc = json.loads(out.read_text())
    fresh = {r["model"]: r for r in new["results"] if "error" not in r}
    for r in doc["results"]:
        if r["model"] in fresh:
            r["resources_before"] = {k: r[k] for k in RESOURCE_FIELDS if k in r}
            r.update({k: fresh[r["model"]][k] for k in RESOURCE_FIELDS if k in fresh[r["model"]]})
    doc["resources_run"] = {"date": new["date"], "wall_s": new["wall_s"], "models": sorted(fresh)}
    return doc


def print_table(doc: dict) -> None:
    for r in doc["results"]:
        if "error" in r:
            print(f"{r['model']}: {r['error']}")
            continue
        sp = r["speed"]
        print(
            f"\n{r['model']}  ({r['params_m']}M params, load {r['load_s']}s, "
            f"RSS {r.get('rss_ready_mb', r['rss_after_load_mb']):.0f} MB, "
            f"decode {sp['batch1']['decode_tok_s']} tok/s @1, "
            f"{sp[f'batch{BATCH}']['decode_tok_s']} tok/s @{BATCH})"
        )
        for mix, modes in r["mixes"].items():
            for mode, m in modes.items():
                print(
                    f"  {mix:22s} {mode:8s} acc {m['accuracy']:.3f} "
                    f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]  "
                    f"EOS {m['eos_rate']:.2f}  {m['mean_tokens']} tok  {m['wall_s']}s"
                )


if __name__ == "__main__":
    main()
