from __future__ import annotations

import math

import pytest
import torch

from dcbench_tesla.data.augment import (
    DEFAULT_STRATEGY,
    DSA,
    FAMILIES,
    apply_color,
    apply_crop,
    apply_cutout,
    apply_rotate,
    apply_scale,
    dsa_from_name,
)

SHAPES = [(1, 8), (3, 32)]  # (channels, size)


def _images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=gen)


# -- single families ------------------------------------------------------------------


def test_flip_gives_image_or_mirror_and_both_occur():
    x = _images(32, 3, 8)
    out = DSA("flip")(x, seed=3)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert bool(same.any()) and bool(mirrored.any())


def test_apply_crop_known_shift_zero_fill():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    out = apply_crop(x, torch.tensor([1]), torch.tensor([-2]))
    expected = torch.zeros_like(x)
    for i in range(4):
        for j in range(4):
            if 0 <= i + 1 < 4 and 0 <= j - 2 < 4:
                expected[0, 0, i, j] = x[0, 0, i + 1, j - 2]
    assert torch.equal(out, expected)


@pytest.mark.parametrize("channels,size", SHAPES)
def test_crop_is_an_integer_shift_within_ratio(channels, size):
    x = torch.arange(1.0, 1.0 + 6 * channels * size * size).view(6, channels, size, size)
    aug = DSA("crop")
    out = aug(x, seed=11)
    limit = int(size * 0.125 + 0.5)
    family, params = aug.draw(11, 6, (size, size))
    assert family == "crop"
    assert int(params["shift_y"].abs().max()) <= limit and int(params["shift_x"].abs().max()) <= limit
    for b in range(6):
        matches = [
            (dy, dx)
            for dy in range(-limit, limit + 1)
            for dx in range(-limit, limit + 1)
            if torch.equal(out[b : b + 1], apply_crop(x[b : b + 1], torch.tensor([dy]), torch.tensor([dx])))
        ]
        assert len(matches) == 1
        # values kept are a subset of the original ones, the rest are zero fill
        kept = out[b][out[b] != 0]
        assert bool(torch.isin(kept, x[b]).all())


def test_apply_cutout_exact_square():
    x = torch.ones(1, 2, 32, 32)
    out = apply_cutout(x, torch.tensor([16]), torch.tensor([10]), 16, 16)
    zeros = out[0, 0] == 0
    assert int(zeros.sum()) == 256
    rows, cols = zeros.nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (8, 23, 2, 17)
    assert torch.equal(out[0, 0], out[0, 1])  # same square on every channel


@pytest.mark.parametrize("channels,size", SHAPES)
def test_cutout_zeros_a_clipped_square_of_half_side(channels, size):
    side = int(size * 0.5 + 0.5)
    x = torch.ones(16, channels, size, size)
    out = DSA("cutout")(x, seed=5)
    full = 0
    for b in range(16):
        zeros = out[b, 0] == 0
        rows, cols = zeros.nonzero(as_tuple=True)
        height = int(rows.max() - rows.min() + 1)
        width = int(cols.max() - cols.min() + 1)
        assert int(zeros.sum()) == height * width  # a rectangle
        assert height <= side and width <= side
        full += height == side and width == side
        assert torch.equal(out[b], out[b, :1].expand_as(out[b]))
    assert full > 0


def test_apply_color_matches_formula():
    x = _images(2, 3, 8)
    b, s, c = torch.tensor([0.2, -0.3]), torch.tensor([1.5, 0.0]), torch.tensor([0.7, 1.2])
    out = apply_color(x, b, s, c)
    expected = []
    for i in range(2):
        y = x[i] + b[i]
        y = (y - y.mean(0, keepdim=True)) * s[i] + y.mean(0, keepdim=True)
        y = (y - y.mean()) * c[i] + y.mean()
        expected.append(y)
    torch.testing.assert_close(out, torch.stack(expected))
    # saturation 0 leaves all channels equal to the pixel mean
    torch.testing.assert_close(out[1, 0], out[1, 1])


def test_color_draw_ranges_and_call_uses_draw():
    aug = DSA("color")
    x = _images(64, 3, 8)
    family, params = aug.draw(7, 64, (8, 8))
    assert family == "color"
    assert bool((params["brightness"].abs() <= 0.5).all())
    assert bool(((params["saturation"] >= 0) & (params["saturation"] <= 2.0)).all())
    assert bool(((params["contrast"] >= 0.5) & (params["contrast"] <= 1.5)).all())
    expected = apply_color(x, **{k: v.float() for k, v in params.items()})
    torch.testing.assert_close(aug(x, seed=7), expected)


def test_scale_and_rotate_identity_and_known_rotation():
    x = _images(2, 3, 8)
    one = torch.ones(2)
    torch.testing.assert_close(apply_scale(x, one, one), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rotate(x, torch.zeros(2)), x, atol=1e-5, rtol=1e-5)
    quarter = apply_rotate(x, torch.full((2,), math.pi / 2))
    torch.testing.assert_close(quarter, torch.rot90(x, -1, (2, 3)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["scale", "rotate"])
def test_affine_draw_ranges(family):
    aug = DSA(family)
    drawn, params = aug.draw(1, 256, (32, 32))
    assert drawn == family
    if family == "scale":
        for value in params.values():
            assert bool(((value >= 1 / 1.2 - 1e-12) & (value <= 1.2 + 1e-12)).all())
    else:
        assert bool((params["angle_rad"].abs() <= math.radians(15) + 1e-12).all())
    out = aug(_images(4, 3, 32), seed=1)
    assert out.shape == (4, 3, 32, 32) and bool(torch.isfinite(out).all())


# -- the seeded augmenter -------------------------------------------------------------


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_shape_and_gradient(family, channels, size):
    x = _images(4, channels, size).requires_grad_(True)
    before = x.detach().clone()
    out = DSA(family)(x, seed=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all())
    weights = torch.linspace(0.5, 1.5, out.numel()).view_as(out)
    (out * weights).sum().backward()
    assert x.grad is not None
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    assert torch.equal(x.detach(), before)


def test_default_strategy_replays_and_seeds_differ():
    aug = DSA()
    assert aug.families == FAMILIES and aug.strategy == DEFAULT_STRATEGY
    x = _images(8, 3, 32)
    outs = [aug(x, seed=s) for s in range(12)]
    for s in range(12):
        assert torch.equal(aug(x, seed=s), outs[s])
    distinct = {tuple(o.flatten().tolist()) for o in outs}
    assert len(distinct) == 12
    assert not torch.equal(outs[0], outs[1])


def test_global_rng_untouched():
    x = _images(8, 3, 32)
    state = torch.get_rng_state()
    for seed in range(20):
        DSA()(x, seed=seed)
        DSA(siamese=True)(x, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_identical_across_batch_sizes(family):
    aug = DSA(family, siamese=True)
    big = _images(7, 3, 32)
    small = big[:3].clone()
    for seed in range(6):
        torch.testing.assert_close(aug(small, seed)[:3], aug(big, seed)[:3], rtol=0, atol=0)
    # one transform for the whole batch: identical inputs give identical outputs
    same = big[:1].expand(7, -1, -1, -1).contiguous()
    out = aug(same, seed=2)
    assert torch.equal(out, out[:1].expand_as(out))


def test_non_siamese_draws_per_sample():
    same = _images(1, 3, 32).expand(16, -1, -1, -1).contiguous()
    aug = DSA()
    differs = [not torch.equal(o, o[:1].expand_as(o)) for o in (aug(same, seed=s) for s in range(4))]
    assert any(differs)


def test_siamese_whole_pipeline_pairs_real_and_synthetic():
    aug = DSA(siamese=True)
    real, syn = _images(7, 1, 8, seed=1), _images(3, 1, 8, seed=2)
    for seed in range(10):
        joint = aug(torch.cat([real, syn]), seed)
        torch.testing.assert_close(aug(real, seed), joint[:7], rtol=0, atol=0)
        torch.testing.assert_close(aug(syn, seed), joint[7:], rtol=0, atol=0)


def test_none_is_identity_and_bad_names_raise():
    x = _images(2, 3, 8)
    assert DSA("none")(x, seed=0) is x
    assert not DSA("none").enabled
    assert dsa_from_name(None)(x, seed=1) is x
    assert dsa_from_name("dsa").families == FAMILIES
    assert dsa_from_name("flip_crop").families == ("flip", "crop")
    with pytest.raises(ValueError, match="unknown DSA"):
        DSA("color_blur")


def test_float64_and_double_backward():
    x = _images(3, 3, 8).double().requires_grad_(True)
    aug = DSA()
    for seed in range(8):
        out = aug(x, seed)
        assert out.dtype == torch.float64
        (grad,) = torch.autograd.grad((out**2).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), x)
        assert bool(torch.isfinite(second).all())
