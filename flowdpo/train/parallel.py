"""Data-parallel DPO over PyTorch distributed: the multi-GPU trainer (`torchrun`, one process per GPU).

Launch: `torchrun --standalone --nproc-per-node=N --no-python flowdpo trainer RUN.yaml` (`flowdpo.train.launch`;
the operator's trainer Job runs exactly this when `spec.kubernetes.trainer.gpus` > 1). Each process loads the
whole policy (LoRA training: the frozen base fits one GPU, only adapters train) and, per optimizer step,
scores its share of the batch's pairs; the gradients of the stepping adapter are then summed over all ranks
(one all-reduce), so every rank applies the same update as one process on the whole batch would.

Why not `torch.nn.parallel.DistributedDataParallel`: DDP fixes the set of parameters that need gradients
when it wraps the model, while the trainer steps two adapters in turn on one peft model (only the stepping
adapter's LoRA weights require grad). DDP's reducer would wait for the other adapter's gradients, which
never come. The reduction itself is the one DDP performs, one all-reduce per step, without DDP's overlap
of communication and backward (LoRA gradients are ~0.1-1% of the model, so that overlap buys little).
FSDP2 shards the base model too; it is not used because a LoRA trainer's frozen base fits one GPU at the
sizes this project trains (8B in bf16: 16 GB) and sharding would add an all-gather per layer per forward.

Roles: rank 0 is the trainer program (writer lease, storage, checkpoints, progress, metrics); it sends every
other rank what to compute (`Leader`): the full state after a restore, then one message per optimizer step
(adapter, pairs, seed). Ranks > 0 (`follow`) only compute and never touch the run's storage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass

import torch

from flowdpo.names import ADAPTERS

log = logging.getLogger(__name__)

# A follower blocks in a collective while the leader waits for rollouts or for the writer lease; the leader
# sends a keepalive while it waits for results, and this timeout is only the last resort when a rank hangs
# (torchrun already ends every rank as soon as one of them exits with an error).
DEFAULT_TIMEOUT_SECONDS = 6 * 3600.0  # FLOWDPO_DIST_TIMEOUT_SECONDS overrides it
KEEPALIVE_SECONDS = 300.0


@dataclass
class DataParallel:
    """This process's place in the process group."""

    rank: int
    world: int
    device: torch.device

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's contiguous slice of a batch (sizes differ by at most one; a rank may get none)."""
        n, w, r = len(items), self.world, self.rank
        start = r * (n // w) + min(r, n % w)
        return items[start : start + n // w + (1 if r < n % w else 0)]

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over all ranks (one flat all-reduce); a rank that scored no pair
        contributes zeros."""
        import torch.distributed as dist

        flat = torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params
        ])  # fmt: skip
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast(self, obj=None):
        """`obj` from rank 0 to every rank (pickled); returns it on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]


def init_from_env(device: str = "auto") -> DataParallel | None:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT); None for
    a single process. `device` is the run's `spec.device`: NCCL on GPUs (each rank on cuda:LOCAL_RANK), gloo
    on CPUs (`device: cpu`, no GPU, or FLOWDPO_DIST_BACKEND=gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device != "cpu" and torch.cuda.is_available() and os.environ.get("FLOWDPO_DIST_BACKEND", "") != "gloo":
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"rank {rank}: LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible; "
                "launch as many processes per node as the pod has GPUs (spec.kubernetes.trainer.gpus)"
            )
        torch.cuda.set_device(local)  # the model's "cuda" is this rank's GPU
        backend, device = "nccl", torch.device("cuda", local)
    else:
        backend, device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        from flowdpo.envvars import env_number

        timeout = env_number("FLOWDPO_DIST_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, positive=True)
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout))
    log.info("rank %d of %d (%s on %s)", rank, world, backend, device)
    return DataParallel(rank, world, device)


def close(parallel: DataParallel | None) -> None:
    import torch.distributed as dist

    if parallel is not None and dist.is_initialized():
        dist.destroy_process_group()


def weights_digest(model) -> str:
    """sha256 of every LoRA weight, in name order: equal on every rank while the ranks are in step."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


# -- the leader/follower protocol ---------------------------------------------------------------------------
STEP, SYNC, KEEPALIVE, STOP = "step", "sync", "keepalive", "stop"


class Leader:
    """Rank 0's side: tells the other ranks what to compute."""

    def __init__(self, parallel: DataParallel):
        self.parallel = parallel

    def step(self, adapter: str, pairs: list[dict], seed: int) -> None:
        self.parallel.broadcast((STEP, adapter, pairs, seed))

    def sync(self, model, optimizers: dict) -> None:
        """Send every LoRA weight and optimizer state (after a restore): all ranks start equal."""
        from flowdpo.train.adapters import optimizer_bytes

        self.parallel.broadcast((SYNC, sorted(optimizers)))
        _broadcast_lora(self.parallel, model)
        self.parallel.broadcast({a: optimizer_bytes(o) for a, o in optimizers.items()})

    def keepalive(self) -> None:
        self.parallel.broadcast((KEEPALIVE,))

    def stop(self, model, *, check: bool) -> None:
        """End the followers. With `check`, every rank's LoRA weights must be equal (RuntimeError if not)."""
        import torch.distributed as dist

        self.parallel.broadcast((STOP, check))
        if check:
            digests = [None] * self.parallel.world
            dist.all_gather_object(digests, weights_digest(model))
            if len(set(digests)) != 1:
                raise RuntimeError(f"data-parallel ranks diverged: LoRA weight digests {digests}")


def _broadcast_lora(parallel: DataParallel, model) -> None:
    import torch.distributed as dist

    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_" in name and any(f".{a}." in name for a in ADAPTERS):
            buf = p.data.contiguous()
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != p.data.data_ptr():
                p.data.copy_(buf)


def follow(parallel: DataParallel, model, optimizers: dict, training, pad_id: int) -> int:
    """A rank > 0: compute what the leader sends until it says stop; returns the optimizer steps taken."""
    import torch.distributed as dist

    from flowdpo.train.adapters import load_optimizer
    from flowdpo.train.dpo import dpo_step

    steps = 0
    while True:
        msg = parallel.broadcast()
        kind = msg[0]
        if kind == STEP:
            _, adapter, pairs, seed = msg
            dpo_step(model, adapter, pairs, optimizers[adapter], training, pad_id, seed, parallel=parallel)
            steps += 1
        elif kind == SYNC:
            _broadcast_lora(parallel, model)
            for a, data in parallel.broadcast().items():
                load_optimizer(optimizers[a], data)
        elif kind == STOP:
            if msg[1]:
                dist.all_gather_object([None] * parallel.world, weights_digest(model))
            return steps
        elif kind != KEEPALIVE:
            raise RuntimeError(f"rank {parallel.rank}: unknown message {kind!r} from rank 0")
