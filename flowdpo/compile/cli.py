"""`flowdpo compile` and `flowdpo eval` (after `flowdpo run` has trained the flow).

    flowdpo compile RUN.yaml [--traces-only] [--allow-unfinished]   traces (3 sources, equal data) + SFT
    flowdpo eval RUN.yaml [--allow-unfinished]                      the compile table (eval/table.md)
    flowdpo judge RUN.yaml --judge-url URL --judge-model M          pairwise LLM judge of two trace sources

Both read the run's storage from the run file (or --storage); the file's `compile` section may be added or
changed after training, every other section must match the stored spec. Both can be stopped and rerun:
finished trace parts and SFT adapters are reused.
"""

from __future__ import annotations

import sys


def _doc(args):
    from flowdpo.cli import _load, _storage_arg

    doc = _load(args.file)
    if args.storage:
        doc.spec.storage.uri = _storage_arg(args.storage)
    return doc


def compile_run(
    doc, *, require_finished: bool = True, traces_only: bool = False, show_progress: bool = False
) -> dict:
    """Traces of the three sources (equal-data rule), then one SFT model per source. Returns a summary."""
    from flowdpo.compile.common import open_run
    from flowdpo.compile.traces import build_traces

    store = open_run(doc, require_finished=require_finished)
    manifest = build_traces(doc, store, show_progress=show_progress)
    out = {"manifest": manifest, "sft": {}}
    if not traces_only:
        from flowdpo.compile.sft import train_all

        out["sft"] = train_all(doc, store)
    return out


def cmd_compile(args) -> int:
    from flowdpo.compile.common import CompileError

    doc = _doc(args)
    print(f"compile {doc.name}: storage {doc.storage_uri()}", file=sys.stderr)
    try:
        out = compile_run(
            doc,
            require_finished=not args.allow_unfinished,
            traces_only=args.traces_only,
            show_progress=not args.no_progress,
        )
    except CompileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = out["manifest"]
    print(
        f"compile questions {m['compileQuestions']}, kept {m['tracesPerSource']} traces per source "
        f"(adapters {m['adapterVersions']})"
    )
    for s, st in m["sources"].items():
        print(
            f"  {s:<15} solved {st['questionsSolved']:>5}  correct attempts {st['correctAttempts']}/{st['attempts']}"
        )
    for s, lg in out["sft"].items():
        print(f"  sft {s:<15} steps {lg['steps']}  train loss {lg['trainLoss']:.4f}  {lg['seconds']:.0f} s")
    return 0


def cmd_eval(args) -> int:
    from flowdpo.compile.common import CompileError
    from flowdpo.compile.eval import evaluate_run, render_table
    from flowdpo.storage import RunLayout, open_store

    doc = _doc(args)
    try:
        table = evaluate_run(
            doc,
            require_finished=not args.allow_unfinished,
            show_progress=not args.no_progress,
            only=[r.strip() for r in args.rows.split(",")] if args.rows else None,
        )
    except CompileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_table(table))
    root = open_store(doc.storage_uri()).local_root
    where = (
        root / RunLayout.eval_table_md
        if root is not None
        else f"{doc.storage_uri()}/{RunLayout.eval_table_md}"
    )
    print(f"table: {where}")
    return 0


def add_subparsers(sub) -> None:
    c = sub.add_parser(
        "compile", help="traces of the trained flow + baselines (equal data), SFT one model per source"
    )
    c.add_argument("file", help="FlowDPORun YAML of a finished run")
    c.add_argument("--storage", help="override spec.storage.uri (a folder or URI)")
    c.add_argument("--traces-only", action="store_true", help="generate and select traces, no SFT")
    c.add_argument(
        "--allow-unfinished", action="store_true", help="use the current adapters of an unfinished run"
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_compile)

    e = sub.add_parser("eval", help="accuracy of 0-shot and SFT models on the eval sets (compile table)")
    e.add_argument("file", help="FlowDPORun YAML of a compiled run")
    e.add_argument("--storage", help="override spec.storage.uri (a folder or URI)")
    e.add_argument(
        "--allow-unfinished", action="store_true", help="evaluate although training has not finished"
    )
    e.add_argument(
        "--rows",
        help="evaluate only these rows, comma-separated (zero-shot, sft-<source>, flow-trained, flow-untrained, "
        "zero-shot-sampled)",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    from flowdpo.compile.judge import add_subparser as add_judge

    add_judge(sub)
