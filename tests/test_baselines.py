"""Validation digits (``--val-images``) and the demo's scikit-learn baselines on the same digits
a run trains and is scored on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deit.baselines import digit_arrays, fit_baselines
from deit.config import Config, ConfigError
from deit.data import build_dataset, subset_split
from deit.train.data import _subset


def test_subset_split_cuts_one_fixed_permutation():
    train, val, rest = subset_split(4000, 500, 1000)
    assert (len(train), len(val), len(rest)) == (500, 1000, 2500)
    assert sorted(train + val + rest) == list(range(4000))
    order = torch.randperm(4000, generator=torch.Generator().manual_seed(0)).tolist()
    assert train == order[:500] and val == sorted(order[500:1500])
    # a smaller N's images are part of a larger N's, whatever the validation size
    assert subset_split(4000, 250, 0)[0] == train[:250]
    with pytest.raises(ValueError, match="--train-subset 3500 plus --val-images 1000"):
        subset_split(4000, 3500, 1000)


def test_val_images_needs_a_subset():
    with pytest.raises(ConfigError, match="'val_images' is set but 'train_subset' is 0"):
        Config(val_images=10).validate()
    with pytest.raises(ConfigError, match="val_images"):
        Config(val_images=-1, train_subset=10).validate()


@pytest.mark.parametrize("eval_unused, expected", [(False, 1000), (True, 1000 + 2500)])
def test_run_evaluates_on_validation_or_on_what_is_left(eval_unused, expected):
    cfg = Config(data_set="mnist5k", train_subset=500, val_images=1000, eval_unused=eval_unused)
    train_set = build_dataset("mnist5k", None, "train")
    subset, val_set = _subset(cfg, train_set, build_dataset("mnist5k", None, "val"), None)
    assert len(subset) == 500 and len(val_set) == expected
    # the baselines read the very same digits
    xtr, ytr, xte, yte = digit_arrays("mnist5k", 500, 1000, eval_unused)
    first = np.asarray(subset[0][0].convert("L"), np.float32).ravel() / 255.0
    assert np.array_equal(xtr[0], first) and ytr[0] == subset[0][1]
    last = np.asarray(val_set[len(val_set) - 1][0].convert("L"), np.float32).ravel() / 255.0
    assert np.array_equal(xte[-1], last) and yte[-1] == val_set[len(val_set) - 1][1]


def test_baselines_score_the_held_out_digits():
    records = {r["variant"]: r for r in fit_baselines("mnist5k", 200, 1000, False)}
    assert set(records) == {"logistic_regression", "knn", "svm"}
    xtr, ytr, xte, yte = digit_arrays("mnist5k", 200, 1000, False)
    # 3-nearest neighbours by hand: squared distances, majority of the 3 labels (ties: the
    # nearest neighbour's label among the most frequent, as scikit-learn's uniform vote)
    d = ((xte[:, None, :] - xtr[None, :, :]) ** 2).sum(-1)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :3]
    votes = np.stack([np.bincount(ytr[row], minlength=10) for row in nearest])
    by_hand = 100.0 * float((votes.argmax(1) == yte).mean())
    assert records["knn"]["top1"] == pytest.approx(by_hand, abs=0.11)
    for r in records.values():
        assert r["train_images"] == 200 and r["test_images"] == 1000 and r["seconds"] >= 0
    assert records["svm"]["top1"] > 80.0 and records["logistic_regression"]["top1"] > 75.0


def test_without_validation_digits_the_baselines_score_the_test_split():
    """``--train-subset N`` alone evaluates on the test split; the baselines hold out the same
    digits (the quick demo's set-up)."""
    _, _, xt, yt = digit_arrays("mnist5k", 200, 0, eval_unused=False)
    test = build_dataset("mnist5k", None, "val")
    assert xt.shape == (1000, 28 * 28) and np.array_equal(yt, np.asarray(test.targets))
    np.testing.assert_allclose(xt[3], np.asarray(test.data[3]).reshape(-1) / 255.0, rtol=1e-6)
