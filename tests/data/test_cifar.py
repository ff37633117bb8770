"""CIFAR loaders, on small batches written in exactly the format of the real python pickles."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dcbench_tesla.data import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, load_dataset
from dcbench_tesla.data.cifar import SafeUnpickler, load_cifar10, load_cifar100, safe_unpickle
from dcbench_tesla.errors import UserError

# the loaders read files; the validation split cut from them is tested in test_split.py
pytestmark = pytest.mark.usefixtures("no_validation_split")

CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]
_RECONSTRUCT = np.zeros(1).__reduce_ex__(2)[0]


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle (protocol 2) wrote for the CIFAR batches.

    Python 2 ``str`` objects (the dict keys, file names, label names, the array bytes) are
    BINSTRING opcodes, which Python 3 reads back as ``bytes`` with ``encoding="bytes"``; numpy's
    reconstructor is named by its Python 2 era path ``numpy.core.multiarray._reconstruct``.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def _batch(rng, n: int, label_key: bytes, num_classes: int, title: bytes) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {
        b"batch_label": title,
        label_key: [int(v) for v in rng.integers(0, num_classes, size=n)],
        b"data": data,
        b"filenames": [b"img_%04d.png" % i for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) % 20 for v in batch[label_key]]
    return batch


def write_cifar10(root: Path, n_train: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _batch(rng, n_train, b"labels", 10, b"training batch %d of 5" % i)
    batches["test_batch"] = _batch(rng, n_test, b"labels", 10, b"testing batch 1 of 1")
    for name, batch in batches.items():
        dump_py2(batch, folder / name)
    dump_py2(
        {b"num_cases_per_batch": n_train, b"label_names": CIFAR10_NAMES, b"num_vis": 3072},
        folder / "batches.meta",
    )
    return batches


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 1) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train = _batch(rng, n_train, b"fine_labels", 100, b"training batch 1 of 1")
    test = _batch(rng, n_test, b"fine_labels", 100, b"testing batch 1 of 1")
    dump_py2(train, folder / "train")
    dump_py2(test, folder / "test")
    fine = [b"class_%03d" % i for i in range(100)]
    coarse = [b"super_%02d" % i for i in range(20)]
    dump_py2({b"fine_label_names": fine, b"coarse_label_names": coarse}, folder / "meta")
    return {"train": train, "test": test, "fine": fine}


def _normalised(data: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_py2_writer_matches_the_real_layout(tmp_path):
    dump_py2({b"data": np.zeros((1, 3072), np.uint8), b"labels": [3]}, tmp_path / "b")
    raw = (tmp_path / "b").read_bytes()
    assert raw.startswith(b"\x80\x02")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"_codecs" not in raw  # py2 strings are plain BINSTRINGs
    with open(tmp_path / "b", "rb") as f:  # the recipe on the CIFAR page reads it
        assert pickle.load(f, encoding="bytes")[b"labels"] == [3]


def test_load_cifar10(tmp_path):
    batches = write_cifar10(tmp_path)
    ds = load_cifar10(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    assert ds.name == "cifar10"
    assert ds.classes == [c.decode() for c in CIFAR10_NAMES]
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.train_images.dtype == torch.float32
    assert ds.test_images.shape == (6, 3, 32, 32)
    train_data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert ds.train_labels.dtype == torch.int64
    assert ds.train_labels.tolist() == train_labels
    assert ds.test_labels.tolist() == batches["test_batch"][b"labels"]
    torch.testing.assert_close(ds.train_images, _normalised(train_data, CIFAR10_MEAN, CIFAR10_STD))
    torch.testing.assert_close(ds.test_images, _normalised(batches["test_batch"][b"data"], CIFAR10_MEAN, CIFAR10_STD))
    # channel-first planes: pixel (c, y, x) of image 0 is data[0, c*1024 + y*32 + x]
    c, y, x = 2, 5, 7
    raw = train_data[0, c * 1024 + y * 32 + x] / 255.0
    expected = (raw - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
    assert ds.train_images[0, c, y, x].item() == pytest.approx(expected, abs=1e-5)
    assert ds.preprocessing.kind == "meanstd"
    torch.testing.assert_close(
        ds.preprocessing.invert(ds.train_images),
        torch.from_numpy(train_data.reshape(-1, 3, 32, 32)).float() / 255.0,
    )
    assert "cifar-10-batches-py" in ds.source


def test_load_cifar100_fine_labels_via_registry(tmp_path):
    written = write_cifar100(tmp_path / "cifar100")  # root/<name>/cifar-100-python also works
    ds = load_dataset("cifar100", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.classes == [c.decode() for c in written["fine"]]
    assert ds.num_classes == 100
    assert ds.train_images.shape == (12, 3, 32, 32)
    assert ds.train_labels.tolist() == written["train"][b"fine_labels"]
    assert ds.test_labels.tolist() == written["test"][b"fine_labels"]
    torch.testing.assert_close(ds.test_images, _normalised(written["test"][b"data"], CIFAR100_MEAN, CIFAR100_STD))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_resaved_by_python3_load(tmp_path, protocol):
    written = write_cifar100(tmp_path)
    for name in ("train", "test"):
        with open(tmp_path / "cifar-100-python" / name, "wb") as f:
            pickle.dump(written[name], f, protocol=protocol)
    ds = load_cifar100(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    assert ds.train_labels.tolist() == written["train"][b"fine_labels"]
    torch.testing.assert_close(ds.test_images, _normalised(written["test"][b"data"], CIFAR100_MEAN, CIFAR100_STD))


def test_missing_folder_names_path_files_and_how_to_get(tmp_path):
    with pytest.raises(UserError) as info:
        load_cifar10(tmp_path, zca=False, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        assert name in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "download" in msg.lower()
    assert not any(tmp_path.iterdir())  # nothing half-written left behind


def test_missing_file_is_named(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(UserError, match=r"missing meta in .*cifar-100-python"):
        load_cifar100(tmp_path, zca=False, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated download
        lambda p: p.write_bytes(b"<html>not found</html>"),
        lambda p: p.write_bytes(b""),
        lambda p: dump_py2({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, p),
        lambda p: dump_py2({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, p),
        lambda p: dump_py2([1, 2, 3], p),
        lambda p: dump_py2({b"labels": [0]}, p),
    ],
)
def test_corrupt_batch_is_a_user_error(tmp_path, damage):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    damage(path)
    with pytest.raises(UserError, match="data_batch_3"):
        load_cifar10(tmp_path, zca=False, cache_dir=tmp_path / "cache")


def test_label_out_of_range_is_a_user_error(tmp_path):
    batches = write_cifar10(tmp_path)
    batches["test_batch"][b"labels"][0] = 10
    dump_py2(batches["test_batch"], tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(UserError, match="labels"):
        load_cifar10(tmp_path, zca=False, cache_dir=tmp_path / "cache")


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_SystemPayload, _ExecPayload])
def test_malicious_global_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": payload(marker), b"labels": [0]}, protocol=2)
    pickle.loads(pickle.dumps(payload(tmp_path / "control")))  # the payload really does run...
    assert (tmp_path / "control").exists()
    write_cifar10(tmp_path / "root")
    (tmp_path / "root" / "cifar-10-batches-py" / "data_batch_1").write_bytes(evil)
    with pytest.raises(UserError, match="refusing to load global"):
        load_cifar10(tmp_path / "root", zca=False, cache_dir=tmp_path / "cache")
    assert not marker.exists()  # ...but not through the loader
    (tmp_path / "evil").write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError):
        safe_unpickle(tmp_path / "evil")
    assert not marker.exists()


def test_codecs_encode_only_for_latin1(tmp_path):
    import codecs

    class _Other:
        def __reduce__(self):
            return (codecs.encode, ("abc", "rot13"))

    (tmp_path / "p").write_bytes(pickle.dumps({b"x": _Other()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        safe_unpickle(tmp_path / "p")
    assert issubclass(SafeUnpickler, pickle.Unpickler)
