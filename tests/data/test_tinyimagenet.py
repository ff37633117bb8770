"""Tiny ImageNet loader, on a tiny copy of its folder layout (real JPEG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcbench_tesla.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset
from dcbench_tesla.data.tinyimagenet import load_tinyimagenet
from dcbench_tesla.errors import UserError

# the loaders read files; the validation split cut from them is tested in test_split.py
pytestmark = pytest.mark.usefixtures("no_validation_split")

WNIDS = ["n02124075", "n01443537", "n04067472"]  # wnids.txt is not sorted; labels follow sorted ids
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n02124075": "Egyptian cat",
    "n04067472": "reel",
    "n00001740": "entity",
}


def _jpeg(path: Path, rng, mode: str = "RGB", size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        array = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    else:
        array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(array, mode=mode).save(path, format="JPEG", quality=90)


def write_tiny(root: Path, per_class: int = 2) -> Path:
    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("".join(f"{k}\t{v}\n" for k, v in WORDS.items()))
    for wnid in WNIDS:
        for i in range(per_class):
            _jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    _jpeg(folder / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_grey.JPEG", rng, mode="L")
    lines = []
    for i, wnid in enumerate(["n04067472", "n01443537", "n01443537", "n02124075"]):
        _jpeg(folder / "val" / "images" / f"val_{i}.JPEG", rng)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t10\t62\t50")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _jpeg(folder / "test" / "images" / "test_0.JPEG", rng)  # unlabelled, ignored
    return folder


def _decoded(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).float() / 255.0


def test_load_tinyimagenet(tmp_path):
    folder = write_tiny(tmp_path)
    ds = load_tinyimagenet(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    assert ds.name == "tinyimagenet"
    assert ds.classes == ["goldfish", "Egyptian cat", "reel"]  # sorted wnids, first synonym
    assert ds.train_images.shape == (7, 3, 64, 64) and ds.train_images.dtype == torch.float32
    assert ds.train_labels.tolist() == [0, 0, 1, 1, 1, 2, 2]  # n02124075 holds the extra grey image
    assert ds.test_images.shape == (4, 3, 64, 64)
    assert ds.test_labels.tolist() == [2, 0, 0, 1]
    assert ds.source == str(folder)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    first = folder / "train" / "n01443537" / "images" / "n01443537_0.JPEG"
    torch.testing.assert_close(ds.train_images[0], (_decoded(first) - mean) / std)
    grey = folder / "train" / "n02124075" / "images" / "n02124075_grey.JPEG"
    grey_row = ds.train_images[4]  # sorted file names: _0, _1, _grey
    torch.testing.assert_close(grey_row, (_decoded(grey) - mean) / std)
    back = ds.preprocessing.invert(grey_row[None])[0]
    torch.testing.assert_close(back[0], back[1])  # grey became three equal channels
    val3 = folder / "val" / "images" / "val_3.JPEG"
    torch.testing.assert_close(ds.test_images[3], (_decoded(val3) - mean) / std)
    assert 0.0 <= float(ds.preprocessing.invert(ds.train_images).min())


def test_registry_and_alternative_root(tmp_path):
    write_tiny(tmp_path / "tinyimagenet", per_class=1)
    ds = load_dataset("tinyimagenet", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.train_images.shape == (4, 3, 64, 64)


def test_other_sizes_are_resized(tmp_path):
    folder = write_tiny(tmp_path, per_class=1)
    _jpeg(folder / "train" / "n04067472" / "images" / "small.JPEG", np.random.default_rng(3), size=32)
    ds = load_tinyimagenet(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    assert ds.train_images.shape == (5, 3, 64, 64)


def test_missing_folder(tmp_path):
    with pytest.raises(UserError) as info:
        load_tinyimagenet(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert str(tmp_path / "tiny-imagenet-200") in msg
    assert "wnids.txt" in msg and "val_annotations.txt" in msg
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in msg


@pytest.mark.parametrize("remove", ["val/val_annotations.txt", "wnids.txt", "train/n01443537", "val/images/val_2.JPEG"])
def test_missing_part_is_named(tmp_path, remove):
    import shutil

    folder = write_tiny(tmp_path, per_class=1)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=remove.split("/")[-1].replace(".", r"\.")):
        load_tinyimagenet(tmp_path, zca=False, cache_dir=tmp_path / "cache")


def test_corrupt_image_is_named(tmp_path):
    folder = write_tiny(tmp_path, per_class=1)
    bad = folder / "train" / "n04067472" / "images" / "n04067472_0.JPEG"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(UserError, match="n04067472_0.JPEG"):
        load_tinyimagenet(tmp_path, zca=False, cache_dir=tmp_path / "cache")


def test_unknown_wnid_in_annotations(tmp_path):
    folder = write_tiny(tmp_path, per_class=1)
    with open(folder / "val" / "val_annotations.txt", "a") as f:
        f.write("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="val_annotations.txt"):
        load_tinyimagenet(tmp_path, zca=False, cache_dir=tmp_path / "cache")
