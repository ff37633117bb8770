"""The embedded scikit-learn digits dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from dcbench_tesla.data import DATASETS, DIGITS_MEAN, DIGITS_STD, load_dataset
from dcbench_tesla.data._build import validation_split
from dcbench_tesla.data.digits import load_digits, split_indices


@pytest.fixture(scope="module")
def digits():
    return load_digits(None, zca=False, cache_dir=None)


def test_shapes_classes_and_source(digits):
    assert digits.name == "digits"
    assert digits.classes == [str(i) for i in range(10)]
    assert digits.train_images.shape == (1295, 1, 8, 8)  # the training pool: 1,438 less 143 for validation
    assert digits.val_images.shape == (143, 1, 8, 8)
    assert digits.test_images.shape == (359, 1, 8, 8)
    assert digits.train_images.dtype == torch.float32
    assert digits.train_labels.dtype == torch.int64
    assert digits.source == "scikit-learn load_digits"
    assert digits.preprocessing.kind == "meanstd"
    assert digits.preprocessing.mean == DIGITS_MEAN and digits.preprocessing.std == DIGITS_STD


def test_split_is_stratified_disjoint_and_fixed():
    target = sk_load_digits().target
    train, test = split_indices(target)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(target)))
    per_class = np.bincount(target)
    assert np.array_equal(np.bincount(target[test]), np.round(0.2 * per_class).astype(int))
    again_train, again_test = split_indices(target)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    other_train, _ = split_indices(target, seed=1)
    assert not np.array_equal(train, other_train)


def test_pixels_follow_the_formula(digits):
    bunch = sk_load_digits()
    train, test = split_indices(bunch.target)
    pool, val = validation_split(DATASETS.get("digits"), bunch.target[train])
    assert digits.val_labels.tolist() == bunch.target[train[val]].tolist()
    train = train[pool]
    raw = torch.from_numpy(bunch.images[train] / 16.0).float().unsqueeze(1)
    expected = (raw - DIGITS_MEAN[0]) / DIGITS_STD[0]
    torch.testing.assert_close(digits.train_images, expected)
    assert digits.train_labels.tolist() == bunch.target[train].tolist()
    assert digits.test_labels.tolist() == bunch.target[test].tolist()
    # one known pixel, by hand
    value = bunch.images[train[5], 2, 3] / 16.0
    assert digits.train_images[5, 0, 2, 3].item() == pytest.approx((value - DIGITS_MEAN[0]) / DIGITS_STD[0])
    back = digits.preprocessing.invert(digits.train_images)
    torch.testing.assert_close(back, raw)
    assert float(back.min()) == 0.0 and float(back.max()) == 1.0


def test_constants_match_the_training_split():  # before the validation split: the constants predate it
    bunch = sk_load_digits()
    train, _ = split_indices(bunch.target)
    x = bunch.images[train] / 16.0
    # measured: mean 0.3059, std 0.3765 (population std)
    assert x.mean() == pytest.approx(DIGITS_MEAN[0], abs=1e-4)
    assert x.std() == pytest.approx(DIGITS_STD[0], abs=1e-4)


def test_registry_path_ignores_root(tmp_path):
    ds = load_dataset("digits", tmp_path / "does-not-exist")
    assert ds.train_images.shape == (1295, 1, 8, 8)
    assert not (tmp_path / "does-not-exist").exists()
