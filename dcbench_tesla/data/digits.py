"""scikit-learn's handwritten digits (8x8 grey, 10 classes): real data that loads offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcbench_tesla.data.dataset import Dataset

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def split_indices(
    labels: np.ndarray, *, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``(train_idx, test_idx)``, each sorted ascending.

    :func:`~dcbench_tesla.data._build.stratified_split` holding out ``round(test_fraction * n_class)``
    images of each class (a permutation per class, in increasing label order, from one generator).
    """
    from dcbench_tesla.data._build import stratified_split

    return stratified_split(labels, lambda n: int(round(test_fraction * n)), seed)


def load_digits(root: Path | None = None, *, zca: bool = False, cache_dir: Path | None = None) -> Dataset:
    """Load scikit-learn's ``load_digits`` (1,797 images, 8x8, values 0..16) as a :class:`Dataset`.

    Pixels are scaled to [0, 1] by dividing by 16. The test split is stratified and fixed (see
    :func:`split_indices`: seed 0, 20% of each class to test, i.e. 1,438 train / 359 test images);
    :func:`~dcbench_tesla.data._build.build_dataset` then holds 10% of each training class out for
    validation (143 images), leaving a training pool of 1,295 (smallest class: 125). Normalised with
    ``DIGITS_MEAN``/``DIGITS_STD`` (measured on the 1,438 images before the validation split), or
    ZCA-whitened (fitted on the pool) when ``zca``.

    Args:
        root: Ignored (the data ships inside scikit-learn).
        zca: Whiten with ZCA fitted on the training split instead of mean/std.
        cache_dir: Cache root for the fitted ZCA state (default: ``default_cache_dir()``).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    from dcbench_tesla.data import DATASETS, DEFAULT_DATASET, default_cache_dir
    from dcbench_tesla.data._build import build_dataset

    bunch = sk_load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = split_indices(labels)
    return build_dataset(
        DATASETS.get(DEFAULT_DATASET),
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        classes=[str(i) for i in range(10)],
        zca=zca,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        source="scikit-learn load_digits",
    )
