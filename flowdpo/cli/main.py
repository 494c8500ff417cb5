"""The `flowdpo` command line.

    flowdpo run [RUN.yaml]        the whole pipeline on this machine (default: the embedded quickstart)
    flowdpo status RUN.yaml|DIR|URI      progress of a run
    flowdpo report RUN.yaml|DIR|URI      progressive-accuracy figure + markdown summary
    flowdpo prepare RUN.yaml      write example shards to the run's storage (cluster: the prepare step)
    flowdpo validate RUN.yaml     check a run file and print the resolved spec
    flowdpo signal [RUN.yaml]     before training: do the pairs carry a learnable signal? (+ answer lengths)
    flowdpo worker RUN.yaml       rollout worker over the run's object store (cluster; see flowdpo/run)
    flowdpo trainer RUN.yaml      trainer service over the run's object store (cluster)
    flowdpo compile RUN.yaml      after training: traces (flow, base model, ground truth) + SFT per source
    flowdpo eval RUN.yaml         the compile table: 0-shot and SFT models on the eval sets, 95% CIs
    flowdpo judge RUN.yaml ...    pairwise LLM judge (OpenAI-compatible endpoint) of two trace sources
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flowdpo.cli import cluster as cluster_commands
from flowdpo.cli import compile as compile_commands
from flowdpo.cli import run as run_commands


def error_exit_codes() -> dict[type[BaseException], int]:
    """The one table of errors a user can cause and their exit codes: message on stderr, no traceback."""
    from flowdpo.compile.common import CompileError
    from flowdpo.envvars import EnvError
    from flowdpo.loader import BackendError
    from flowdpo.models import ModelError
    from flowdpo.run.prepare import DataError, RunConflictError
    from flowdpo.run.writer import RunBusyError
    from flowdpo.spec import SpecError
    from flowdpo.storage import StoreError

    user_errors = (SpecError, ModelError, RunConflictError, StoreError, CompileError, BackendError, DataError,
                   RunBusyError, EnvError)
    return {cls: 2 for cls in user_errors}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowdpo", description="Train LLM flows with online DPO (Flow-DPO).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    for module in (run_commands, cluster_commands, compile_commands):
        module.add_subparsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.environ.get("FLOWDPO_OFFLINE"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    codes = error_exit_codes()
    try:
        return args.func(args)
    except tuple(codes) as e:
        print(f"error: {e}", file=sys.stderr)
        return next(code for cls, code in codes.items() if isinstance(e, cls))
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flowdpo status ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
