"""The validation split: fixed, class-stratified, disjoint from the training pool and the test split."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from dcbench_tesla.data import DATASETS, DatasetSpec, build_dataset, load_dataset
from dcbench_tesla.data._build import VAL_SEED, stratified_split, validation_split
from dcbench_tesla.data.digits import split_indices
from dcbench_tesla.distiller import check_ipc
from dcbench_tesla.errors import UserError


def test_digits_pool_validation_and_test_are_disjoint_stratified_and_complete(digits):
    target = sk_load_digits().target
    train, test = split_indices(target)
    pool, val = validation_split(DATASETS.get("digits"), target[train])
    ids = {"pool": set(train[pool]), "val": set(train[val]), "test": set(test)}
    assert not ids["pool"] & ids["val"] and not ids["pool"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["pool"] | ids["val"] | ids["test"] == set(range(len(target)))
    # stratified: 10% of each training class, rounded
    per_class = np.bincount(target[train])
    assert np.bincount(digits.val_labels.numpy()).tolist() == np.round(0.1 * per_class).astype(int).tolist()
    assert digits.val_labels.tolist() == target[train[val]].tolist()
    assert digits.train_labels.tolist() == target[train[pool]].tolist()


def test_the_split_is_stable_and_independent_of_the_run_seed(digits):
    again = load_dataset("digits")
    assert torch.equal(again.val_images, digits.val_images) and torch.equal(again.train_labels, digits.train_labels)
    labels = np.repeat(np.arange(3), 20)
    first = stratified_split(labels, lambda n: 5, VAL_SEED)
    assert all(
        np.array_equal(a, b) for a, b in zip(first, stratified_split(labels, lambda n: 5, VAL_SEED), strict=True)
    )
    assert not np.array_equal(first[1], stratified_split(labels, lambda n: 5, VAL_SEED + 1)[1])


def test_the_rule_fraction_fixed_count_and_small_classes():
    small = DatasetSpec("x", "m:f", None, None, (), (), "convnet", False, "", "", "", val_fraction=0.1)
    assert [small.val_size(n) for n in (1, 2, 3, 20, 144)] == [0, 1, 1, 2, 14]  # >= 1 when it can, < n always
    fixed = DatasetSpec("y", "m:f", None, None, (), (), "convnet", False, "", "", "", val_per_class=50)
    assert [fixed.val_size(n) for n in (1, 10, 500, 5000)] == [0, 9, 50, 50]
    assert DATASETS.get("cifar10").val_per_class == 500 and DATASETS.get("imagenet64").val_per_class == 10
    assert DATASETS.get("cifar100").val_per_class == 50 and DATASETS.get("tinyimagenet").val_per_class == 50
    none = DatasetSpec("z", "m:f", None, None, (), (), "convnet", False, "", "", "", val_fraction=0.0)
    assert none.val_size(100) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        DatasetSpec("w", "m:f", None, None, (), (), "convnet", False, "", "", "", val_fraction=1.0)


def test_build_dataset_holds_the_validation_images_out_of_the_pool():
    spec = DatasetSpec("toy", "m:f", (1, 2, 2), 2, (0.5,), (0.25,), "convnet", False, "", "", "", val_per_class=2)
    x = np.arange(20 * 4, dtype=np.uint8).reshape(20, 1, 2, 2)  # every image distinct
    y = np.array([0, 1] * 10)
    ds = build_dataset(spec, train_images=x, train_labels=y, test_images=x[:4], test_labels=y[:4],
                       classes=["a", "b"], zca=False, cache_dir=None, source="toy")  # fmt: skip
    assert ds.train_images.shape[0] == 16 and ds.val_images.shape[0] == 4
    assert torch.bincount(ds.val_labels).tolist() == [2, 2] and ds.min_class_size() == 8

    def pixel_sums(images):  # image i holds pixels 4i..4i+3: its pixel sum names it
        return set(ds.preprocessing.invert(images).mul(255).round().flatten(1).sum(1).tolist())

    assert not pixel_sums(ds.train_images) & pixel_sums(ds.val_images)
    assert ds.split("val")[0] is ds.val_images and ds.split("test")[1] is ds.test_labels
    with pytest.raises(UserError, match="unknown split"):
        ds.split("holdout")


def test_ipc_limits_follow_the_smallest_pool_class(digits):
    assert digits.min_class_size() == 125  # the smallest digits class keeps 125 of its training images
    check_ipc(digits, 125)
    with pytest.raises(UserError, match="between 1 and 125"):
        check_ipc(digits, 126)
