"""The hot loop's bookkeeping: running sums on the device, non-finite losses found without a
host read per step on accelerators (exercised on the CPU through the same code)."""

from __future__ import annotations

import pytest
import torch

from deit.distillation import StepOutput
from deit.engine import NonFiniteLossError, _Tally


def _accelerator_like_tally(num_updates: int = 0) -> _Tally:
    """A tally that defers its non-finite check, as it does on CUDA (the flag lives on the CPU
    here, the code path is the same)."""
    tally = _Tally(torch.device("cpu"), num_updates)
    tally.bad = torch.zeros((), dtype=torch.bool)
    return tally


def test_tally_sums_terms_on_the_device_and_skips_missing_ones() -> None:
    tally = _Tally(torch.device("cpu"), 0)
    assert tally.bad is None  # the CPU checks each loss before its step instead
    tally.add(StepOutput(torch.tensor(2.0), torch.tensor(1.5), None, None), 16, 0, 1, 10)
    tally.add(StepOutput(torch.tensor(4.0), torch.tensor(2.5), None, None), 16, 0, 2, 10)
    assert tally.totals.tolist() == [6.0, 4.0, 0.0, 0.0]
    assert (tally.steps, tally.images) == (2, 32)


def test_deferred_check_raises_at_the_log_interval_naming_the_range() -> None:
    tally = _accelerator_like_tally(num_updates=10)
    finite = StepOutput(torch.tensor(1.0), torch.tensor(1.0), None, None)
    tally.add(finite, 4, 2, 11, every=5)
    tally.add(
        StepOutput(torch.tensor(float("nan")), torch.tensor(1.0), None, None), 4, 2, 12, every=5
    )
    with pytest.raises(NonFiniteLossError, match="epoch 3, between updates 11 and 12"):
        tally.check(2, 12)  # the epoch's end checks too
    tally = _accelerator_like_tally(num_updates=10)
    tally.add(finite, 4, 2, 11, every=3)
    tally.add(finite, 4, 2, 12, every=3)  # update 12: a multiple of 3, checked and clean
    assert tally.checked == 12
    with pytest.raises(NonFiniteLossError, match="between updates 13 and 15"):
        for u in (13, 14, 15):
            tally.add(StepOutput(torch.tensor(float("inf")), None, None, None), 4, 2, u, every=3)
