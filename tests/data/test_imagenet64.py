"""Downsampled ImageNet 64x64 loader: npz batches and image folders, written as the real ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcbench_tesla.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset
from dcbench_tesla.data.imagenet64 import load_imagenet64
from dcbench_tesla.errors import UserError

# the loaders read files; the validation split cut from them is tested in test_split.py
pytestmark = pytest.mark.usefixtures("no_validation_split")

BATCH_LABELS = {1: [1, 1, 2, 1, 1000], 2: [1, 2, 2, 3], 10: [3, 3, 500]}  # 1-based, as in the files
VAL_LABELS = [2, 1000, 1]


def _data(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 12288), dtype=np.uint8)


def write_npz(root: Path, mapping: bool = False) -> dict:
    folder = root / "imagenet64"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for number, labels in BATCH_LABELS.items():
        data = _data(rng, len(labels))
        np.savez(
            folder / f"train_data_batch_{number}.npz",
            data=data,
            labels=np.asarray(labels, dtype=np.int64),
            mean=data.mean(axis=0),
        )
        written[number] = data
    written["val"] = _data(rng, len(VAL_LABELS))
    np.savez(folder / "val_data.npz", data=written["val"], labels=np.asarray(VAL_LABELS))
    if mapping:
        (folder / "map_clsloc.txt").write_text("n02119789 1 kit_fox\nn02100735 2 English_setter\n")
    return written


def _normalised(data: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(data.reshape(-1, 3, 64, 64)).float() / 255.0
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_npz_batches(tmp_path):
    written = write_npz(tmp_path, mapping=True)
    ds = load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    assert ds.name == "imagenet64"
    assert ds.num_classes == 1000
    assert ds.classes[:3] == ["kit_fox", "English_setter", "2"]
    assert ds.train_images.shape == (12, 3, 64, 64) and ds.train_images.dtype == torch.float32
    in_order = BATCH_LABELS[1] + BATCH_LABELS[2] + BATCH_LABELS[10]  # batch 10 after batch 2
    assert ds.train_labels.tolist() == [v - 1 for v in in_order]
    assert ds.test_labels.tolist() == [v - 1 for v in VAL_LABELS]
    expected = np.concatenate([written[1], written[2], written[10]])
    torch.testing.assert_close(ds.train_images, _normalised(expected))
    torch.testing.assert_close(ds.test_images, _normalised(written["val"]))
    # channel-first planes: pixel (c, y, x) of image i is data[i, c*4096 + y*64 + x]
    c, y, x = 1, 40, 3
    value = written[2][3, c * 4096 + y * 64 + x] / 255.0
    assert ds.train_images[8, c, y, x].item() == pytest.approx((value - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


def test_max_per_class_keeps_the_first_in_file_order(tmp_path):
    written = write_npz(tmp_path)
    ds = load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache", max_per_class=2)
    # batch 1: 1,1,2,_,1000 ; batch 2: _,2,_,3 ; batch 10: 3,_,500
    assert ds.train_labels.tolist() == [0, 0, 1, 999, 1, 2, 2, 499]
    expected = np.concatenate([written[1][[0, 1, 2, 4]], written[2][[1, 3]], written[10][[0, 2]]])
    torch.testing.assert_close(ds.train_images, _normalised(expected))
    assert ds.test_images.shape == (3, 3, 64, 64)  # val is never subsampled
    with pytest.raises(UserError, match="max_per_class"):
        load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache", max_per_class=0)


def test_registry_call_without_max_per_class(tmp_path):
    write_npz(tmp_path)
    ds = load_dataset("imagenet64", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.train_images.shape == (12, 3, 64, 64)


def test_image_folder(tmp_path):
    folder = tmp_path / "imagenet64"
    rng = np.random.default_rng(1)
    pixels = {}
    for split, counts in (("train", {"n02": 3, "n01": 2}), ("val", {"n01": 1, "n02": 1})):
        for cls, count in counts.items():
            (folder / split / cls).mkdir(parents=True)
            for i in range(count):
                array = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / split / cls / f"{i}.png")
                pixels[(split, cls, i)] = array
    ds = load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache", max_per_class=2)
    assert ds.classes == ["n01", "n02"]
    assert ds.train_labels.tolist() == [0, 0, 1, 1]
    assert ds.test_labels.tolist() == [0, 1]
    png = pixels[("train", "n02", 1)].transpose(2, 0, 1).reshape(1, -1)  # PNG is lossless
    torch.testing.assert_close(ds.train_images[3:4], _normalised(png))
    full = load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    assert full.train_labels.tolist() == [0, 0, 1, 1, 1]


def test_missing(tmp_path):
    with pytest.raises(UserError) as info:
        load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert str(tmp_path / "imagenet64") in msg
    assert "train_data_batch_1..10.npz" in msg and "val_data.npz" in msg
    assert "image-net.org" in msg
    (tmp_path / "imagenet64").mkdir()
    with pytest.raises(UserError, match="train/<class>"):
        load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache")


def test_missing_val(tmp_path):
    write_npz(tmp_path)
    (tmp_path / "imagenet64" / "val_data.npz").unlink()
    with pytest.raises(UserError, match="missing val_data.npz"):
        load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "content",
    [
        b"PK\x03\x04 truncated zip",
        lambda p: np.savez(p, data=np.zeros((2, 100), np.uint8), labels=np.array([1, 2])),
        lambda p: np.savez(p, data=np.zeros((2, 12288), np.uint8), labels=np.array([1, 1001])),
        lambda p: np.savez(p, data=np.zeros((2, 12288), np.uint8), labels=np.array([1])),
        lambda p: np.savez(p, data=np.zeros((2, 12288), np.uint8)),
    ],
)
def test_corrupt_batch(tmp_path, content):
    write_npz(tmp_path)
    path = tmp_path / "imagenet64" / "train_data_batch_2.npz"
    path.unlink()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)
    with pytest.raises(UserError, match="train_data_batch_2.npz"):
        load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_object_arrays_are_refused(tmp_path):
    write_npz(tmp_path)
    marker = tmp_path / "pwned"
    labels = np.empty(1, dtype=object)
    labels[0] = _Payload(marker)
    np.savez(tmp_path / "imagenet64" / "val_data.npz", data=np.zeros((1, 12288), np.uint8), labels=labels)
    with pytest.raises(UserError, match="val_data.npz"):
        load_imagenet64(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    assert not marker.exists()
