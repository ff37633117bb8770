"""The on-disk expert store: one manifest and one safetensors file per finished expert.

A store directory holds:

- ``manifest.safetensors``: tensors ``zca_mean`` / ``zca_matrix`` when the data is ZCA-whitened, and
  JSON metadata under the key ``dcbench``: format, format version, store key, the
  :class:`ExpertConfig`, dataset name, classes, image shape, normalisation (kind, mean, std, ZCA
  eps), the flat-parameter layout and where the experts came from (``origin``).
- ``expert_0000.safetensors``, ``expert_0001.safetensors``, ...: tensor ``trajectory`` float32 of
  shape ``(epochs + 1, P)`` (row 0 = the initialisation, row ``e`` = after epoch ``e``) and JSON
  metadata (index, seed, final validation accuracy, store key, ...).

The experts a store holds are the expert files present: an interrupted training run leaves the
finished ones, and the next run trains only the missing ones. Every file is written atomically and
read without unpickling.

A trajectory-matching step needs two or three snapshots of one expert: :meth:`ExpertStore.rows`
reads exactly those rows from the file (the safetensors header gives each tensor's byte offsets;
a row of the row-major ``(epochs + 1, P)`` float32 array is ``4 P`` contiguous bytes), so a step's
expert I/O is ``O(rows x P)`` however many experts and epochs the store holds. Rows are checked
for NaN and inf when read; whole trajectories are checked once, when their file is written.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from dcbench_tesla.data import Dataset, Preprocessing, ZCAState
from dcbench_tesla.errors import UserError
from dcbench_tesla.experts.config import ExpertConfig, human_bytes, layout_numel, storage_bytes
from dcbench_tesla.files import (
    check_format,
    is_int,
    is_names,
    is_number,
    is_object,
    meta_field,
    normalisation_fields,
    note,
    read_tensor_file,
    write_tensor_file,
)

MANIFEST = "manifest.safetensors"
FORMAT = "dcbench-tesla/experts"
EXPERT_FORMAT = "dcbench-tesla/expert"
FORMAT_VERSION = 1
_EXPERT_FILE = re.compile(r"^expert_(\d{4,})\.safetensors$")
_ZCA_RTOL = 1e-3
_ZCA_ATOL = 1e-4
_NORM_ATOL = 1e-6


def expert_filename(index: int) -> str:
    """``expert_0007.safetensors`` for expert 7."""
    return f"expert_{int(index):04d}.safetensors"


def finished_indices(directory: Path) -> list[int]:
    """Sorted indices of the expert files present in ``directory`` (temp files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = (_EXPERT_FILE.match(p.name) for p in directory.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def manifest_metadata(
    config: ExpertConfig, dataset: Dataset, layout: dict[str, Any], origin: dict[str, Any]
) -> dict[str, Any]:
    """The manifest's JSON metadata for experts of ``config`` on ``dataset``."""
    pre = dataset.preprocessing
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "key": config.key(pre, layout),
        "config": config.to_dict(),
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "image_shape": list(dataset.image_shape),
        "normalisation": {
            "kind": pre.kind,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "zca_eps": pre.zca.eps if pre.zca is not None else None,
        },
        "layout": {"names": list(layout["names"]), "shapes": [list(s) for s in layout["shapes"]]},
        "num_params": layout_numel(layout),
        "origin": origin,
        "torch_version": torch.__version__,
    }


def write_manifest(directory: Path, metadata: dict[str, Any], preprocessing: Preprocessing) -> Path:
    """Write ``manifest.safetensors`` (with the ZCA tensors, if any) atomically."""
    tensors: dict[str, Tensor] = {}
    if preprocessing.zca is not None:
        tensors["zca_mean"] = preprocessing.zca.mean.float()
        tensors["zca_matrix"] = preprocessing.zca.matrix.float()
    return write_tensor_file(Path(directory) / MANIFEST, tensors, metadata)


def write_expert(directory: Path, index: int, trajectory: Tensor, metadata: dict[str, Any]) -> Path:
    """Write one expert's ``(epochs + 1, P)`` trajectory and metadata atomically.

    Raises:
        UserError: the trajectory holds NaN or inf (checked once here, for trained and imported
            experts alike; readers then check only the rows they read).
    """
    if not bool(torch.isfinite(trajectory).all()):
        raise UserError(f"expert {index}: the trajectory contains NaN or inf; it is not written")
    meta = {"format": EXPERT_FORMAT, "format_version": FORMAT_VERSION, "index": int(index), **metadata}
    return write_tensor_file(Path(directory) / expert_filename(index), {"trajectory": trajectory.float()}, meta)


def validate_manifest(meta: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> ZCAState | None:
    """Check a manifest's format, version, metadata types and ZCA tensors; return its ZCA state.

    Raises:
        UserError: naming the file, the field, what was found and what was expected.
    """
    check_format(meta, path, "dcbench expert manifest", FORMAT, FORMAT_VERSION)
    where = repr(str(path))
    meta_field(meta, "config", "an object (the ExpertConfig)", is_object, where)
    meta_field(meta, "key", "a string", _is_str, where)
    meta_field(meta, "dataset", "a dataset name (string)", _is_str, where)
    meta_field(meta, "classes", "a non-empty list of class names (strings)", is_names, where)
    shape = meta_field(meta, "image_shape", "[channels, height, width] (positive integers)", _is_image_shape, where)
    layout = meta_field(meta, "layout", "an object with names and shapes", is_object, where)
    names = meta_field(layout, "names", "a non-empty list of parameter names", is_names, f"{where}, layout")
    shapes = meta_field(
        layout, "shapes", "a list of parameter shapes (lists of integers >= 0)", _is_shapes, f"{where}, layout"
    )
    if len(names) != len(shapes):
        raise UserError(f"{where}, layout: {len(names)} parameter names but {len(shapes)} shapes")
    numel = sum(math.prod(s) for s in shapes)
    meta_field(meta, "num_params", f"{numel} (the layout's size)", lambda v: v == numel, where, None)
    meta_field(meta, "origin", "an object", is_object, where, None)
    kind, _, _ = normalisation_fields(meta, where)
    norm = meta["normalisation"]
    eps = meta_field(
        norm, "zca_eps", "a positive number or null", lambda v: is_number(v) and v > 0, f"{where}, normalisation", None
    )
    if kind != "zca":
        return None
    if not {"zca_mean", "zca_matrix"} <= set(tensors):
        raise UserError(f"{where}: ZCA experts but the manifest lacks the ZCA tensors")
    dims = math.prod(shape)
    zca = ZCAState(mean=tensors["zca_mean"], matrix=tensors["zca_matrix"], eps=float(eps or 0.1))
    for name, tensor, expected in (("zca_mean", zca.mean, (dims,)), ("zca_matrix", zca.matrix, (dims, dims))):
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != expected or not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{where}: tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, expected finite float32 {expected}"
            )
    return zca


def validate_expert_metadata(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check an expert file's format, version and the metadata the store reads; return ``meta``.

    Raises:
        UserError: naming the file, the field, what was found and what was expected.
    """
    check_format(meta, path, "dcbench expert trajectory", EXPERT_FORMAT, FORMAT_VERSION)
    where = repr(str(path))
    for field in ("val_accuracy", "test_accuracy"):  # test_accuracy: stores written before the validation split
        meta_field(meta, field, "a number in [0, 1] or null", lambda v: is_number(v) and 0 <= v <= 1, where, None)
    source = meta_field(meta, "source", "an object", is_object, where, None)
    if source is not None:
        inner = f"{where}, source"
        meta_field(source, "sha256", "a string", _is_str, inner, None)
        meta_field(source, "position", "an integer >= 0", lambda v: is_int(v) and v >= 0, inner, None)
    return meta


def validate_trajectory_rows(rows: Tensor | None, path: Path, expected_shape: tuple[int, ...]) -> Tensor:
    """Check trajectory rows read from ``path``: shape, finite values; float16/float64 become float32 (a note).

    Args:
        rows: The tensor read (None: the file has no ``trajectory`` tensor).
        path: The expert file (for messages).
        expected_shape: ``(epochs + 1, P)`` for a whole trajectory, or the shape of the rows read.

    Raises:
        UserError: a missing tensor, another shape, a non-float dtype, or NaN/inf values.
    """
    if rows is None or not rows.is_floating_point() or tuple(rows.shape) != tuple(expected_shape):
        got = "no 'trajectory' tensor" if rows is None else f"{rows.dtype} {tuple(rows.shape)}"
        raise UserError(f"{str(path)!r}: expected a float32 trajectory of shape {tuple(expected_shape)}, got {got}")
    if rows.dtype != torch.float32:
        note(f"{str(path)!r}: trajectory converted from {rows.dtype} to float32")
        rows = rows.to(torch.float32)
    if not bool(torch.isfinite(rows).all()):
        raise UserError(f"{str(path)!r}: the trajectory contains NaN or inf; delete it and train it again")
    return rows


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_shapes(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(s, list) and all(is_int(d) and d >= 0 for d in s) for s in value)


def _is_image_shape(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(is_int(d) and d >= 1 for d in value)


#: Opens a file for binary reading (``open`` by default; tests pass a counting wrapper).
Opener = Callable[[Path], IO[bytes]]
_HEADER_LIMIT = 100 * 2**20  # safetensors' own cap on the JSON header size


def _open_binary(path: Path) -> IO[bytes]:
    return open(path, "rb")


class RowFile:
    """The layout of one tensor in a safetensors file, read from the header alone.

    Args:
        path: The safetensors file.
        name: The tensor to locate.
        opener: Opens the file for binary reading.

    Attributes:
        metadata: The ``dcbench`` JSON metadata of the file.
        dtype: The tensor's safetensors dtype string (``"F32"``, ...).
        shape: The tensor's shape.
        data_start: Absolute byte offset of the tensor's first element.

    Raises:
        UserError: not a safetensors file, a pickle, a corrupt header, or no tensor ``name``.
    """

    def __init__(self, path: Path, name: str, opener: Opener = _open_binary) -> None:
        self.path = Path(path)
        self.opener = opener
        where = repr(str(path))
        try:
            with opener(self.path) as handle:
                head = handle.read(8)
                if len(head) != 8:
                    raise ValueError("file shorter than a safetensors header")
                (length,) = struct.unpack("<Q", head)
                if head[:2] == b"PK" or (head[:1] == b"\x80" and length > _HEADER_LIMIT):
                    raise UserError(f"{where} looks like a pickle / torch.save file, not an expert trajectory")
                if length > _HEADER_LIMIT:
                    raise ValueError(f"header of {length} bytes")
                header = json.loads(handle.read(length))
        except UserError:
            raise
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{where} is not a readable expert trajectory file (safetensors): {exc}") from exc
        if not isinstance(header, dict) or not isinstance(header.get(name), dict):
            raise UserError(f"{where}: no tensor {name!r} in the file")
        try:
            self.metadata = json.loads((header.get("__metadata__") or {}).get("dcbench", "{}"))
            info = header[name]
            self.dtype = str(info["dtype"])
            self.shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: corrupt safetensors header ({type(exc).__name__}: {exc})") from exc
        if not isinstance(self.metadata, dict):
            raise UserError(f"{where}: corrupt expert metadata (not a JSON object)")
        self.data_start = 8 + length + begin
        self._nbytes = end - begin

    def read_rows(self, rows: Sequence[int]) -> Tensor:
        """Rows ``rows`` of a 2-D float32 tensor, ``(len(rows), shape[1])``, reading only their bytes."""
        if self.dtype != "F32" or len(self.shape) != 2 or self._nbytes != self.shape[0] * self.shape[1] * 4:
            raise UserError(f"{str(self.path)!r}: expected a 2-D float32 tensor, got {self.dtype} {self.shape}")
        count, width = self.shape
        out = torch.empty((len(rows), width), dtype=torch.float32)
        view = out.numpy()
        with self.opener(self.path) as handle:
            for k, row in enumerate(rows):
                if not 0 <= row < count:
                    raise IndexError(f"row {row} out of range 0..{count - 1} in {self.path}")
                handle.seek(self.data_start + 4 * width * int(row))
                got = handle.readinto(memoryview(view[k]).cast("B"))
                if got != 4 * width:
                    raise UserError(f"{str(self.path)!r} is truncated (row {row} incomplete)")
        if sys.byteorder != "little":  # safetensors stores little-endian
            out = out.numpy().byteswap(inplace=False)
            out = torch.from_numpy(out)
        return out


class ExpertStore:
    """Expert trajectories on disk: the manifest, and the trajectories loaded on demand.

    Open one with :meth:`open`. ``rows(i, epochs)`` reads only the requested snapshots of the
    ``i``-th finished expert in file order (``0 <= i < num_experts``): what a matching step uses.
    ``trajectory(i)`` reads a whole expert; recently read trajectories are kept in memory up to
    ``cache_mib``.

    Attributes:
        directory: The store directory.
        metadata: The manifest's JSON metadata.
    """

    def __init__(
        self,
        directory: Path,
        metadata: dict[str, Any],
        zca: ZCAState | None,
        *,
        max_experts: int | None = None,
        cache_mib: float = 1024,
    ) -> None:
        self.directory = Path(directory)
        self.metadata = metadata
        self._zca = zca
        self._max_experts = max_experts
        self._cache_bytes = int(cache_mib * 2**20)
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        try:
            self._config = ExpertConfig.from_dict(dict(metadata["config"]))
            self._layout = {
                "names": [str(n) for n in metadata["layout"]["names"]],
                "shapes": [[int(d) for d in s] for s in metadata["layout"]["shapes"]],
            }
            norm = metadata["normalisation"]
            self._preprocessing = Preprocessing(
                mean=tuple(float(m) for m in norm["mean"]), std=tuple(float(s) for s in norm["std"]), zca=zca
            )
            if (norm["kind"] == "zca") != (zca is not None):
                raise ValueError("normalisation kind and the ZCA tensors disagree")
            self._classes = [str(c) for c in metadata["classes"]]
            self._key = str(metadata["key"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{str(self.directory / MANIFEST)!r}: corrupt expert manifest ({type(exc).__name__}: {exc}); "
                "delete the directory and train the experts again"
            ) from exc
        self.refresh()

    @classmethod
    def open(cls, directory: Path | str, *, max_experts: int | None = None, cache_mib: float = 1024) -> ExpertStore:
        """Open the store in ``directory``.

        Args:
            directory: A directory written by :func:`train_experts` or :func:`import_upstream`.
            max_experts: Use only experts ``0 .. max_experts - 1`` (those of a config asking for
                that many); None uses every expert file present.
            cache_mib: Memory for recently read trajectories (at least one is always kept).

        Raises:
            UserError: no store there, or a corrupt / foreign / pickled manifest.
        """
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise UserError(
                f"no expert store in {str(directory)!r} (no {MANIFEST}); train experts with "
                "'dcbench experts --dataset ...' or import upstream buffers with 'dcbench experts --import'"
            )
        tensors, meta = read_tensor_file(path, what="expert manifest")
        zca = validate_manifest(meta, tensors, path)
        return cls(directory, meta, zca, max_experts=max_experts, cache_mib=cache_mib)

    # -- what the store holds ------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan the directory for finished expert files."""
        found = finished_indices(self.directory)
        if self._max_experts is not None:
            found = [i for i in found if i < self._max_experts]
        self._indices = found
        self._cache.clear()

    @property
    def config(self) -> ExpertConfig:
        """The config the experts were trained (or recorded as imported) with."""
        return self._config

    @property
    def layout(self) -> dict[str, Any]:
        """The flat-parameter layout ``{"names": [...], "shapes": [[...], ...]}``."""
        return self._layout

    @property
    def key(self) -> str:
        """The store key (see :meth:`ExpertConfig.key`)."""
        return self._key

    @property
    def num_params(self) -> int:
        """``P``, the length of one flat parameter snapshot."""
        return layout_numel(self._layout)

    @property
    def epochs(self) -> int:
        """Training epochs per expert (each trajectory has ``epochs + 1`` snapshots)."""
        return self._config.epochs

    @property
    def dataset_name(self) -> str:
        """Name of the dataset the experts were trained on."""
        return str(self.metadata["dataset"])

    @property
    def classes(self) -> list[str]:
        """Class names, index = label."""
        return list(self._classes)

    @property
    def preprocessing(self) -> Preprocessing:
        """The normalisation / ZCA state the experts saw their inputs in."""
        return self._preprocessing

    @property
    def origin(self) -> dict[str, Any]:
        """Where the experts came from (``{"kind": "trained"}`` or ``{"kind": "imported", ...}``)."""
        return dict(self.metadata.get("origin") or {})

    @property
    def expert_indices(self) -> list[int]:
        """File indices of the finished experts, sorted."""
        return list(self._indices)

    @property
    def num_experts(self) -> int:
        """Number of finished experts (expert files present)."""
        return len(self._indices)

    def expert_path(self, i: int) -> Path:
        """Path of the ``i``-th finished expert's file."""
        if not 0 <= i < len(self._indices):
            raise IndexError(f"expert {i} out of range: the store in {self.directory} holds {self.num_experts}")
        return self.directory / expert_filename(self._indices[i])

    def expert_metadata(self, i: int) -> dict[str, Any]:
        """The JSON metadata of the ``i``-th finished expert (its header only is read)."""
        path = self.expert_path(i)
        return validate_expert_metadata(read_tensor_file(path, what="expert trajectory", tensors=False)[1], path)

    def val_accuracies(self) -> list[float]:
        """Final validation accuracy of every finished expert that recorded one."""
        accs = (self.expert_metadata(i).get("val_accuracy") for i in range(self.num_experts))
        return [float(a) for a in accs if a is not None]

    # -- trajectories ------------------------------------------------------------------

    def rows(self, i: int, epochs: Sequence[int], *, opener: Opener | None = None) -> Tensor:
        """Snapshots ``epochs`` of the ``i``-th finished expert, float32 ``(len(epochs), P)`` on the CPU.

        Reads the file's header and exactly these rows (``4 P`` bytes each), whatever the number of
        epochs; nothing is cached. The rows are checked for NaN and inf.

        Args:
            i: Expert position (``0 <= i < num_experts``).
            epochs: Snapshot indices in ``0 .. epochs`` (repeats allowed).
            opener: Opens the file for binary reading (default: ``open``).

        Raises:
            IndexError: ``i`` or an epoch out of range.
            UserError: the file is corrupt, foreign, belongs to another store, or a row read holds
                NaN or inf.
        """
        path = self.expert_path(i)
        epochs = [int(e) for e in epochs]
        bad = [e for e in epochs if not 0 <= e <= self.epochs]
        if bad:
            raise IndexError(f"epoch(s) {bad} out of range: the experts have snapshots 0..{self.epochs}")
        layout = RowFile(path, "trajectory", opener or _open_binary)
        self._check_expert_header(path, layout.metadata)
        expected = (self.epochs + 1, self.num_params)
        if layout.dtype != "F32" or layout.shape != expected:
            raise UserError(
                f"{str(path)!r}: expected a float32 trajectory of shape {expected}, got {layout.dtype} {layout.shape}"
            )
        out = layout.read_rows(epochs)
        finite = torch.isfinite(out).all(dim=1)
        if not bool(finite.all()):
            which = [e for e, ok in zip(epochs, finite.tolist(), strict=True) if not ok]
            raise UserError(
                f"{str(path)!r}: snapshot(s) at epoch {which} contain NaN or inf; delete the file and "
                "train or import that expert again"
            )
        return out

    def _check_expert_header(self, path: Path, meta: dict[str, Any]) -> None:
        validate_expert_metadata(meta, path)
        if meta.get("key") != self._key:
            raise UserError(
                f"{str(path)!r} belongs to another expert store (key {meta.get('key')!r}, this store "
                f"{self._key!r}); remove it or move it to its own store"
            )

    def trajectory(self, i: int) -> Tensor:
        """The ``i``-th finished expert's trajectory: float32 ``(epochs + 1, P)`` on the CPU.

        The returned tensor may be shared with the in-memory cache: do not modify it in place.

        Raises:
            IndexError: ``i`` out of range.
            UserError: the file is corrupt, foreign, or belongs to another store.
        """
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        path = self.expert_path(i)
        tensors, meta = read_tensor_file(path, what="expert trajectory")
        self._check_expert_header(path, meta)
        traj = validate_trajectory_rows(tensors.get("trajectory"), path, (self.epochs + 1, self.num_params))
        self._remember(i, traj)
        return traj

    def segment(self, i: int, start_epoch: int, num_epochs: int) -> tuple[Tensor, Tensor]:
        """``(theta_start, theta_target)``: snapshots ``start_epoch`` and ``start_epoch + num_epochs``.

        Reads only these two rows (:meth:`rows`).

        Raises:
            ValueError: the segment does not fit in ``0 .. epochs``.
        """
        if start_epoch < 0 or num_epochs < 1 or start_epoch + num_epochs > self.epochs:
            raise ValueError(
                f"segment [{start_epoch}, {start_epoch + num_epochs}] does not fit the experts' "
                f"{self.epochs} epochs (snapshots 0..{self.epochs})"
            )
        pair = self.rows(i, [start_epoch, start_epoch + num_epochs])
        return pair[0], pair[1]

    def _remember(self, i: int, traj: Tensor) -> None:
        self._cache[i] = traj
        size = lambda t: t.numel() * t.element_size()  # noqa: E731
        while len(self._cache) > 1 and sum(size(t) for t in self._cache.values()) > self._cache_bytes:
            self._cache.popitem(last=False)

    # -- compatibility -----------------------------------------------------------------

    def check_compatible(self, dataset: Dataset, model_layout: dict[str, Any]) -> None:
        """Raise a UserError unless these experts fit ``dataset`` and a model of ``model_layout``.

        Compares the dataset name, class order, normalisation kind, mean and std (without ZCA;
        ZCA ignores them), the ZCA state (mean and matrix within a tolerance) and the parameter
        layout.
        """
        where = f"experts in {self.directory}"
        name = self.dataset_name
        if dataset.name != name:
            raise UserError(
                f"{where} were trained on {name}; this run uses {dataset.name}: "
                f"train experts for it ('dcbench experts --dataset {dataset.name}')"
            )
        if list(dataset.classes) != self._classes:
            raise UserError(
                f"{where} were trained on {name} with another class order or class set; train matching experts"
            )
        mine, theirs = self._preprocessing, dataset.preprocessing
        if mine.kind != theirs.kind:
            if mine.kind == "zca":
                raise UserError(
                    f"{where} were trained on {name} with ZCA; this run uses no ZCA: "
                    "pass --zca or train matching experts"
                )
            raise UserError(
                f"{where} were trained on {name} without ZCA (mean/std); this run uses ZCA: "
                "pass --no-zca or train matching experts ('dcbench experts ... --zca')"
            )
        if mine.zca is None and (not _close(mine.mean, theirs.mean) or not _close(mine.std, theirs.std)):
            raise UserError(
                f"{where} were trained on {name} normalised with mean {list(mine.mean)} std "
                f"{list(mine.std)}; this run uses mean {list(theirs.mean)} std {list(theirs.std)}: "
                "train matching experts"
            )
        if mine.zca is not None and theirs.zca is not None:
            problem = _zca_difference(mine.zca, theirs.zca)
            if problem:
                raise UserError(
                    f"{where} were trained on {name} with a different ZCA whitening ({problem}): "
                    "train matching experts (the ZCA state travels with them)"
                )
        if not _same_layout(self._layout, model_layout):
            raise UserError(
                f"{where} were trained for {self._config.model} with {self.num_params:,} parameters "
                f"per snapshot; this run's model has {layout_numel(model_layout):,} "
                f"({_describe_layout_difference(self._layout, model_layout)}): train experts for this "
                "model ('dcbench experts --model ...')"
            )

    def describe(self) -> str:
        """One line: experts, epochs, parameters, size on disk and directory."""
        size = storage_bytes(self.num_experts, self.epochs, self.num_params)
        return (
            f"{self.num_experts} expert(s) of {self.dataset_name}/{self._config.model}, "
            f"{self.epochs} epochs, {self.num_params:,} parameters, {human_bytes(size)} in {self.directory}"
        )


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= _NORM_ATOL for x, y in zip(a, b, strict=True))


def _zca_difference(a: ZCAState, b: ZCAState) -> str:
    if tuple(a.matrix.shape) != tuple(b.matrix.shape) or tuple(a.mean.shape) != tuple(b.mean.shape):
        return f"matrix {tuple(a.matrix.shape)} vs {tuple(b.matrix.shape)}"
    ma, mb = a.matrix.detach().cpu().float(), b.matrix.detach().cpu().float()
    scale = float(mb.abs().max()) or 1.0
    if not torch.allclose(ma, mb, rtol=_ZCA_RTOL, atol=_ZCA_ATOL * scale):
        return f"max |matrix difference| {float((ma - mb).abs().max()):.3g}"
    va, vb = a.mean.detach().cpu().float(), b.mean.detach().cpu().float()
    if not torch.allclose(va, vb, rtol=_ZCA_RTOL, atol=_ZCA_ATOL):
        return f"max |mean difference| {float((va - vb).abs().max()):.3g}"
    return ""


def _same_layout(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return list(a["names"]) == list(b["names"]) and [list(s) for s in a["shapes"]] == [list(s) for s in b["shapes"]]


def _describe_layout_difference(stored: dict[str, Any], model: dict[str, Any]) -> str:
    s = dict(zip(stored["names"], (list(x) for x in stored["shapes"]), strict=True))
    m = dict(zip(model["names"], (list(x) for x in model["shapes"]), strict=True))
    problems = [f"{n}: stored {s[n]} vs model {m[n]}" for n in m if n in s and s[n] != m[n]]
    problems += [f"{n} only in the model" for n in m if n not in s]
    problems += [f"{n} only in the experts" for n in s if n not in m]
    if not problems:
        problems = ["same parameters in a different order"]
    more = f"; {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


__all__ = [
    "EXPERT_FORMAT",
    "RowFile",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "ExpertStore",
    "expert_filename",
    "finished_indices",
    "manifest_metadata",
    "validate_expert_metadata",
    "validate_manifest",
    "validate_trajectory_rows",
    "write_expert",
    "write_manifest",
]
