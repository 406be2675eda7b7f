"""Decisions that several ranks must take together (issue 32, items 4 and 6), with two gloo
processes: a non-finite loss on one rank stops every rank at the same step, and the best
checkpoint is decided on rank 0 (its save is a collective). Before, one rank went on into a
collective the other never joined: a hang until the process group's time-out (here 30 s).
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from deit.config import Config

STUDENT = "deit_pico_patch7_28"


def _join(rank: int, world: int, tmp: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp / 'init'}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )


def _both(rank: int, world: int, tmp: Path) -> None:
    """One of two gloo processes: both cases, each one's outcome in ``tmp/<case><rank>.json``."""
    _join(rank, world, tmp)
    for case, work in (("nan", _nan_on_rank_1), ("best", _best_on_rank_0)):
        (tmp / f"{case}{rank}.json").write_text(json.dumps(work(rank, tmp)))
    if dist.is_initialized():
        # both ranks done before either tears down: a rank whose peer has closed the group
        # while it still talks to it aborts ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ranks")
    mp.spawn(_both, args=(2, tmp), nprocs=2, join=True)
    return tmp


def _nan_on_rank_1(rank: int, tmp: Path) -> dict:
    """A DDP step per batch; rank 1's loss is NaN at batch 2 (CPU: checked every step), then
    the accelerators' check (a flag read every log interval) set on rank 1 only."""
    from deit.distillation import DistillationTask
    from deit.engine import NonFiniteLossError, _Tally, train_one_epoch

    record: dict = {}
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(4, 3))
    batches = [(torch.randn(2, 4), torch.tensor([0, 2]))] * 4
    calls = {"n": 0}

    def criterion(outputs, targets):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(outputs, targets)
        return loss * float("nan") if rank == 1 and calls["n"] == 2 else loss

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    task = DistillationTask(model, criterion)
    for key, work in (
        ("cpu", lambda: train_one_epoch(task, batches, opt, torch.device("cpu"), 0)),
        ("device", lambda: _device_check(_Tally, rank)),
    ):
        try:
            work()
            record[key] = "no error"
        except NonFiniteLossError as e:
            record[key] = str(e)
        except Exception as e:  # the other rank left: its collective failed or timed out
            record[key] = f"{type(e).__name__}"
            break
    record["steps"] = calls["n"]
    return record


def _device_check(tally_cls, rank: int) -> None:
    tally = tally_cls(torch.device("cpu"), num_updates=10)
    tally.bad = torch.tensor(rank == 1)  # as an accelerator's tally after a non-finite loss
    tally.check(epoch=0, updates=20)


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(two_ranks):
    r0, r1 = (json.loads((two_ranks / f"nan{r}.json").read_text()) for r in (0, 1))
    advice = "lower --lr, enable --clip-grad, or check the data."
    assert r1["cpu"] == (
        f"The training loss is nan on process 1 of 2 at epoch 1, batch 2 (update 2); {advice}"
    )
    assert r0["cpu"] == r1["cpu"].replace("is nan", "is non-finite")
    assert r0["steps"] == r1["steps"] == 2  # rank 0 applied nothing of step 2 either
    device = (
        "The training loss became non-finite on process 1 of 2 at epoch 1, between updates 11 "
        f"and 20 (checked every log interval on this device); {advice}"
    )
    assert r0["device"] == r1["device"] == device


def _best_on_rank_0(rank: int, tmp: Path) -> dict:
    """A 1-epoch run whose evaluation (without --dist-eval each rank evaluates the whole set)
    gives rank 1 a lower accuracy than rank 0: the ranks must still agree on a new best."""
    from deit.checkpoints import RunCheckpoint
    from deit.train import loop, run

    saves: list[str] = []
    save = RunCheckpoint.save

    def counted(self, path):
        saves.append(Path(path).name)
        return save(self, path)

    RunCheckpoint.save = counted
    evaluate = loop._evaluate

    def uneven(state, model, teacher=None):
        out = evaluate(state, model, teacher)
        return {**out, "acc1": 60.0 - 20.0 * rank}  # e.g. cuDNN picking other kernels per rank

    loop._evaluate = uneven
    cfg = Config(
        model=STUDENT, input_size=28, data_set="digits", train_subset=16, batch_size=4,
        epochs=1, warmup_epochs=0, num_workers=0, output_dir=str(tmp / "out"), model_ema=False,
        repeated_aug=False, pin_mem=False, device="cpu", val_images=8,
    )  # fmt: skip
    try:
        result = run(cfg, progress=False)
        return {"best": result["best_acc1"], "acc1": result["final"]["acc1"], "saves": saves}
    except Exception as e:
        return {"error": type(e).__name__}


def test_the_best_checkpoint_is_decided_on_rank_0_for_every_rank(two_ranks):
    r0, r1 = (json.loads((two_ranks / f"best{r}.json").read_text()) for r in (0, 1))
    assert r0 == {"best": 60.0, "acc1": 60.0, "saves": ["checkpoint.pth", "best_checkpoint.pth"]}
    assert r1 == {"best": 60.0, "acc1": 60.0, "saves": []}  # rank 0's figures, no deadlock
    assert (two_ranks / "out" / "best_checkpoint.pth").is_file()
