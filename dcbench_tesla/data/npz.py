"""``npz``: your own arrays in one ``.npz`` file (``x_train, y_train, x_test, y_test``), no code needed.

Images may be ``(N, C, H, W)``, ``(N, H, W, C)`` (C of 1 or 3) or ``(N, H, W)`` (grey), as uint8 in
0..255 or floats in [0, 1]; labels are integers ``0 .. K-1``. An optional ``classes`` array names
the classes. Mean and std are computed on the training split. The file is read with
``allow_pickle=False``: object arrays are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcbench_tesla.data.dataset import Dataset
from dcbench_tesla.errors import UserError

KEYS = ("x_train", "y_train", "x_test", "y_test")


def find_file(root: Path) -> Path:
    """``root`` itself when it is a file, else the single ``*.npz`` inside it.

    Raises:
        UserError: nothing there, or a folder with no or several .npz files.
    """
    from dcbench_tesla.data import dataset_spec
    from dcbench_tesla.data._build import missing_error

    if root.is_file():
        return root
    found = sorted(root.glob("*.npz")) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UserError(
            f"dataset 'npz': {str(root)!r} holds {len(found)} .npz files; pass the one to use as --data-root"
        )
    raise missing_error(dataset_spec("npz"), root, ["a .npz file"])


def _images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise UserError(f"{str(path)!r}: {key} must be (N, C, H, W), (N, H, W, C) or (N, H, W), got {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise UserError(f"{str(path)!r}: {key} must have 1 or 3 channels, got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{str(path)!r}: {key} must be uint8 or float, got {x.dtype}")
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise UserError(f"{str(path)!r}: float {key} must be finite and within [0, 1]")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(path: Path, key: str, y: np.ndarray, count: int) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{str(path)!r}: {key} must be a 1-D integer array, got {y.dtype} {y.shape}")
    if y.shape[0] != count:
        raise UserError(f"{str(path)!r}: {count} images but {y.shape[0]} labels in {key}")
    return y.astype(np.int64)


def load_npz(root: Path, *, zca: bool = False, cache_dir: Path | None = None) -> Dataset:
    """Load ``x_train, y_train, x_test, y_test`` (and optional ``classes``) from one .npz file.

    Raises:
        UserError: a missing file or array, object arrays, bad shapes, dtypes, ranges or labels.
    """
    from dcbench_tesla.data import dataset_spec, default_cache_dir
    from dcbench_tesla.data._build import build_dataset

    path = find_file(Path(root))
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in KEYS if key not in data.files]
            if missing:
                raise UserError(f"{str(path)!r} lacks the array(s) {', '.join(missing)} (needs {', '.join(KEYS)})")
            arrays = {key: data[key] for key in data.files}
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f"{str(path)!r} is not a readable .npz file without object arrays: {exc}") from exc
    x_train, x_test = _images(path, "x_train", arrays["x_train"]), _images(path, "x_test", arrays["x_test"])
    y_train = _labels(path, "y_train", arrays["y_train"], x_train.shape[0])
    y_test = _labels(path, "y_test", arrays["y_test"], x_test.shape[0])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"{str(path)!r}: train images {x_train.shape[1:]} but test images {x_test.shape[1:]}")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else [str(i) for i in range(num_classes)]
    if len(classes) < num_classes:
        raise UserError(f"{str(path)!r}: labels go up to {num_classes - 1} but 'classes' names {len(classes)}")
    missing_classes = sorted(set(range(len(classes))) - set(np.unique(y_train).tolist()))
    if missing_classes:
        raise UserError(f"{str(path)!r}: classes {missing_classes[:5]} have no training image")
    unit = x_train.astype(np.float64) / (255.0 if x_train.dtype == np.uint8 else 1.0)
    flat = unit.reshape(unit.shape[0], unit.shape[1], -1)
    mean = tuple(float(m) for m in flat.mean(axis=(0, 2)))
    std = tuple(max(float(s), 1e-6) for s in flat.std(axis=(0, 2)))
    return build_dataset(
        dataset_spec("npz"),
        train_images=x_train,
        train_labels=y_train,
        test_images=x_test,
        test_labels=y_test,
        classes=classes,
        zca=zca,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        source=str(path.resolve()),
        normalisation=(mean, std),
    )
