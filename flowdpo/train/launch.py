"""The command that starts the data-parallel trainer (`flowdpo.train.parallel`). Kept free of torch: the
operator, which has no torch, builds the trainer Job's command with it."""

from __future__ import annotations


def torchrun_command(nproc: int, flowdpo_args: list[str]) -> list[str]:
    """The command line that runs `flowdpo <flowdpo_args>` as `nproc` data-parallel ranks on this node: one
    process per GPU, a local rendezvous (`--standalone`: a single pod, no rendezvous service), and no
    restarts inside the pod (a failed rank fails the pod; the Job's next pod resumes from storage)."""
    if type(nproc) is not int or nproc < 2:
        raise ValueError(f"a torchrun launch needs at least 2 processes, got {nproc!r}")
    return ["torchrun", "--standalone", f"--nproc-per-node={nproc}", "--no-python", "flowdpo", *flowdpo_args]
