"""Differentiable Siamese augmentation (DSA) with seeded, replayable, vectorised draws.

Mode 'S' (the one MTT, TESLA and DM use): each call draws ONE family for the whole batch
(color, crop, cutout, flip, scale or rotate), then that family's parameters per sample.
All draws come from a local CPU ``torch.Generator`` seeded by the caller, never from the
global RNG, so a call can be replayed exactly (TESLA's second loop recomputes the same
augmented batch) and the global random stream of the caller is untouched.

With ``siamese=True`` one parameter set is drawn and shared by the whole batch, so two
batches of different sizes given the same seed get identical transforms (DM pairs a real
and a synthetic batch this way).

The transforms are also exposed as plain functions of explicit parameters
(:func:`apply_color`, :func:`apply_crop`, ...), which is what the class calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


# -- transforms with explicit parameters ------------------------------------------------


def _per_sample(p: Tensor) -> Tensor:
    """Shape a (B,) or (1,) parameter for broadcasting against (B, C, H, W)."""
    return p.reshape(-1, 1, 1, 1)


def apply_color(x: Tensor, brightness: Tensor, saturation: Tensor, contrast: Tensor) -> Tensor:
    """Brightness shift, then saturation and contrast scaling, in that order.

    Args:
        x: Images (B, C, H, W).
        brightness: Additive shift per sample, (B,) or (1,).
        saturation: Factor around the per-pixel channel mean, (B,) or (1,).
        contrast: Factor around the per-image mean, (B,) or (1,).

    Returns:
        The transformed images, same shape as ``x``.

    """
    x = x + _per_sample(brightness)
    pixel_mean = x.mean(dim=1, keepdim=True)
    x = (x - pixel_mean) * _per_sample(saturation) + pixel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * _per_sample(contrast) + image_mean


def _shift_axis(x: Tensor, shift: Tensor, dim: int) -> Tensor:
    """Shift ``x`` along ``dim`` (2 or 3) by an integer per sample, filling with zeros.

    ``out[..., i, ...] = x[..., i + shift, ...]`` where that index is inside the image, else 0.
    """
    batch, channels, size = x.shape[0], x.shape[1], x.shape[dim]
    idx = torch.arange(size, device=x.device).unsqueeze(0) + shift.to(x.device).long().reshape(-1, 1)
    idx = idx.expand(batch, size)  # (B, size)
    valid = (idx >= 0) & (idx < size)
    idx = idx.clamp(0, size - 1)
    if dim == 2:
        view = (batch, 1, size, 1)
        full = (batch, channels, size, x.shape[3])
    else:
        view = (batch, 1, 1, size)
        full = (batch, channels, x.shape[2], size)
    shifted = torch.gather(x, dim, idx.view(view).expand(full))
    return shifted * valid.view(view).to(x.dtype)


def apply_crop(x: Tensor, shift_y: Tensor, shift_x: Tensor) -> Tensor:
    """Translate each image by integer shifts with zero fill (the DSA "crop").

    ``out[b, :, i, j] = x[b, :, i + shift_y[b], j + shift_x[b]]`` where inside, else 0.

    Args:
        x: Images (B, C, H, W).
        shift_y: Integer row shifts, (B,) or (1,).
        shift_x: Integer column shifts, (B,) or (1,).

    Returns:
        The shifted images, same shape as ``x``.

    """
    return _shift_axis(_shift_axis(x, shift_y, 2), shift_x, 3)


def apply_cutout(x: Tensor, center_y: Tensor, center_x: Tensor, size_y: int, size_x: int) -> Tensor:
    """Zero a ``size_y`` x ``size_x`` rectangle centred per sample (clipped at the borders).

    The rectangle covers rows ``[center_y - size_y // 2, center_y - size_y // 2 + size_y)``
    and the matching columns.

    Args:
        x: Images (B, C, H, W).
        center_y: Integer centre rows, (B,) or (1,).
        center_x: Integer centre columns, (B,) or (1,).
        size_y: Height of the zeroed rectangle.
        size_x: Width of the zeroed rectangle.

    Returns:
        The images with the rectangle zeroed, same shape as ``x``.

    """
    height, width = x.shape[2], x.shape[3]
    top = (center_y.to(x.device).long() - size_y // 2).reshape(-1, 1)
    left = (center_x.to(x.device).long() - size_x // 2).reshape(-1, 1)
    rows = torch.arange(height, device=x.device).unsqueeze(0)
    cols = torch.arange(width, device=x.device).unsqueeze(0)
    in_rows = (rows >= top) & (rows < top + size_y)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size_x)  # (B, W)
    keep = ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))  # (B, H, W)
    return x * keep.unsqueeze(1).to(x.dtype)


def apply_flip(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror (left-right) the images whose ``flip`` entry is true.

    Args:
        x: Images (B, C, H, W).
        flip: Booleans, (B,) or (1,).

    Returns:
        The images, flipped where asked.

    """
    mask = flip.to(device=x.device, dtype=torch.bool).reshape(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def _apply_affine(x: Tensor, theta: Tensor) -> Tensor:
    theta = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def apply_scale(x: Tensor, scale_y: Tensor, scale_x: Tensor) -> Tensor:
    """Resample each image with the affine grid ``diag(scale_x, scale_y)`` (zero padding).

    Factors above 1 sample a wider area (the content shrinks); 1 is the identity.

    Args:
        x: Images (B, C, H, W).
        scale_y: Vertical factors, (B,) or (1,).
        scale_x: Horizontal factors, (B,) or (1,).

    Returns:
        The resampled images, same shape as ``x``.

    """
    scale_x = scale_x.reshape(-1)
    scale_y = scale_y.reshape(-1)
    zero = torch.zeros_like(scale_x)
    theta = torch.stack((torch.stack((scale_x, zero, zero), dim=1), torch.stack((zero, scale_y, zero), dim=1)), dim=1)
    return _apply_affine(x, theta)


def apply_rotate(x: Tensor, angle_rad: Tensor) -> Tensor:
    """Rotate each image about its centre by ``angle_rad`` (zero padding); 0 is the identity.

    Positive angles turn the content clockwise (``pi / 2`` equals ``torch.rot90(x, -1, (2, 3))``).

    Args:
        x: Images (B, C, H, W).
        angle_rad: Angles in radians, (B,) or (1,).

    Returns:
        The rotated images, same shape as ``x``.

    """
    angle = angle_rad.reshape(-1)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack((torch.stack((cos, sin, zero), dim=1), torch.stack((-sin, cos, zero), dim=1)), dim=1)
    return _apply_affine(x, theta)


# -- the seeded augmenter -----------------------------------------------------------------


class DSA:
    """Differentiable Siamese augmentation, mode 'S', with seeded replayable draws.

    Args:
        strategy: Families joined by ``"_"`` (any of color, crop, cutout, flip, scale,
            rotate), or ``"none"`` / ``""`` for the identity.
        brightness: Brightness shift range: ``(U - 0.5) * brightness``.
        saturation: Saturation factor ``U * saturation``.
        contrast: Contrast factor ``U + contrast``.
        crop: Maximum shift as a fraction of the image size.
        cutout: Side of the zeroed square as a fraction of the image size.
        flip: Probability of a left-right flip.
        scale: Factors drawn uniformly in ``[1 / scale, scale]`` for each axis.
        rotate: Maximum rotation in degrees (uniform in ``[-rotate, rotate]``).
        siamese: Draw one parameter set shared by the whole batch.

    Raises:
        ValueError: On an unknown family or an invalid parameter.

    """

    def __init__(
        self,
        strategy: str = DEFAULT_STRATEGY,
        *,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
        crop: float = 0.125,
        cutout: float = 0.5,
        flip: float = 0.5,
        scale: float = 1.2,
        rotate: float = 15.0,
        siamese: bool = False,
    ) -> None:
        strategy = (strategy or "none").strip().lower()
        families = () if strategy == "none" else tuple(f for f in strategy.split("_") if f)
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(
                f"unknown DSA famil{'y' if len(unknown) == 1 else 'ies'} {unknown} in strategy "
                f"{strategy!r}; choose from {', '.join(FAMILIES)} joined by '_', or 'none'"
            )
        if scale < 1.0:
            raise ValueError(f"DSA scale must be >= 1 (factors in [1/scale, scale]), got {scale}")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"DSA flip probability must be in [0, 1], got {flip}")
        self.strategy = strategy if families else "none"
        self.families: tuple[str, ...] = families
        self.brightness = brightness
        self.saturation = saturation
        self.contrast = contrast
        self.crop = crop
        self.cutout = cutout
        self.flip = flip
        self.scale = scale
        self.rotate = rotate
        self.siamese = siamese

    @property
    def enabled(self) -> bool:
        """Whether any family is active (``False`` for ``"none"``)."""
        return bool(self.families)

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r}, siamese={self.siamese})"

    def draw(self, seed: int, batch_size: int, image_size: tuple[int, int]) -> tuple[str, dict[str, Tensor]]:
        """Draw the family and its parameters for one call (CPU tensors).

        Args:
            seed: Seed of the local generator.
            batch_size: Number of samples (ignored when ``siamese``: one draw for all).
            image_size: ``(height, width)`` of the images.

        Returns:
            The family name and its parameters, each of shape (n,), n = 1 if siamese
            else ``batch_size``. Empty name and parameters if the strategy is ``"none"``.

        """
        if not self.families:
            return "", {}
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed))
        family = self.families[int(torch.randint(len(self.families), (1,), generator=gen).item())]
        n = 1 if self.siamese else batch_size
        height, width = image_size

        def uniform() -> Tensor:
            return torch.rand(n, generator=gen, dtype=torch.float64)

        if family == "color":
            return family, {
                "brightness": (uniform() - 0.5) * self.brightness,
                "saturation": uniform() * self.saturation,
                "contrast": uniform() + self.contrast,
            }
        if family == "crop":
            max_y, max_x = int(height * self.crop + 0.5), int(width * self.crop + 0.5)
            return family, {
                "shift_y": torch.randint(-max_y, max_y + 1, (n,), generator=gen),
                "shift_x": torch.randint(-max_x, max_x + 1, (n,), generator=gen),
            }
        if family == "cutout":
            return family, {
                "center_y": torch.randint(0, height, (n,), generator=gen),
                "center_x": torch.randint(0, width, (n,), generator=gen),
            }
        if family == "flip":
            return family, {"flip": uniform() < self.flip}
        if family == "scale":
            low = 1.0 / self.scale
            return family, {
                "scale_y": uniform() * (self.scale - low) + low,
                "scale_x": uniform() * (self.scale - low) + low,
            }
        # rotate
        return family, {"angle_rad": (uniform() - 0.5) * 2.0 * math.radians(self.rotate)}

    def apply(self, x: Tensor, family: str, params: dict[str, Tensor]) -> Tensor:
        """Apply ``family`` with explicit ``params`` (as returned by :meth:`draw`) to ``x``."""
        if not family:
            return x
        if family in ("color", "scale", "rotate"):
            params = {k: v.to(device=x.device, dtype=x.dtype) for k, v in params.items()}
        else:
            params = {k: v.to(device=x.device) for k, v in params.items()}
        if family == "color":
            return apply_color(x, **params)
        if family == "crop":
            return apply_crop(x, **params)
        if family == "cutout":
            size_y = int(x.shape[2] * self.cutout + 0.5)
            size_x = int(x.shape[3] * self.cutout + 0.5)
            return apply_cutout(x, size_y=size_y, size_x=size_x, **params)
        if family == "flip":
            return apply_flip(x, **params)
        if family == "scale":
            return apply_scale(x, **params)
        if family == "rotate":
            return apply_rotate(x, **params)
        raise ValueError(f"unknown DSA family {family!r}")

    def __call__(self, x: Tensor, seed: int) -> Tensor:
        """Augment a batch (B, C, H, W); the same ``seed`` replays the same transform.

        Args:
            x: Images (B, C, H, W), floating point, on any device.
            seed: Seed of the local CPU generator used for every draw of this call.

        Returns:
            A new tensor (``x`` itself for ``"none"``), differentiable with respect to ``x``.

        """
        if not self.families:
            return x
        if x.dim() != 4:
            raise ValueError(f"DSA expects images of shape (B, C, H, W), got {tuple(x.shape)}")
        family, params = self.draw(seed, x.shape[0], (x.shape[2], x.shape[3]))
        return self.apply(x, family, params)


def dsa_from_name(name: str | None, *, siamese: bool = False) -> DSA:
    """Build a :class:`DSA` from a config value.

    ``None``, ``"none"`` or ``""`` give the identity; ``"dsa"`` or ``"default"`` the
    default strategy; anything else is read as a strategy string.
    """
    if name is None:
        return DSA("none", siamese=siamese)
    key = name.strip().lower()
    if key in ("dsa", "default"):
        return DSA(DEFAULT_STRATEGY, siamese=siamese)
    return DSA(key, siamese=siamese)


__all__ = [
    "DEFAULT_STRATEGY",
    "DSA",
    "FAMILIES",
    "apply_color",
    "apply_crop",
    "apply_cutout",
    "apply_flip",
    "apply_rotate",
    "apply_scale",
    "dsa_from_name",
]
