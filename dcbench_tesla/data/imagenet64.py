"""ImageNet-1K downsampled to 64x64: the official npz batches, or an image folder.

Layouts under the data root (the first found wins)::

    imagenet64/train_data_batch_1.npz ... train_data_batch_10.npz, val_data.npz
        each with "data": uint8 (N, 12288) = R, G, B planes of 64x64, and "labels": 1..1000
        (optional: imagenet64/map_clsloc.txt, "<wnid> <label 1..1000> <name>", for class names)
    imagenet64/train/<class>/*.png, imagenet64/val/<class>/*.png
        classes numbered in sorted folder-name order

All 1,281,167 training images as float32 take ~63 GB: ``max_per_class`` keeps only the first
``k`` images of each class (in file order), decided from the labels before any pixels are read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dcbench_tesla.data.dataset import Dataset
from dcbench_tesla.data.spec import DatasetSpec

FOLDER = "imagenet64"
SIZE = 64
NUM_CLASSES = 1000
_TRAIN_BATCH = re.compile(r"^train_data_batch_(\d+)\.npz$")


def _npz_array(spec: DatasetSpec, path: Path, key: str, rows: np.ndarray | None = None) -> np.ndarray:
    from dcbench_tesla.data._build import corrupt_error

    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise KeyError(f"no {key!r} array (has {', '.join(archive.files) or 'nothing'})")
            array = archive[key]
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled object), OSError, KeyError
        raise corrupt_error(spec, path, f"{type(exc).__name__}: {exc}") from exc
    return array if rows is None else array[rows]


def _labels(spec: DatasetSpec, path: Path) -> np.ndarray:
    from dcbench_tesla.data._build import corrupt_error, integer_labels

    labels = integer_labels(spec, path, "labels", _npz_array(spec, path, "labels")) - 1
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise corrupt_error(spec, path, f"labels span {labels.min() + 1}..{labels.max() + 1}, expected 1..1000")
    return labels


def _first_per_class(labels: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """Indices (in order) of the first ``remaining[c]`` entries of each class ``c``; updates ``remaining``."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(labels)) - starts
    keep = np.sort(order[rank < remaining[sorted_labels]])
    np.subtract.at(remaining, labels[keep], 1)
    return keep


def _images(spec: DatasetSpec, path: Path, rows: np.ndarray | None) -> np.ndarray:
    from dcbench_tesla.data._build import corrupt_error

    data = _npz_array(spec, path, "data", rows)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE:
        raise corrupt_error(spec, path, f"'data' is {data.dtype} {data.shape}, expected uint8 (N, 12288)")
    return data.reshape(-1, 3, SIZE, SIZE)


def _class_names(folder: Path) -> list[str]:
    names = [str(i) for i in range(NUM_CLASSES)]
    mapping = folder / "map_clsloc.txt"
    if mapping.is_file():
        for line in mapping.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit() and 1 <= int(parts[1]) <= NUM_CLASSES:
                names[int(parts[1]) - 1] = parts[2]
    return names


_Loaded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]


def _load_npz(spec: DatasetSpec, folder: Path, batches: list[Path], max_per_class: int | None) -> _Loaded:
    from dcbench_tesla.data._build import missing_error

    val = folder / "val_data.npz"
    if not val.is_file():
        raise missing_error(spec, folder, ["val_data.npz"])
    remaining = np.full(NUM_CLASSES, max_per_class if max_per_class is not None else np.iinfo(np.int64).max)
    selections: list[tuple[Path, np.ndarray | None, np.ndarray]] = []
    for path in batches:  # pass 1: labels only, to size the output before reading pixels
        labels = _labels(spec, path)
        if max_per_class is None:
            selections.append((path, None, labels))
        else:
            keep = _first_per_class(labels, remaining)
            selections.append((path, keep, labels[keep]))
    total = sum(len(y) for _, _, y in selections)
    train_x = np.empty((total, 3, SIZE, SIZE), dtype=np.uint8)
    train_y = np.empty(total, dtype=np.int64)
    start = 0
    for path, rows, labels in selections:  # pass 2: the pixels
        images = _images(spec, path, rows)
        if len(images) != len(labels):
            from dcbench_tesla.data._build import corrupt_error

            raise corrupt_error(spec, path, f"{len(images)} images but {len(labels)} labels")
        train_x[start : start + len(labels)] = images
        train_y[start : start + len(labels)] = labels
        start += len(labels)
    test_y = _labels(spec, val)
    test_x = _images(spec, val, None)
    if len(test_x) != len(test_y):
        from dcbench_tesla.data._build import corrupt_error

        raise corrupt_error(spec, val, f"{len(test_x)} images but {len(test_y)} labels")
    return train_x, train_y, test_x, test_y, _class_names(folder)


def _load_folder(spec: DatasetSpec, folder: Path, max_per_class: int | None) -> _Loaded:
    from dcbench_tesla.data._build import list_images, missing_error, read_images

    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    if not classes:
        raise missing_error(spec, folder, ["train/<class>/*.png"])
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split, limit in (("train", max_per_class), ("val", None)):
        paths: list[Path] = []
        labels: list[int] = []
        split_dir = folder / split
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.name not in index:
                raise missing_error(spec, folder, [f"train/{class_dir.name}/ (a class found in val/)"])
            found = list_images(class_dir)[:limit]
            paths += found
            labels += [index[class_dir.name]] * len(found)
        if not paths:
            raise missing_error(spec, folder, [f"{split}/<class>/*.png"])
        splits.append((read_images(spec, paths, SIZE), np.asarray(labels, dtype=np.int64)))
    (train_x, train_y), (test_x, test_y) = splits
    return train_x, train_y, test_x, test_y, classes


def load_imagenet64(
    root: Path,
    *,
    zca: bool = False,
    cache_dir: Path | None = None,
    max_per_class: int | None = None,
) -> Dataset:
    """Load downsampled ImageNet 64x64 (1,281,167 train / 50,000 val images, 1,000 classes).

    Args:
        root: Data root holding ``imagenet64/`` (npz batches or ``train/`` + ``val/`` folders).
        zca: Whiten with ZCA fitted on the training split instead of mean/std
            (a 12,288-dimensional fit: slow and memory hungry).
        cache_dir: Cache root for the fitted ZCA state (default: ``default_cache_dir()``).
        max_per_class: Keep at most this many training images per class (first in file order);
            the validation split is always complete.

    Raises:
        UserError: files missing (naming the folder, the files and how to get them) or corrupt.
    """
    from dcbench_tesla.data import DATASETS, default_cache_dir
    from dcbench_tesla.data._build import build_dataset, locate, missing_error
    from dcbench_tesla.errors import UserError

    if max_per_class is not None and max_per_class < 1:
        raise UserError(f"max_per_class must be a positive integer, got {max_per_class}")
    spec = DATASETS.get("imagenet64")
    folder = locate(Path(root), FOLDER, spec)
    expected = ["train_data_batch_1..10.npz", "val_data.npz"]
    if not folder.is_dir():
        raise missing_error(spec, folder, expected)
    batches = sorted(
        (p for p in folder.iterdir() if _TRAIN_BATCH.match(p.name)),
        key=lambda p: int(_TRAIN_BATCH.match(p.name).group(1)),  # type: ignore[union-attr]
    )
    if batches:
        loaded = _load_npz(spec, folder, batches, max_per_class)
    elif (folder / "train").is_dir() and (folder / "val").is_dir():
        loaded = _load_folder(spec, folder, max_per_class)
    else:
        raise missing_error(spec, folder, [*expected, "(or train/<class>/*.png and val/<class>/*.png)"])
    train_x, train_y, test_x, test_y, classes = loaded
    return build_dataset(
        spec,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=classes,
        zca=zca,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        source=str(folder),
    )
