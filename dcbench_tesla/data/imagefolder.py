"""``imagefolder``: your own images in ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``, no code needed.

Every image is decoded as RGB and box-resized to ``image_size`` x ``image_size``. The per-channel
mean and std are computed on the training split. The decoded arrays and the statistics are cached
under ``$DCBENCH_CACHE/imagefolder/`` keyed by the file list (paths, sizes, modification times) and
the image size, so a second run does not decode the images again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from dcbench_tesla.data.dataset import Dataset
from dcbench_tesla.errors import UserError
from dcbench_tesla.files import atomic_path

DEFAULT_IMAGE_SIZE = 32
SPLITS = ("train", "test")


def _class_folders(spec_name: str, split_dir: Path) -> dict[str, list[Path]]:
    from dcbench_tesla.data._build import list_images

    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    found = {p.name: list_images(p) for p in folders}
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise UserError(
            f"dataset {spec_name!r}: {str(split_dir)!r} has class folders without images: {', '.join(empty[:5])} "
            "(images are .png, .jpg, .jpeg, .bmp or .webp files)"
        )
    return found


def scan(root: Path, spec_name: str = "imagefolder") -> tuple[list[str], dict[str, dict[str, list[Path]]]]:
    """Class names (sorted train folders) and the image files of each split and class.

    Raises:
        UserError: a missing split folder, no classes, empty class folders, or test classes that
            are not training classes.
    """
    from dcbench_tesla.data import dataset_spec
    from dcbench_tesla.data._build import missing_error

    spec = dataset_spec(spec_name)
    if not root.is_dir():
        raise missing_error(spec, root)
    missing = [split for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise missing_error(spec, root, [f"{split}/" for split in missing])
    files = {split: _class_folders(spec_name, root / split) for split in SPLITS}
    classes = list(files["train"])
    if len(classes) < 2:
        raise UserError(
            f"dataset {spec_name!r}: {str(root / 'train')!r} needs at least 2 class folders, found {classes}"
        )
    unknown = sorted(set(files["test"]) - set(classes))
    if unknown:
        raise UserError(
            f"dataset {spec_name!r}: test classes {unknown[:5]} have no folder under {str(root / 'train')!r}; "
            "the test split may only use training classes"
        )
    return classes, files


def _cache_key(root: Path, files: dict[str, dict[str, list[Path]]], image_size: int) -> str:
    listing = []
    for split, by_class in files.items():
        for name, paths in by_class.items():
            for path in paths:
                stat = path.stat()
                listing.append([split, name, path.name, stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"root": str(root.resolve()), "size": image_size, "files": listing})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _decode(
    spec_name: str, by_class: dict[str, list[Path]], classes: list[str], size: int
) -> tuple[np.ndarray, np.ndarray]:
    from dcbench_tesla.data import dataset_spec
    from dcbench_tesla.data._build import read_images

    paths = [path for name in classes for path in by_class.get(name, [])]
    labels = np.asarray([i for i, name in enumerate(classes) for _ in by_class.get(name, [])], dtype=np.int64)
    return read_images(dataset_spec(spec_name), paths, size), labels


def _cached_arrays(root: Path, cache_dir: Path, image_size: int, spec_name: str) -> dict[str, np.ndarray]:
    classes, files = scan(root, spec_name)
    path = Path(cache_dir) / "imagefolder" / f"{_cache_key(root, files, image_size)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                return {key: cached[key] for key in cached.files}
        except (OSError, ValueError):
            pass  # a corrupt cache is rebuilt
    x_train, y_train = _decode(spec_name, files["train"], classes, image_size)
    x_test, y_test = _decode(spec_name, files["test"], classes, image_size)
    unit = x_train.reshape(x_train.shape[0], x_train.shape[1], -1).astype(np.float64) / 255.0
    arrays = {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "classes": np.asarray(classes),
        "mean": unit.mean(axis=(0, 2)),
        "std": unit.std(axis=(0, 2)),
    }
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
    except OSError:
        pass  # an unwritable cache costs a decode next time, nothing more
    return arrays


def load_imagefolder(
    root: Path, *, zca: bool = False, cache_dir: Path | None = None, image_size: int | None = None
) -> Dataset:
    """Load ``root/train/<class>/*`` and ``root/test/<class>/*`` as a :class:`Dataset`.

    Args:
        root: The dataset folder (``--data-root``).
        zca: ZCA-whiten (fitted on the training split) instead of mean/std.
        cache_dir: Cache root for decoded arrays and ZCA states.
        image_size: Side of the square images after resizing [32].

    Raises:
        UserError: missing folders, empty classes, unreadable images, or a bad ``image_size``.
    """
    from dcbench_tesla.data import dataset_spec, default_cache_dir
    from dcbench_tesla.data._build import build_dataset

    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if not 4 <= size <= 512:
        raise UserError(f"--image-size must be between 4 and 512 pixels, got {size}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    arrays = _cached_arrays(Path(root), cache, size, "imagefolder")
    return build_dataset(
        dataset_spec("imagefolder"),
        train_images=arrays["x_train"],
        train_labels=arrays["y_train"],
        test_images=arrays["x_test"],
        test_labels=arrays["y_test"],
        classes=[str(c) for c in arrays["classes"]],
        zca=zca,
        cache_dir=cache,
        source=str(Path(root).resolve()),
        normalisation=(tuple(float(m) for m in arrays["mean"]), tuple(max(float(s), 1e-6) for s in arrays["std"])),
    )
