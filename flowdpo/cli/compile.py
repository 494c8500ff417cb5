"""`flowdpo compile` and `flowdpo eval` (after `flowdpo run` has trained the flow).

    flowdpo compile RUN.yaml [--traces-only] [--allow-unfinished]   traces (3 sources, equal data) + SFT
    flowdpo eval RUN.yaml [--allow-unfinished] [--stored-only]      the compile table (eval/table.md)
    flowdpo judge RUN.yaml --judge-url URL --judge-model M          pairwise LLM judge of two trace sources

Both read the run's storage from the run file (or --storage); the file's `compile` section may be added or
changed after training, every other section must match the stored spec. Both can be stopped and rerun:
finished trace parts and SFT adapters are reused.
"""

from __future__ import annotations

import os
import sys

from flowdpo.cli.arguments import positive_int
from flowdpo.cli.common import add_storage_option, load_with_storage


def cmd_compile(args) -> int:
    from flowdpo.compile.pipeline import compile_run

    doc = load_with_storage(args)
    print(f"compile {doc.name}: storage {doc.storage_uri()}", file=sys.stderr)
    out = compile_run(
        doc,
        require_finished=not args.allow_unfinished,
        traces_only=args.traces_only,
        show_progress=not args.no_progress,
    )
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
    from flowdpo.compile.eval import evaluate_run
    from flowdpo.compile.eval_table import render_table
    from flowdpo.storage import RunLayout, open_store

    doc = load_with_storage(args)
    table = evaluate_run(
        doc,
        require_finished=not args.allow_unfinished,
        show_progress=not args.no_progress,
        only=[r.strip() for r in args.rows.split(",")] if args.rows else None,
        stored_only=args.stored_only,
    )
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
    add_storage_option(c)
    c.add_argument("--traces-only", action="store_true", help="generate and select traces, no SFT")
    c.add_argument(
        "--allow-unfinished", action="store_true", help="use the current adapters of an unfinished run"
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_compile)

    e = sub.add_parser("eval", help="accuracy of 0-shot and SFT models on the eval sets (compile table)")
    e.add_argument("file", help="FlowDPORun YAML of a compiled run")
    add_storage_option(e)
    e.add_argument(
        "--allow-unfinished", action="store_true", help="evaluate although training has not finished"
    )
    e.add_argument(
        "--rows",
        help="evaluate only these rows, comma-separated (zero-shot, sft-<source>, flow-trained, flow-untrained, "
        "zero-shot-sampled)",
    )
    e.add_argument(
        "--stored-only",
        action="store_true",
        help="rebuild the table from stored outcomes; fail instead of answering a row again",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    _add_judge(sub)


def cmd_judge(args) -> int:
    from flowdpo.compile.common import open_run
    from flowdpo.compile.judge import ChatJudge, compare_sources, format_result
    from flowdpo.storage import RunLayout

    doc = load_with_storage(args)
    store = open_run(doc, require_finished=False)
    judge = ChatJudge(args.judge_url, args.judge_model, os.environ.get(args.api_key_env))
    result = compare_sources(store, judge, args.a, args.b, limit=args.questions, seed=doc.spec.seed)
    print(format_result(result))
    print(f"verdicts: {store.uri}/{RunLayout.compile_judge(args.a, args.b)}")
    return 0


def _add_judge(sub) -> None:
    from flowdpo.names import COMPILE_SOURCES

    j = sub.add_parser(
        "judge", help="pairwise LLM judge of two trace sources (any OpenAI-compatible endpoint), win rates"
    )
    j.add_argument("file", help="FlowDPORun YAML of a compiled run")
    add_storage_option(j)
    j.add_argument("--judge-url", required=True, help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    j.add_argument("--judge-model", required=True, help="judge model name, e.g. gpt-4o (the paper's judge)")
    j.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    j.add_argument("--a", default="flow-generated", choices=COMPILE_SOURCES, help="first source")
    j.add_argument("--b", default="self-generated", choices=COMPILE_SOURCES, help="second source")
    j.add_argument("--questions", type=positive_int, help="judge a seeded sample of this many questions (default all)")
    j.set_defaults(func=cmd_judge)
