import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from dcbench_tesla.data import Preprocessing, ZCAState
from dcbench_tesla.errors import UserError
from dcbench_tesla.synthetic import SyntheticSet


def _set(labels=None, zca=None, lr=0.02):
    images = torch.randn(6, 1, 4, 4)
    return SyntheticSet(
        images=images,
        labels=labels if labels is not None else torch.tensor([0, 0, 1, 1, 2, 2]),
        dataset="digits",
        classes=["0", "1", "2"],
        preprocessing=Preprocessing(mean=(0.3,), std=(0.4,), zca=zca),
        lr=lr,
        ipc=2,
        seed=7,
        method={"id": "x"},
        config={"a": 1},
        iteration=5,
    )


def test_round_trip_hard_labels(tmp_path):
    syn = _set()
    path = syn.save(tmp_path / "s.safetensors")
    back = SyntheticSet.load(path)
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
    assert back.label_kind == "hard" and back.lr == pytest.approx(0.02)
    assert (back.dataset, back.classes, back.ipc, back.seed, back.iteration) == (
        "digits",
        ["0", "1", "2"],
        2,
        7,
        5,
    )
    assert back.preprocessing == syn.preprocessing
    assert back.method == {"id": "x"} and back.config == {"a": 1}


def test_round_trip_soft_labels_and_zca_state(tmp_path):
    soft = torch.softmax(torch.randn(6, 3), dim=1)
    zca = ZCAState(mean=torch.randn(16), matrix=torch.randn(16, 16), eps=0.1)
    back = SyntheticSet.load(_set(labels=soft, zca=zca, lr=None).save(tmp_path / "s.safetensors"))
    assert back.label_kind == "soft" and back.lr is None
    assert torch.allclose(back.labels, soft)
    assert back.preprocessing.kind == "zca"
    assert torch.equal(back.preprocessing.zca.matrix, zca.matrix)
    assert torch.equal(back.hard_labels(), soft.argmax(1))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(labels=torch.tensor([0, 1])), "6 images but 2 labels"),
        (dict(labels=torch.tensor([0, 0, 1, 1, 2, 3])), "span 0..3, expected class indices 0..2"),
        (dict(labels=torch.rand(6, 4)), r"soft labels must be \(N, 3\)"),
        (dict(lr=-1.0), "lr must be positive"),
    ],
)
def test_invalid_sets_are_refused_before_writing(tmp_path, bad, message):
    with pytest.raises(UserError, match=message):
        _set(**bad).save(tmp_path / "s.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_nan_images_refused(tmp_path):
    syn = _set()
    syn.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN or inf"):
        syn.save(tmp_path / "s.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        SyntheticSet.load(tmp_path / "nope.safetensors")


def test_truncated_file_refused(tmp_path):
    path = _set().save(tmp_path / "s.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable synthetic set"):
        SyntheticSet.load(path)


def test_foreign_safetensors_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weights": torch.zeros(3)}, str(path), metadata={"framework": "pt"})
    with pytest.raises(UserError, match="not a dcbench synthetic set"):
        SyntheticSet.load(path)


def test_garbage_metadata_refused(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file(
        {"images": torch.zeros(1, 1, 2, 2), "labels": torch.zeros(1)},
        str(path),
        metadata={"dcbench": "{not json"},
    )
    with pytest.raises(UserError, match="corrupt synthetic set metadata"):
        SyntheticSet.load(path)


class _Payload:
    """A pickle payload that would create a marker file if it were ever unpickled (a fake attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UserError, match="never unpickles"):
        SyntheticSet.load(path)
    assert not marker.exists()


def test_torch_save_zip_file_is_refused(tmp_path):
    path = tmp_path / "set.pt"
    torch.save({"images": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="pickle / torch.save"):
        SyntheticSet.load(path)


def test_metadata_is_json(tmp_path):
    from safetensors import safe_open

    path = _set().save(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["dcbench"])
    assert meta["format"] == "dcbench-tesla/synthetic-set"
    assert meta["normalisation"] == {"kind": "meanstd", "mean": [0.3], "std": [0.4]}
