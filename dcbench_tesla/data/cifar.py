"""CIFAR-10 / CIFAR-100 from their "python version" pickle batches.

The batches are Python 2 pickles of dicts (``b"data"``: uint8 array (N, 3072) laid out as
R, G, B planes of 32x32; ``b"labels"`` or ``b"fine_labels"``: lists of ints). They are read with
:class:`SafeUnpickler`, which refuses every global except the few numpy needs to rebuild an
array, so a tampered file cannot run code. Nothing is downloaded: missing files give a
:class:`~dcbench_tesla.errors.UserError` that says where they should be and how to get them.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcbench_tesla.data.dataset import Dataset
from dcbench_tesla.data.spec import DatasetSpec

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_TRAIN = "train"
CIFAR100_TEST = "test"
CIFAR100_META = "meta"


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1 (how Python 3 protocol-2 pickles store bytes)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any] | type]:
    # numpy's own reconstruction functions, found wherever this numpy version keeps them.
    reconstruct = np.zeros(1).__reduce_ex__(2)[0]  # _reconstruct (protocols 0-4)
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # _frombuffer (protocol 5)
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for data-only pickles: dicts, lists, strings, numbers and numpy arrays.

    ``find_class`` resolves only numpy's array reconstruction (``_reconstruct``, ``ndarray``,
    ``dtype``; the genuine CIFAR files need nothing more), ``_frombuffer`` (arrays re-saved with
    protocol 5) and a latin-1-only ``_codecs.encode`` (bytes re-saved by Python 3 with protocol 2).
    Any other global raises ``pickle.UnpicklingError`` before anything is called.
    """

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global or refuse."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def safe_unpickle(path: Path) -> dict[str, Any]:
    """Load a data-only pickle holding a dict; bytes keys are decoded to str.

    Raises:
        pickle.UnpicklingError, EOFError, ValueError, ...: on a malformed or malicious file.
    """
    data = Path(path).read_bytes()
    obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _read(spec: DatasetSpec, path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        batch = safe_unpickle(path)
        for key in keys:
            if key not in batch:
                raise KeyError(f"no {key!r} entry")
        return batch
    except OSError as exc:
        from dcbench_tesla.data._build import corrupt_error

        raise corrupt_error(spec, path, exc.strerror or exc) from exc
    except Exception as exc:
        from dcbench_tesla.data._build import corrupt_error

        raise corrupt_error(spec, path, f"{type(exc).__name__}: {exc}") from exc


def _images_labels(spec: DatasetSpec, path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    from dcbench_tesla.data._build import corrupt_error, integer_labels

    batch = _read(spec, path, ("data", label_key))
    data = batch["data"]
    labels = integer_labels(spec, path, label_key, batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise corrupt_error(spec, path, f"'data' is {type(data).__name__} {shape}, expected uint8 (N, 3072)")
    if data.shape[0] != labels.shape[0]:
        raise corrupt_error(spec, path, f"{data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _check_files(spec: DatasetSpec, folder: Path, names: tuple[str, ...]) -> None:
    from dcbench_tesla.data._build import missing_error

    if not folder.is_dir():
        raise missing_error(spec, folder, names)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise missing_error(spec, folder, missing)


def _load(
    name: str,
    folder_name: str,
    train_files: tuple[str, ...],
    test_file: str,
    meta_file: str,
    label_key: str,
    names_key: str,
    root: Path,
    zca: bool,
    cache_dir: Path,
) -> Dataset:
    from dcbench_tesla.data import DATASETS
    from dcbench_tesla.data._build import build_dataset, corrupt_error, locate

    spec = DATASETS.get(name)
    folder = locate(Path(root), folder_name, spec)
    _check_files(spec, folder, (*train_files, test_file, meta_file))
    meta = _read(spec, folder / meta_file, (names_key,))
    if not isinstance(meta[names_key], list | tuple):
        raise corrupt_error(
            spec, folder / meta_file, f"{names_key!r} is {type(meta[names_key]).__name__}, expected a list"
        )
    classes = [_text(c) for c in meta[names_key]]
    if len(classes) != spec.num_classes:
        raise corrupt_error(spec, folder / meta_file, f"{len(classes)} class names, expected {spec.num_classes}")
    parts = [_images_labels(spec, folder / f, label_key) for f in train_files]
    train_x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    train_y = np.concatenate([p[1] for p in parts])
    del parts
    test_x, test_y = _images_labels(spec, folder / test_file, label_key)
    return build_dataset(
        spec,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=classes,
        zca=zca,
        cache_dir=Path(cache_dir),
        source=str(folder),
    )


def load_cifar10(root: Path, *, zca: bool = False, cache_dir: Path | None = None) -> Dataset:
    """Load CIFAR-10 from ``root/cifar-10-batches-py`` (50,000 train / 10,000 test, 3x32x32).

    Args:
        root: Data root holding ``cifar-10-batches-py/`` (``root/cifar10/`` is also searched).
        zca: Whiten with ZCA fitted on the training split instead of mean/std.
        cache_dir: Cache root for the fitted ZCA state (default: ``default_cache_dir()``).

    Raises:
        UserError: files missing (naming the folder, the files and how to get them) or corrupt.
    """
    from dcbench_tesla.data import default_cache_dir

    return _load(
        "cifar10",
        CIFAR10_FOLDER,
        CIFAR10_TRAIN,
        CIFAR10_TEST,
        CIFAR10_META,
        "labels",
        "label_names",
        root,
        zca,
        Path(cache_dir) if cache_dir is not None else default_cache_dir(),
    )


def load_cifar100(root: Path, *, zca: bool = False, cache_dir: Path | None = None) -> Dataset:
    """Load CIFAR-100 (fine labels) from ``root/cifar-100-python`` (50,000 / 10,000, 3x32x32).

    Args:
        root: Data root holding ``cifar-100-python/`` (``root/cifar100/`` is also searched).
        zca: Whiten with ZCA fitted on the training split instead of mean/std.
        cache_dir: Cache root for the fitted ZCA state (default: ``default_cache_dir()``).

    Raises:
        UserError: files missing (naming the folder, the files and how to get them) or corrupt.
    """
    from dcbench_tesla.data import default_cache_dir

    return _load(
        "cifar100",
        CIFAR100_FOLDER,
        (CIFAR100_TRAIN,),
        CIFAR100_TEST,
        CIFAR100_META,
        "fine_labels",
        "fine_label_names",
        root,
        zca,
        Path(cache_dir) if cache_dir is not None else default_cache_dir(),
    )


__all__ = ["SafeUnpickler", "load_cifar10", "load_cifar100", "safe_unpickle"]
