"""Dataset registry, loaders, preprocessing (mean/std, ZCA) and DSA augmentation."""

from __future__ import annotations

import os
from pathlib import Path

from dcbench_tesla.data.dataset import Dataset, DatasetSpec, Preprocessing, ZCAState
from dcbench_tesla.registry import Registry, load_target

DATASETS: Registry[DatasetSpec] = Registry("dataset")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4866, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Measured on the digits training split (pixels scaled to [0, 1]); see data/digits.py.
DIGITS_MEAN = (0.3059,)
DIGITS_STD = (0.3765,)

for _spec in (
    DatasetSpec(
        name="digits",
        loader="dcbench_tesla.data.digits:load_digits",
        image_shape=(1, 8, 8),
        num_classes=10,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        default_model="convnet",
        needs_root=False,
        expected_files="(none: ships inside scikit-learn)",
        how_to_get="pip install scikit-learn",
        description="scikit-learn handwritten digits, 8x8 grey, 10 classes, offline (embedded default)",
    ),
    DatasetSpec(
        name="cifar10",
        loader="dcbench_tesla.data.cifar:load_cifar10",
        image_shape=(3, 32, 32),
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        default_model="convnet",
        needs_root=True,
        expected_files="cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
        how_to_get="download and extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        description="CIFAR-10, 32x32 colour, 10 classes (python pickle batches)",
    ),
    DatasetSpec(
        name="cifar100",
        loader="dcbench_tesla.data.cifar:load_cifar100",
        image_shape=(3, 32, 32),
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        default_model="convnet",
        needs_root=True,
        expected_files="cifar-100-python/{train, test, meta}",
        how_to_get="download and extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        description="CIFAR-100, 32x32 colour, 100 classes (python pickle batches)",
    ),
    DatasetSpec(
        name="tinyimagenet",
        loader="dcbench_tesla.data.tinyimagenet:load_tinyimagenet",
        image_shape=(3, 64, 64),
        num_classes=200,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_model="convnet4",
        needs_root=True,
        expected_files="tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, "
        "val/images/*.JPEG, val/val_annotations.txt}",
        how_to_get="download and extract http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        description="Tiny ImageNet, 64x64 colour, 200 classes (its folder layout)",
    ),
    DatasetSpec(
        name="imagenet64",
        loader="dcbench_tesla.data.imagenet64:load_imagenet64",
        image_shape=(3, 64, 64),
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_model="convnet4",
        needs_root=True,
        expected_files="imagenet64/{train_data_batch_1..10.npz, val_data.npz} or imagenet64/{train,val}/<class>/*.png",
        how_to_get="request 'Downsampled ImageNet 64x64' (npz) from https://image-net.org/download-images",
        description="ImageNet-1K downsampled to 64x64 (npz batches or an image folder)",
    ),
):
    DATASETS.register(_spec.name, _spec)


def default_data_root() -> Path:
    """``$DCBENCH_DATA`` or ``~/.cache/dcbench/data``."""
    return Path(os.environ.get("DCBENCH_DATA", Path.home() / ".cache" / "dcbench" / "data"))


def default_cache_dir() -> Path:
    """``$DCBENCH_CACHE`` or ``~/.cache/dcbench`` (fitted ZCA, experts)."""
    return Path(os.environ.get("DCBENCH_CACHE", Path.home() / ".cache" / "dcbench"))


def load_dataset(
    name: str,
    data_root: Path | None = None,
    *,
    zca: bool = False,
    cache_dir: Path | None = None,
) -> Dataset:
    """Load a registered dataset, preprocessed (mean/std, or ZCA when ``zca``).

    Args:
        name: Registry name ("digits", "cifar10", ...).
        data_root: Directory holding the dataset folders (default: ``default_data_root()``).
        zca: Whiten with ZCA fitted on the training split (cached under ``cache_dir``).
        cache_dir: Where fitted ZCA states are cached (default: ``default_cache_dir()``).

    Raises:
        UserError: unknown dataset, or files missing/corrupt (the message names the
            expected location and files and how to obtain them).
    """
    spec = DATASETS.get(name)
    loader = load_target(spec.loader)
    return loader(
        Path(data_root) if data_root is not None else default_data_root(),
        zca=zca,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
    )


__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "Preprocessing",
    "ZCAState",
    "default_cache_dir",
    "default_data_root",
    "load_dataset",
]
