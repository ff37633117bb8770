"""``npz``: your own arrays in one .npz file (x_train, y_train, x_test, y_test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcbench_tesla.data import load_dataset
from dcbench_tesla.errors import UserError

# the loaders read files; the validation split cut from them is tested in test_split.py
pytestmark = pytest.mark.usefixtures("no_validation_split")


def arrays(layout="nhwc", dtype=np.uint8, n=12, classes=3):
    rng = np.random.default_rng(0)
    shape = (n, 6, 6, 3) if layout == "nhwc" else (n, 3, 6, 6) if layout == "nchw" else (n, 6, 6)
    x = rng.integers(0, 256, size=shape).astype(np.uint8)
    if dtype != np.uint8:
        x = (x / 255.0).astype(dtype)
    y = np.arange(n) % classes
    return {"x_train": x, "y_train": y, "x_test": x[:4], "y_test": y[:4]}


@pytest.mark.parametrize("layout, channels", [("nhwc", 3), ("nchw", 3), ("grey", 1)])
def test_layouts_and_dtypes_load_the_same_pixels(tmp_path, layout, channels):
    for dtype in (np.uint8, np.float32):
        path = tmp_path / f"{layout}-{np.dtype(dtype).name}.npz"
        np.savez(path, **arrays(layout, dtype), classes=np.asarray(["a", "b", "c"]))
        ds = load_dataset("npz", path, cache_dir=tmp_path / "cache")
        assert ds.image_shape == (channels, 6, 6) and ds.classes == ["a", "b", "c"]
        assert ds.train_labels.tolist() == (np.arange(12) % 3).tolist()
        flat = ds.train_images.transpose(0, 1).reshape(channels, -1)
        assert torch.allclose(flat.mean(dim=1), torch.zeros(channels), atol=1e-4)  # normalised on train


def test_a_directory_with_one_npz_is_found(tmp_path):
    np.savez(tmp_path / "mine.npz", **arrays())
    ds = load_dataset("npz", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.classes == ["0", "1", "2"] and ds.source.endswith("mine.npz")


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"y_train": None}, "lacks the array(s) y_train"),
        ({"x_train": np.zeros((12, 6, 6, 5), dtype=np.uint8)}, "1 or 3 channels"),
        ({"x_train": np.full((12, 3, 6, 6), 2.0, dtype=np.float32)}, "within [0, 1]"),
        ({"y_train": np.arange(12) * 0.5}, "1-D integer array"),
        ({"y_train": np.arange(11)}, "12 images but 11 labels"),
        ({"y_train": np.zeros(12, dtype=np.int64)}, "have no training image"),
        ({"y_test": np.asarray([0, 1, 2, -1])}, "labels span"),
        ({"x_train": np.asarray([object()] * 12, dtype=object)}, "object arrays"),
    ],
)
def test_bad_arrays_are_user_errors(tmp_path, change, fragment):
    data = arrays("nchw")
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_dataset("npz", tmp_path / "bad.npz", cache_dir=tmp_path / "cache")


def test_missing_file_and_several_files(tmp_path):
    with pytest.raises(UserError, match="a .npz file"):
        load_dataset("npz", tmp_path, cache_dir=tmp_path / "cache")
    np.savez(tmp_path / "a.npz", **arrays())
    np.savez(tmp_path / "b.npz", **arrays())
    with pytest.raises(UserError, match="holds 2 .npz files"):
        load_dataset("npz", tmp_path, cache_dir=tmp_path / "cache")
