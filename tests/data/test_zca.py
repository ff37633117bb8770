"""ZCA whitening: agreement with kornia, inversion, and the on-disk cache."""

from __future__ import annotations

import pytest
import torch
from kornia.enhance import ZCAWhitening

import dcbench_tesla.data.zca as zca_module
from dcbench_tesla.data import Preprocessing
from dcbench_tesla.data.digits import load_digits
from dcbench_tesla.data.zca import cached_zca, fit_zca, load_zca, zca_cache_key


def _images(n: int = 64, shape=(3, 4, 4), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, *shape[1:], generator=g)  # correlated channels, like real pixels
    return (0.6 * base + 0.4 * torch.rand(n, *shape, generator=g)).clamp(0, 1)


def test_apply_equals_kornia():
    x = _images()
    state = fit_zca(x, eps=0.1)
    assert state.mean.shape == (48,) and state.matrix.shape == (48, 48) and state.inverse.shape == (48, 48)
    assert state.eps == 0.1
    kornia_zca = ZCAWhitening(eps=0.1, compute_inv=True).fit(x)
    pre = Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3, zca=state)
    torch.testing.assert_close(pre.apply(x), kornia_zca(x), rtol=1e-4, atol=1e-4)
    new = _images(10, seed=1)  # the test split goes through the same fitted transform
    torch.testing.assert_close(pre.apply(new), kornia_zca(new), rtol=1e-4, atol=1e-4)
    # and the inverse matches kornia's inverse_transform
    white = kornia_zca(new)
    torch.testing.assert_close(pre.invert(white), kornia_zca.inverse_transform(white).clamp(0, 1), atol=1e-4, rtol=1e-4)


def test_invert_round_trips_with_and_without_stored_inverse():
    x = _images(40, shape=(1, 8, 8))
    state = fit_zca(x)
    pre = Preprocessing(mean=(0.5,), std=(0.25,), zca=state)
    white = pre.apply(x)
    assert white.shape == x.shape
    torch.testing.assert_close(pre.invert(white), x, atol=1e-4, rtol=1e-4)
    state.inverse = None  # Preprocessing falls back to a pseudo-inverse
    torch.testing.assert_close(pre.invert(white), x, atol=1e-4, rtol=1e-4)


def test_whitens_when_eps_is_small():
    x = _images(2000, shape=(1, 3, 3)).double()
    pre = Preprocessing(mean=(0.0,), std=(1.0,), zca=fit_zca(x, eps=1e-8))
    flat = pre.apply(x.float()).reshape(len(x), -1).double()
    cov = torch.cov(flat.T)
    torch.testing.assert_close(cov, torch.eye(9, dtype=torch.float64), atol=2e-3, rtol=0)


def test_cache_key_names_dataset_shape_and_content():
    x = _images()
    key = zca_cache_key("cifar10", x, 0.1)
    assert key.startswith("cifar10-64x3x4x4-eps0.1-")
    assert key == zca_cache_key("cifar10", x.clone(), 0.1)
    many = _images(600, shape=(1, 2, 2))
    changed = many.clone()
    changed[1, 0, 1, 1] += 0.01  # row 1 is not among the sampled rows: the total sum catches it
    assert zca_cache_key("toy", changed) != zca_cache_key("toy", many)
    assert zca_cache_key("cifar100", x, 0.1) != key
    assert zca_cache_key("cifar10", x, 0.2) != key
    assert zca_cache_key("cifar10", x[:-1], 0.1) != key


def test_cache_hit_is_identical_and_does_not_refit(tmp_path, monkeypatch):
    x = _images()
    calls = []
    real_fit = zca_module.fit_zca

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(zca_module, "fit_zca", counting_fit)
    key = zca_cache_key("toy", x)
    first = cached_zca(x, tmp_path, key)
    path = tmp_path / "zca" / f"{key}.safetensors"
    assert path.is_file() and len(calls) == 1
    assert [p.name for p in (tmp_path / "zca").iterdir()] == [path.name]  # no temp file left
    second = cached_zca(x, tmp_path, key)
    assert len(calls) == 1
    for name in ("mean", "matrix", "inverse"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert second.eps == first.eps == 0.1
    assert torch.equal(load_zca(path).matrix, first.matrix)
    with pytest.warns(UserWarning, match="does not match"):
        cached_zca(x, tmp_path, key, eps=0.2)  # a different eps under the same key is refitted
    assert len(calls) == 2


def test_corrupt_cache_is_refitted(tmp_path):
    x = _images()
    key = zca_cache_key("toy", x)
    path = tmp_path / "zca" / f"{key}.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        state = cached_zca(x, tmp_path, key)
    torch.testing.assert_close(state.matrix, fit_zca(x).matrix)
    assert load_zca(path).matrix.shape == (48, 48)


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import safetensors.torch

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    x = _images()
    with pytest.warns(UserWarning, match="could not cache"):
        state = cached_zca(x, tmp_path, "toy")
    assert state.matrix.shape == (48, 48)
    assert list((tmp_path / "zca").iterdir()) == []


def test_digits_with_zca_uses_the_cache(tmp_path, monkeypatch):
    calls = []
    real_fit = zca_module.fit_zca
    monkeypatch.setattr(zca_module, "fit_zca", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    ds = load_digits(None, zca=True, cache_dir=tmp_path)
    assert ds.preprocessing.kind == "zca" and len(calls) == 1
    assert len(list((tmp_path / "zca").glob("digits-1295x1x8x8-eps0.1-*.safetensors"))) == 1
    again = load_digits(None, zca=True, cache_dir=tmp_path)
    assert len(calls) == 1
    assert torch.equal(ds.train_images, again.train_images)
    assert torch.equal(ds.test_images, again.test_images)
    plain = load_digits(None, zca=False, cache_dir=tmp_path)
    raw = plain.preprocessing.invert(plain.train_images)
    torch.testing.assert_close(ds.train_images, ds.preprocessing.apply(raw))
    torch.testing.assert_close(ds.preprocessing.invert(ds.train_images), raw, atol=1e-4, rtol=1e-4)
