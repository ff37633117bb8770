"""Shared by the loaders: locating dataset folders, clear errors, and raw arrays -> ``Dataset``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dcbench_tesla.data.dataset import Dataset, Preprocessing
from dcbench_tesla.data.spec import DatasetSpec
from dcbench_tesla.data.zca import DEFAULT_EPS, cached_zca, zca_cache_key
from dcbench_tesla.errors import UserError

_CHUNK = 4096  # images converted / normalised at a time (bounds temporary memory)


def locate(root: Path, folder: str, spec: DatasetSpec) -> Path:
    """Find ``folder`` (e.g. ``cifar-10-batches-py``) for ``spec`` under the data root.

    Looks at ``root/folder``, then ``root/<spec.name>/folder``, then ``root`` itself when it is
    named ``folder``. Returns the first that exists, else ``root/folder`` (the documented place).
    """
    root = Path(root).expanduser()
    candidates = [root / folder, root / spec.name / folder]
    if root.name == folder:
        candidates.append(root)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def missing_error(spec: DatasetSpec, where: Path, missing: Sequence[str] = ()) -> UserError:
    """The error for a dataset whose files are not where they should be."""
    what = f"missing {', '.join(missing)} in" if missing else "no dataset folder at"
    return UserError(
        f"dataset {spec.name!r}: {what} {str(where)!r}. Expected under the data root: "
        f"{spec.expected_files}. To get them: {spec.how_to_get}, and put them there (or point "
        "--data-root / $DCBENCH_DATA at the directory that holds them). Automatic download is "
        "unavailable (no network access), so the files must be placed by hand."
    )


def corrupt_error(spec: DatasetSpec, path: Path, reason: object) -> UserError:
    """The error for a dataset file that exists but cannot be read."""
    return UserError(
        f"dataset {spec.name!r}: cannot read {str(path)!r} ({reason}). The file looks corrupt or "
        f"is not in the expected format ({spec.expected_files}); obtain it again: {spec.how_to_get}."
    )


def integer_labels(spec: DatasetSpec, path: Path, key: str, values: object) -> np.ndarray:
    """Labels read from a dataset file as a 1-D int64 array.

    Integer arrays and lists of ints of any width are converted; anything else (strings, floats,
    bools, nested lists) is refused naming the file, the entry, what was found and what was expected.

    Raises:
        UserError: labels that are not integers.
    """
    try:
        array = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise corrupt_error(spec, path, f"{key!r} is not an array of integer labels ({exc})") from exc
    if array.ndim != 1 or array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        sample = repr(array.reshape(-1)[:1].tolist()[0])[:40] if array.size else "nothing"
        raise corrupt_error(
            spec, path, f"{key!r} holds {array.dtype} {tuple(array.shape)} (e.g. {sample}), expected 1-D integer labels"
        )
    return array.astype(np.int64)


def to_unit_float(images: np.ndarray | Tensor) -> Tensor:
    """(N, C, H, W) uint8 (0..255) or float (already in [0, 1]) -> float32 tensor in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8:
        return x.to(torch.float32, copy=True).contiguous()
    out = torch.empty(x.shape, dtype=torch.float32)
    for start in range(0, x.shape[0], _CHUNK):
        out[start : start + _CHUNK] = x[start : start + _CHUNK].to(torch.float32).div_(255.0)
    return out


def _apply_inplace(preprocessing: Preprocessing, x01: Tensor) -> Tensor:
    for start in range(0, x01.shape[0], _CHUNK):
        x01[start : start + _CHUNK] = preprocessing.apply(x01[start : start + _CHUNK])
    return x01


def build_dataset(
    spec: DatasetSpec,
    *,
    train_images: np.ndarray | Tensor,
    train_labels: np.ndarray | Tensor | Sequence[int],
    test_images: np.ndarray | Tensor,
    test_labels: np.ndarray | Tensor | Sequence[int],
    classes: Sequence[str],
    zca: bool,
    cache_dir: Path | None,
    source: str,
    zca_eps: float = DEFAULT_EPS,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Dataset:
    """Turn raw splits into a preprocessed :class:`Dataset`.

    Args:
        spec: The registry entry (mean/std, expected image shape).
        train_images: (N, C, H, W) uint8 in 0..255 or float in [0, 1].
        train_labels: (N,) integer labels in ``range(len(classes))``.
        test_images: (M, C, H, W), as ``train_images``.
        test_labels: (M,).
        classes: Class names, index = label.
        zca: Whiten with ZCA fitted on the training images (cached under ``cache_dir``)
            instead of per-channel mean/std normalisation.
        cache_dir: Cache root for the fitted ZCA state (None: ``$DCBENCH_CACHE``).
        source: Provenance (a path or a package).
        zca_eps: ZCA regularisation.
        normalisation: ``(mean, std)`` per channel when the spec has none (computed from the files).

    Raises:
        UserError: if the shapes or labels do not fit the spec.
    """
    train = to_unit_float(train_images)
    test = to_unit_float(test_images)
    ytrain = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64).reshape(-1)
    ytest = torch.as_tensor(np.asarray(test_labels), dtype=torch.int64).reshape(-1)
    for split, x, y in (("train", train, ytrain), ("test", test, ytest)):
        expected = spec.image_shape or tuple(train.shape[1:])
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(expected):
            raise UserError(
                f"dataset {spec.name!r} ({source}): {split} images have shape {tuple(x.shape)}, "
                f"expected (N, {', '.join(map(str, expected))})"
            )
        if x.shape[0] != y.shape[0]:
            raise UserError(f"dataset {spec.name!r} ({source}): {x.shape[0]} {split} images but {y.shape[0]} labels")
        if not bool(torch.isfinite(x).all()):
            raise UserError(f"dataset {spec.name!r} ({source}): {split} images contain NaN or inf pixels")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise UserError(
                f"dataset {spec.name!r} ({source}): {split} labels span {int(y.min())}..{int(y.max())}, "
                f"expected 0..{len(classes) - 1}"
            )
    if train.shape[0] == 0:
        raise UserError(f"dataset {spec.name!r} ({source}): the training split is empty")
    state = None
    if zca:
        from dcbench_tesla.data import default_cache_dir

        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        state = cached_zca(train, cache, zca_cache_key(spec.name, train, zca_eps), eps=zca_eps)
    mean, std = normalisation if normalisation is not None else (spec.mean, spec.std)
    preprocessing = Preprocessing(mean=tuple(mean), std=tuple(std), zca=state)
    return Dataset(
        name=spec.name,
        classes=[str(c) for c in classes],
        train_images=_apply_inplace(preprocessing, train),
        train_labels=ytrain,
        test_images=_apply_inplace(preprocessing, test),
        test_labels=ytest,
        preprocessing=preprocessing,
        source=source,
    )


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_one(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BOX)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def read_images(spec: DatasetSpec, paths: Sequence[Path], size: int, *, workers: int | None = None) -> np.ndarray:
    """Decode image files into a (N, 3, size, size) uint8 array (RGB; other sizes are box-resized).

    Raises:
        UserError: naming the first file that cannot be decoded.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        try:
            out[i] = _read_one(paths[i], size)
        except Exception as exc:  # PIL raises many kinds (UnidentifiedImageError, OSError, ...)
            raise corrupt_error(spec, paths[i], f"{type(exc).__name__}: {exc}") from exc

    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 64:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(paths), _CHUNK):  # bounded number of pending futures
                for _ in pool.map(work, range(start, min(start + _CHUNK, len(paths)))):
                    pass
    return out
