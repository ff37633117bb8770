"""What identifies a set of expert trajectories: training config, data preprocessing, parameter layout.

The cache directory of a set of experts is named ``<dataset>-<model>-<key>``, where the key hashes
everything that changes the trajectories except how many there are (``num_experts``), so that asking
for more experts later extends the same directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from dcbench_tesla.data import DATASETS, Dataset, Preprocessing, dataset_spec
from dcbench_tesla.data.augment import DEFAULT_STRATEGY, DSA
from dcbench_tesla.errors import UserError
from dcbench_tesla.files import human_bytes
from dcbench_tesla.models import build_model
from dcbench_tesla.models.flat import FlatParams

#: Experts when neither ``--num-experts`` nor the dataset's spec (``DatasetSpec.num_experts``) says.
FALLBACK_NUM_EXPERTS = 100

_KEY_CHARS = 12


@dataclass(frozen=True)
class ExpertConfig:
    """How a set of expert trajectories is trained (MTT's ``buffer.py`` settings by default).

    Attributes:
        dataset: Dataset registry name.
        model: Model registry name.
        num_experts: Number of experts (independent initialisations) to train.
        epochs: Training epochs per expert; an expert stores ``epochs + 1`` snapshots.
        lr: SGD learning rate.
        batch_size: Training batch size.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        dsa_strategy: DSA families applied to every training batch (``"none"`` for none).
        zca: Whether the data is ZCA-whitened (must match the dataset it trains on).
        seed: Base seed; expert ``i`` is seeded from ``(seed, i)``.

    Raises:
        UserError: On an invalid value.
    """

    dataset: str
    model: str
    num_experts: int
    epochs: int = 50
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.0
    weight_decay: float = 0.0
    dsa_strategy: str = DEFAULT_STRATEGY
    zca: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        # Normalise types so that ``lr=1`` and ``lr=1.0`` give the same key.
        for name, kind in (
            ("num_experts", int),
            ("epochs", int),
            ("lr", float),
            ("batch_size", int),
            ("momentum", float),
            ("weight_decay", float),
            ("zca", bool),
            ("seed", int),
        ):
            object.__setattr__(self, name, kind(getattr(self, name)))
        problems = []
        if self.num_experts < 1:
            problems.append(f"num_experts must be at least 1, got {self.num_experts}")
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be positive and finite, got {self.lr}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        try:
            object.__setattr__(self, "dsa_strategy", DSA(self.dsa_strategy).strategy)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise UserError("invalid expert config: " + "; ".join(problems))

    @classmethod
    def for_dataset(
        cls, dataset: Dataset, *, model: str | None = None, num_experts: int | None = None, **overrides: Any
    ) -> ExpertConfig:
        """A config for ``dataset`` with its default model, default expert count and its ZCA state.

        Args:
            dataset: The loaded dataset (its name and whether it is ZCA-whitened are taken from it).
            model: Model registry name [the dataset's ``default_model``].
            num_experts: [the dataset spec's ``num_experts``].
            **overrides: Other :class:`ExpertConfig` fields (None values are ignored).
        """
        spec = dataset_spec(dataset.name) if dataset.name in DATASETS else None
        if model is None:
            if spec is None:
                raise UserError(f"dataset {dataset.name!r} is not registered; name the model explicitly")
            model = spec.default_model
        if num_experts is None:
            num_experts = spec.num_experts if spec is not None else FALLBACK_NUM_EXPERTS
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserError(f"unknown expert config field(s) {unknown}; known: {sorted(known)}")
        fields = {k: v for k, v in overrides.items() if v is not None}
        fields["zca"] = dataset.preprocessing.zca is not None
        return cls(dataset=dataset.name, model=model, num_experts=num_experts, **fields)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertConfig:
        """Rebuild a config from :meth:`to_dict` output.

        Raises:
            UserError: unknown or missing fields, or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown expert config field(s) {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"incomplete expert config: {exc}") from exc

    def training_fields(self) -> dict[str, Any]:
        """Every field except ``num_experts``: what two stores must share to hold the same experts."""
        fields = self.to_dict()
        fields.pop("num_experts")
        return fields

    def key(self, preprocessing: Preprocessing, layout: dict[str, Any]) -> str:
        """Short stable hash of this config (without ``num_experts``), the preprocessing and the layout.

        Args:
            preprocessing: The dataset's preprocessing (kind, mean/std, ZCA fingerprint are hashed).
            layout: The model's flat-parameter layout (:meth:`FlatParams.to_dict`).

        Returns:
            12 hex digits.
        """
        identity = {
            "config": self.training_fields(),
            "preprocessing": preprocessing_identity(preprocessing),
            "layout": {"names": list(layout["names"]), "shapes": [list(s) for s in layout["shapes"]]},
        }
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:_KEY_CHARS]

    def directory_name(self, preprocessing: Preprocessing, layout: dict[str, Any]) -> str:
        """``<dataset>-<model>-<key>``, the name of this config's cache directory."""
        return f"{self.dataset}-{self.model}-{self.key(preprocessing, layout)}"


def preprocessing_identity(preprocessing: Preprocessing) -> dict[str, Any]:
    """What of the preprocessing enters the cache key: kind, mean, std and a ZCA fingerprint.

    The ZCA matrix enters through a fingerprint (its shape, eps, and trace, Frobenius norm,
    absolute sum and mean-vector norm to 5 significant digits) rather than a hash of its bytes:
    refitting the same ZCA on another machine changes the last bits of millions of entries, which
    would otherwise name a new cache directory and retrain hours of experts. The full matrix is
    compared within a tolerance by :meth:`ExpertStore.check_compatible`.
    """
    identity: dict[str, Any] = {
        "kind": preprocessing.kind,
        "mean": [round(float(m), 6) for m in preprocessing.mean],
        "std": [round(float(s), 6) for s in preprocessing.std],
        "zca": None,
    }
    zca = preprocessing.zca
    if zca is not None:
        matrix = zca.matrix.detach().double().cpu()
        mean = zca.mean.detach().double().cpu()
        stats = (
            torch.trace(matrix) if matrix.dim() == 2 and matrix.shape[0] == matrix.shape[1] else matrix.sum(),
            torch.linalg.norm(matrix),
            matrix.abs().sum(),
            torch.linalg.norm(mean),
        )
        identity["zca"] = {
            "shape": list(matrix.shape),
            "eps": round(float(zca.eps), 9),
            "stats": [f"{float(s):.5g}" for s in stats],
        }
    return identity


def model_layout(model_name: str, dataset: Dataset) -> dict[str, Any]:
    """The flat-parameter layout of ``model_name`` built for ``dataset`` (global RNG untouched).

    Raises:
        UserError: unknown model name.
    """
    return FlatParams(build_for(model_name, dataset, seed=0)).to_dict()


def build_for(model_name: str, dataset: Dataset, seed: int) -> torch.nn.Module:
    """Build ``model_name`` for ``dataset``'s images and classes, initialised from ``seed`` (on the CPU).

    The global RNG is forked, so the caller's random stream is left as it was.
    """
    c, h, _ = dataset.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_name, channels=c, num_classes=dataset.num_classes, image_size=h)


def layout_numel(layout: dict[str, Any]) -> int:
    """Total number of parameters ``P`` of a layout."""
    return sum(math.prod(int(d) for d in shape) for shape in layout["shapes"])


def storage_bytes(num_experts: int, epochs: int, num_params: int) -> int:
    """Bytes of float32 trajectories: ``num_experts * (epochs + 1) * num_params * 4``."""
    return int(num_experts) * (int(epochs) + 1) * int(num_params) * 4


__all__ = [
    "FALLBACK_NUM_EXPERTS",
    "ExpertConfig",
    "build_for",
    "human_bytes",
    "layout_numel",
    "model_layout",
    "preprocessing_identity",
    "storage_bytes",
]
