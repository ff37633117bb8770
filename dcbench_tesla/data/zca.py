"""ZCA whitening (kornia's, as in MTT) and an on-disk cache of fitted states.

The fit is kornia's ``ZCAWhitening(eps=eps, compute_inv=True)`` on the flattened training images
in [0, 1]: ``white = (x - mu) @ T`` with ``T = U (S + eps)^-1/2 U^T`` (the SVD of the unbiased
covariance) and ``T_inv = U (S + eps)^1/2 U^T``. :class:`~dcbench_tesla.data.dataset.Preprocessing`
applies exactly that product, and inverts with ``x @ T_inv + mu`` (kornia's ``inverse_transform``).

Fitting costs an SVD of a ``d x d`` matrix (``d = C*H*W``): 8-13 s at 3x32x32 on a CPU, so fitted
states are cached as safetensors files under ``<cache_dir>/zca/<key>.safetensors``.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from dcbench_tesla.data.dataset import ZCAState
from dcbench_tesla.errors import UserError
from dcbench_tesla.files import read_tensor_file, write_tensor_file

DEFAULT_EPS = 0.1
_HASH_SAMPLE_ROWS = 256


def fit_zca(images01: Tensor, eps: float = DEFAULT_EPS) -> ZCAState:
    """Fit kornia's ZCA whitening on training images in [0, 1].

    Args:
        images01: (N, C, H, W) (or (N, d)) float images in [0, 1]; N >= 2.
        eps: Added to the covariance eigenvalues before the inverse square root (MTT: 0.1).

    Returns:
        The fitted state: mean (d,), matrix (d, d), inverse (d, d), all float32 on the CPU.
    """
    from kornia.enhance import ZCAWhitening

    flat = images01.detach().reshape(images01.shape[0], -1).float()
    zca = ZCAWhitening(eps=float(eps), compute_inv=True).fit(flat)
    return ZCAState(
        mean=zca.mean_vector.reshape(-1).cpu().contiguous(),
        matrix=zca.transform_matrix.cpu().contiguous(),
        eps=float(eps),
        inverse=zca.transform_inv.cpu().contiguous(),
    )


def images_digest(images01: Tensor) -> str:
    """A short content hash of ``images01``: shape, dtype, sampled rows and the total sum."""
    x = images01.detach().cpu()
    h = hashlib.sha256()
    h.update(repr((tuple(x.shape), str(x.dtype))).encode())
    n = x.shape[0]
    if n:
        rows = torch.linspace(0, n - 1, steps=min(n, _HASH_SAMPLE_ROWS)).round().long().unique()
        h.update(x[rows].contiguous().numpy().tobytes())
        h.update(repr(float(x.double().sum())).encode())
    return h.hexdigest()[:16]


def zca_cache_key(name: str, images01: Tensor, eps: float = DEFAULT_EPS) -> str:
    """Cache key naming the dataset, the image shape, ``eps`` and a content hash."""
    shape = "x".join(str(int(s)) for s in images01.shape)
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return f"{safe_name}-{shape}-eps{eps:g}-{images_digest(images01)}"


ZCA_FORMAT = "dcbench-tesla/zca"


def save_zca(state: ZCAState, path: Path) -> None:
    """Write ``state`` to a safetensors file atomically (temp file + rename)."""
    tensors = {"mean": state.mean, "matrix": state.matrix}
    if state.inverse is not None:
        tensors["inverse"] = state.inverse
    write_tensor_file(path, tensors, {"format": ZCA_FORMAT, "eps": float(state.eps)})


def load_zca(path: Path) -> ZCAState:
    """Read a state written by :func:`save_zca`.

    Raises:
        UserError: not a ZCA cache file, or a corrupt one.
    """
    tensors, meta = read_tensor_file(path, what="ZCA cache")
    if meta.get("format") != ZCA_FORMAT or not {"mean", "matrix"} <= set(tensors):
        raise UserError(f"{str(path)!r} is not a dcbench ZCA cache file")
    return ZCAState(
        mean=tensors["mean"],
        matrix=tensors["matrix"],
        eps=float(meta.get("eps", DEFAULT_EPS)),
        inverse=tensors.get("inverse"),
    )


def cached_zca(images01: Tensor, cache_dir: Path, key: str, *, eps: float = DEFAULT_EPS) -> ZCAState:
    """Return the ZCA state fitted on ``images01``, from ``cache_dir/zca/<key>.safetensors`` if there.

    A missing, unreadable or mismatching cache file is (re)fitted and rewritten atomically.

    Args:
        images01: Training images in [0, 1].
        cache_dir: Cache root (``default_cache_dir()``).
        key: File stem; build it with :func:`zca_cache_key` so that it names the dataset,
            the shape and a content hash of the images.
        eps: ZCA regularisation.
    """
    path = Path(cache_dir) / "zca" / f"{key}.safetensors"
    d = int(images01[0].numel()) if images01.shape[0] else 0
    if path.is_file():
        try:
            state = load_zca(path)
            if state.matrix.shape == (d, d) and state.mean.shape == (d,) and state.eps == float(eps):
                return state
            warnings.warn(f"ZCA cache {path} does not match the data; refitting", stacklevel=2)
        except Exception as exc:  # a corrupt cache is rebuilt, never fatal
            warnings.warn(f"ZCA cache {path} is unreadable ({exc}); refitting", stacklevel=2)
    state = fit_zca(images01, eps=eps)
    try:
        save_zca(state, path)
    except OSError as exc:  # an unwritable cache costs a refit next time, nothing more
        warnings.warn(f"could not cache the ZCA state at {path} ({exc})", stacklevel=2)
    return state


__all__ = ["cached_zca", "fit_zca", "images_digest", "load_zca", "save_zca", "zca_cache_key"]
