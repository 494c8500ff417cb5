"""The data-parallel trainer's parts that need no real model: the launch command the operator's trainer Job
runs, how a batch is split over ranks, and one DPO step computed by 2 real gloo processes against the same
step in one process (a tiny randomly initialised Llama with real peft adapters: the arithmetic of the
gradient sum, independent of any checkpoint). The end-to-end run on the real model is
tests/model/test_trainer_parallel_run.py."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch

from flowdpo.cli.main import build_parser
from flowdpo.train.launch import torchrun_command
from flowdpo.train.parallel import DataParallel
from flowdpo_operator import builders
from flowdpo_operator.builders import RUN_FILE
from tests.support.operator_support import OWNER, run_doc


def _trainer_container(gpus: int) -> dict:
    body = builders.job(run_doc({"kubernetes": {"trainer": {"gpus": gpus}}}), OWNER, "trainer")
    return next(c for c in body["spec"]["template"]["spec"]["containers"] if c["name"] == "trainer")


@pytest.mark.parametrize("gpus", [2, 8])
def test_a_multi_gpu_trainer_job_runs_flowdpo_trainer_under_torchrun_one_rank_per_gpu(gpus):
    c = _trainer_container(gpus)
    assert c["command"][:5] == ["torchrun", "--standalone", f"--nproc-per-node={gpus}", "--no-python", "flowdpo"]
    args = build_parser().parse_args(c["command"][5:])  # the flowdpo CLI accepts what torchrun runs
    assert c["command"][5] == "trainer" and args.file == RUN_FILE and args.metrics_port == 9400
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)


@pytest.mark.parametrize("gpus", [0, 1])
def test_zero_or_one_gpu_keeps_the_plain_trainer_command(gpus):
    assert _trainer_container(gpus)["command"][:2] == ["flowdpo", "trainer"]


def test_other_steps_never_run_under_torchrun():
    doc = run_doc({"kubernetes": {"trainer": {"gpus": 4}, "compile": {"gpus": 4}, "prepare": {"gpus": 4}}})
    for step in ("prepare", "compile", "eval"):
        body = builders.job(doc, OWNER, step)
        assert body["spec"]["template"]["spec"]["containers"][0]["command"][0] == "flowdpo", step


@pytest.mark.parametrize("bad", [0, 1, -2, True, 2.0, "2"])
def test_torchrun_command_refuses_fewer_than_two_processes_or_a_non_integer(bad):
    with pytest.raises(ValueError, match="at least 2 processes"):
        torchrun_command(bad, ["trainer", "x.yaml"])


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 8, 9])
def test_shares_cover_the_batch_once_in_order_and_differ_by_at_most_one(world, n):
    items = list(range(n))
    shares = [DataParallel(r, world, torch.device("cpu")).share(items) for r in range(world)]
    assert [x for s in shares for x in s] == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


# -- one DPO step: 2 gloo ranks == 1 process ------------------------------------------------------------
TRAINING = SimpleNamespace(micro_batch_size=2, beta=0.5, grad_clip=1.0)


def _tiny_policy():
    from transformers import LlamaConfig, LlamaForCausalLM

    from flowdpo.spec import LoraSpec
    from flowdpo.train.adapters import attach_adapters

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    model = attach_adapters(LlamaForCausalLM(config), LoraSpec(r=4, alpha=8, dropout=0.0), seed=0)
    # LoRA B starts at zero; give the adapters weights so that the step's gradients reach A and B.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model


def _pairs(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)

    def ids(k: int) -> list[int]:
        return torch.randint(3, 97, (k,), generator=g).tolist()

    return [
        {"pairId": str(i), "promptIds": ids(5 + i % 3), "chosenIds": ids(2 + i % 4), "rejectedIds": ids(3 + i % 2)}
        for i in range(n)
    ]


def _step(parallel, pairs):
    from flowdpo.train.adapters import adapter_parameters
    from flowdpo.train.dpo import dpo_step

    model = _tiny_policy()
    # Plain SGD: the weight change is the (clipped) summed gradient itself, which is what is compared. (Adam's
    # first step, ~lr * sign(gradient), would amplify rounding in gradients near zero.)
    opt = torch.optim.SGD(adapter_parameters(model, "answer"), lr=0.1)
    stats = dpo_step(model, "answer", pairs, opt, TRAINING, 0, seed=5, parallel=parallel)
    return stats, {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _rank(rank: int, world: int, port: int, batches, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for i, pairs in enumerate(batches):
            stats, weights = _step(DataParallel(rank, world, torch.device("cpu")), pairs)
            out.put(((rank, i), (stats, {n: w.numpy() for n, w in weights.items()})))  # plain pickles
    finally:
        dist.destroy_process_group()


def test_one_dpo_step_on_two_gloo_ranks_equals_the_step_in_one_process():
    import torch.multiprocessing as mp

    # 5 pairs: unequal shares (3 + 2); 1 pair: rank 1 scores nothing but still takes part in the sums.
    batches = [_pairs(5), _pairs(1)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, batches, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=300) for _ in range(2 * len(batches)))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    initial = {n: p.detach() for n, p in _tiny_policy().named_parameters()}
    for i, pairs in enumerate(batches):
        single_stats, single = _step(None, pairs)
        (stats0, weights0), (stats1, weights1) = results[(0, i)], results[(1, i)]
        weights0, weights1 = ({n: torch.from_numpy(w) for n, w in ws.items()} for ws in (weights0, weights1))
        assert stats0 == stats1 and stats0["pairs"] == len(pairs)
        for k in ("loss", "margin", "accuracy"):
            assert stats0[k] == pytest.approx(single_stats[k], abs=1e-6)
        moved = 0
        for name, w in single.items():
            assert torch.equal(weights0[name], weights1[name]), name  # the ranks stay identical
            # float32 gradients of the same pairs summed in another order (other thread counts too): relative
            # rounding ~1e-6, plus one ulp of the weights (~1e-8) in the difference. The deltas are 1e-5..1e-3,
            # and a wrong reduction (a mean over ranks, a lost share) is off by a factor.
            d_par, d_one = weights0[name] - initial[name], w - initial[name]
            assert torch.allclose(d_par, d_one, rtol=1e-4, atol=1e-7), (name, (d_par - d_one).abs().max())
            moved += int(".answer." in name and not torch.equal(w, initial[name]))
        assert moved > 0, "the step moved no Answer weight: the comparison would prove nothing"
