"""Shared by the loaders: locating dataset folders, clear errors, and raw arrays -> ``Dataset``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dcbench_tesla.data.dataset import Dataset, Preprocessing
from dcbench_tesla.data.spec import DatasetSpec
from dcbench_tesla.data.zca import DEFAULT_EPS, cached_zca, zca_cache_key
from dcbench_tesla.errors import UserError

_CHUNK = 4096  # images converted / normalised at a time (bounds temporary memory)

#: Seed of the validation split: fixed, so every run, tune and method sees the same pool.
VAL_SEED = 0


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


def stratified_split(labels: np.ndarray, held_out: Callable[[int], int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic class-stratified split: ``(kept_idx, held_idx)``, each sorted ascending.

    One ``torch.Generator`` seeded with ``seed`` draws, class by class in increasing label order, a
    permutation of that class's indices; the first ``held_out(class_size)`` of it are held out.
    """
    generator = torch.Generator().manual_seed(seed)
    kept: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    held: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        perm = torch.randperm(len(idx), generator=generator).numpy()
        n_held = held_out(len(idx))
        held.append(idx[perm[:n_held]])
        kept.append(idx[perm[n_held:]])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def validation_split(spec: DatasetSpec, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pool_idx, val_idx)`` of a training split under the dataset's rule, seed :data:`VAL_SEED`.

    The rule is :meth:`DatasetSpec.val_size` per class (a fraction for small sets, a fixed count for
    CIFAR, Tiny ImageNet and ImageNet-64).
    """
    return stratified_split(np.asarray(labels), spec.val_size, VAL_SEED)


def _as_tensor(images: np.ndarray | Tensor) -> Tensor:
    """A tensor view of ``images`` (no copy for a contiguous array)."""
    return torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images


def to_unit_float(images: np.ndarray | Tensor, index: np.ndarray | None = None) -> Tensor:
    """(N, C, H, W) uint8 (0..255) or float (already in [0, 1]) -> float32 tensor in [0, 1].

    Args:
        images: The images.
        index: Convert only these rows, in this order (no full-size copy is made).
    """
    x = _as_tensor(images)
    rows = torch.arange(x.shape[0]) if index is None else torch.as_tensor(index, dtype=torch.int64)
    if x.dtype != torch.uint8:
        picked = x if index is None else x[rows]
        return picked.to(torch.float32, copy=True).contiguous()
    out = torch.empty((rows.numel(), *x.shape[1:]), dtype=torch.float32)
    for start in range(0, rows.numel(), _CHUNK):
        out[start : start + _CHUNK] = x[rows[start : start + _CHUNK]].to(torch.float32).div_(255.0)
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
    """Turn raw splits into a preprocessed :class:`Dataset`, holding out its validation split.

    The validation split is carved out of the training split here, for every dataset: a fixed
    (seed :data:`VAL_SEED`), class-stratified draw following the spec's rule
    (:meth:`DatasetSpec.val_size`). ``Dataset.train_images`` is the training pool without it;
    ZCA is fitted on the pool only.

    Args:
        spec: The registry entry (mean/std, expected image shape, validation rule).
        train_images: (N, C, H, W) uint8 in 0..255 or float in [0, 1].
        train_labels: (N,) integer labels in ``range(len(classes))``.
        test_images: (M, C, H, W), as ``train_images``.
        test_labels: (M,).
        classes: Class names, index = label.
        zca: Whiten with ZCA fitted on the training pool (cached under ``cache_dir``)
            instead of per-channel mean/std normalisation.
        cache_dir: Cache root for the fitted ZCA state (None: ``$DCBENCH_CACHE``).
        source: Provenance (a path or a package).
        zca_eps: ZCA regularisation.
        normalisation: ``(mean, std)`` per channel when the spec has none (computed from the files).

    Raises:
        UserError: if the shapes or labels do not fit the spec.
    """
    raw = {"train": _as_tensor(train_images), "test": _as_tensor(test_images)}
    ytrain = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64).reshape(-1)
    ytest = torch.as_tensor(np.asarray(test_labels), dtype=torch.int64).reshape(-1)
    for split, y in (("train", ytrain), ("test", ytest)):
        x = raw[split]
        expected = spec.image_shape or tuple(raw["train"].shape[1:])
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
    if raw["train"].shape[0] == 0:
        raise UserError(f"dataset {spec.name!r} ({source}): the training split is empty")
    pool_idx, val_idx = validation_split(spec, ytrain.numpy())
    train = to_unit_float(raw["train"], pool_idx)
    val = to_unit_float(raw["train"], val_idx)
    test = to_unit_float(raw["test"])
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
        train_labels=ytrain[torch.from_numpy(pool_idx)],
        test_images=_apply_inplace(preprocessing, test),
        test_labels=ytest,
        preprocessing=preprocessing,
        source=source,
        val_images=_apply_inplace(preprocessing, val),
        val_labels=ytrain[torch.from_numpy(val_idx)],
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
