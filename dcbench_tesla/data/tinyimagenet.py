r"""Tiny ImageNet (200 classes, 64x64 colour) from the folder layout of ``tiny-imagenet-200.zip``.

Layout under the data root::

    tiny-imagenet-200/
        wnids.txt                       one WordNet id per line (the 200 classes)
        words.txt                       "<wnid>\t<name>, <synonym>, ..." (names; optional here)
        train/<wnid>/images/*.JPEG      500 images per class
        val/images/*.JPEG               10,000 images
        val/val_annotations.txt         "<file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1>"

The test split is ``val`` (the official test images have no labels). Labels follow the sorted
WordNet ids, as torchvision's ``ImageFolder`` on ``train/`` (and so MTT) numbers them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcbench_tesla.data.dataset import Dataset
from dcbench_tesla.data.spec import DatasetSpec

FOLDER = "tiny-imagenet-200"
SIZE = 64


def _read_lines(spec: DatasetSpec, path: Path) -> list[str]:
    from dcbench_tesla.data._build import corrupt_error

    try:
        return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise corrupt_error(spec, path, exc) from exc


def _class_names(spec: DatasetSpec, folder: Path, wnids: list[str]) -> list[str]:
    """First name of each wnid in ``words.txt`` (the wnid where absent; wnid added if ambiguous)."""
    words: dict[str, str] = {}
    if (folder / "words.txt").is_file():
        for line in _read_lines(spec, folder / "words.txt"):
            wnid, _, names = line.partition("\t")
            if names:
                words[wnid.strip()] = names.split(",")[0].strip()
    names = [words.get(w, w) for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids, strict=True)]


def load_tinyimagenet(root: Path, *, zca: bool = False, cache_dir: Path | None = None) -> Dataset:
    """Load Tiny ImageNet from ``root/tiny-imagenet-200`` (100,000 train / 10,000 val images).

    Args:
        root: Data root holding ``tiny-imagenet-200/`` (``root/tinyimagenet/`` is also searched).
        zca: Whiten with ZCA fitted on the training split instead of mean/std.
        cache_dir: Cache root for the fitted ZCA state (default: ``default_cache_dir()``).

    Raises:
        UserError: files missing (naming the folder, the files and how to get them) or corrupt.
    """
    from dcbench_tesla.data import DATASETS, default_cache_dir
    from dcbench_tesla.data._build import (
        build_dataset,
        corrupt_error,
        list_images,
        locate,
        missing_error,
        read_images,
    )

    spec = DATASETS.get("tinyimagenet")
    folder = locate(Path(root), FOLDER, spec)
    required = ("wnids.txt", "train", "val/images", "val/val_annotations.txt")
    if not folder.is_dir():
        raise missing_error(spec, folder, required)
    missing = [name for name in required if not (folder / name).exists()]
    if missing:
        raise missing_error(spec, folder, missing)

    wnids = sorted({w.strip() for w in _read_lines(spec, folder / "wnids.txt") if w.strip()})
    if not wnids:
        raise corrupt_error(spec, folder / "wnids.txt", "no class ids")
    index = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        class_dir = folder / "train" / wnid / "images"
        if not class_dir.is_dir():
            raise missing_error(spec, folder, [f"train/{wnid}/images/"])
        paths = list_images(class_dir)
        if not paths:
            raise missing_error(spec, folder, [f"train/{wnid}/images/*.JPEG"])
        train_paths += paths
        train_labels += [index[wnid]] * len(paths)

    annotations = folder / "val" / "val_annotations.txt"
    val_paths: list[Path] = []
    val_labels: list[int] = []
    for number, line in enumerate(_read_lines(spec, annotations), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise corrupt_error(spec, annotations, f"line {number} {line[:80]!r}: expected '<file>\t<wnid>'")
        path = folder / "val" / "images" / fields[0].strip()
        if not path.is_file():
            raise missing_error(spec, folder, [f"val/images/{fields[0].strip()}"])
        val_paths.append(path)
        val_labels.append(index[fields[1].strip()])
    if not val_paths:
        raise corrupt_error(spec, annotations, "no annotated images")

    return build_dataset(
        spec,
        train_images=read_images(spec, train_paths, SIZE),
        train_labels=np.asarray(train_labels, dtype=np.int64),
        test_images=read_images(spec, val_paths, SIZE),
        test_labels=np.asarray(val_labels, dtype=np.int64),
        classes=_class_names(spec, folder, wnids),
        zca=zca,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        source=str(folder),
    )
