"""Every input the hardening issue lists ends in exit 2 with a one-line message, or in a documented
conversion (with a note on stderr), and creates nothing first."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from cli_checks import assert_user_error
from hardening_tools import CHEAP_EVAL, invoke
from mutations import read_safetensors, write_safetensors

from dcbench_tesla.data import load_dataset
from dcbench_tesla.evaluation import random_real_subset
from dcbench_tesla.synthetic import SyntheticSet

SOFT = {"label_kind": "soft"}
RANDOM = ["run", "--method", "random", "--dataset", "digits", "--ipc", "1", *CHEAP_EVAL]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([*RANDOM, "--seed", "99999999999999999999999"], "'--seed': must be at least 0 and at most 4294967295"),
        ([*RANDOM, "--eval-epochs", "99999999999999999999"], "'--eval-epochs': must be at least 1 and at most 100000"),
        ([*RANDOM, "--threads", "100000"], "'--threads': must be at least 1 and at most 1024"),
        ([*RANDOM, "--num-eval", "99999999999999999999"], "'--num-eval': must be at least 1 and at most 1000"),
        ([*RANDOM, "--eval-lr", "inf"], "'--eval-lr': 'inf' is not a finite number"),
        ([*RANDOM, "--eval-lr", "1e30"], "'--eval-lr': must be above 0 and at most 10"),
        ([*RANDOM, "--iterations", "-5"], "'--iterations': must be at least 0"),
        ([*RANDOM, "--device", "meta"], "not meta); available: cpu"),
        ([*RANDOM, "--device", "mps"], "not mps); available: cpu"),
        ([*RANDOM, "--device", "xpu"], "not xpu); available: cpu"),
        ([*RANDOM, "--method", "dm", "--set", "dsa_strategy=banana"], "method 'dm': unknown DSA family ['banana']"),
        ([*RANDOM, "--method", "mtt", "--set", "dsa_strategy=banana"], "method 'mtt': unknown DSA family"),
        ([*RANDOM, "--method", "tesla", "--set", "dsa_strategy=banana"], "method 'tesla': unknown DSA family"),
        ([*RANDOM, "--method", "dm", "--set", "model=convnett"], "method 'dm': unknown model 'convnett'"),
        ([*RANDOM, "--method", "tesla", "--set", "model=vitt"], "method 'tesla': unknown model 'vitt'"),
        ([*RANDOM, "--method", "dm", "--set", "iterations=99999999999"], "iterations must be within 0..10000000"),
        ([*RANDOM, "--method", "dm", "--set", "lr_img=inf"], "'lr_img' must be float (finite)"),
        ([*RANDOM, "--method", "tesla", "--set", "lr_img=nan"], "'lr_img' must be float (finite)"),
        ([*RANDOM, "--method", "dm", "--set", "iterations=1e400"], "'iterations' must be int"),
        (["bench", "--methods", "random", "--dataset", "digits", "--ipc", "99999999999", "--output", "b"], "1..100000"),
        (["profile", "--methods", "tesla", "--dataset", "digits", "--steps", "1:99999999999", "--output", "p"],
         "goes beyond 100000 steps"),
    ],
)  # fmt: skip
def test_listed_cli_inputs_end_in_exit_2(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke([*args, "--output", tmp_path / "out"] if args[0] == "run" else args), fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def set_path(tmp_path):
    dataset = load_dataset("digits")
    images, labels = random_real_subset(dataset, 1, 0)
    syn = SyntheticSet(images, labels, "digits", dataset.classes, dataset.preprocessing, ipc=1)
    return syn.save(tmp_path / "set.safetensors")


def rewrite(path, tensor=None, value=None, meta_edit=None):
    tensors, meta = read_safetensors(path.read_bytes())
    if tensor is not None:
        tensors[tensor] = value(tensors[tensor])
    if meta_edit is not None:
        meta.update(meta_edit)
    path.write_bytes(write_safetensors(tensors, meta))


@pytest.mark.parametrize(
    ("tensor", "convert", "note"),
    [
        ("images", lambda t: t.half(), "images converted from torch.float16 to float32"),
        ("images", lambda t: t.double(), "images converted from torch.float64 to float32"),
        ("images", lambda t: t.bfloat16(), "images converted from torch.bfloat16 to float32"),
        ("labels", lambda t: t.to(torch.int8), "labels converted from torch.int8 to int64"),
        ("labels", lambda t: t.to(torch.uint8), "labels converted from torch.uint8 to int64"),
        ("labels", lambda t: t.to(torch.int32), "labels converted from torch.int32 to int64"),
    ],
)
def test_sets_in_other_dtypes_are_converted_with_a_note(tmp_path, set_path, tensor, convert, note):
    rewrite(set_path, tensor, convert)
    result = invoke(["eval", set_path, *CHEAP_EVAL[:-1], "--output", tmp_path / "e.json"])
    assert result.exit_code == 0, result.output
    assert f"note: {str(set_path)!r}: {note}" in result.stderr
    assert json.loads((tmp_path / "e.json").read_text())["evaluation"]["by_model"]["convnet"]["accuracies"]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (dict(tensor="labels", value=lambda t: t > 4), "tensor 'labels' is torch.bool, expected int64 class indices"),
        (dict(tensor="images", value=lambda t: (t * 10).to(torch.uint8)), "tensor 'images' is torch.uint8, expected"),
        (dict(tensor="labels", value=lambda t: t + 10), "hard labels span 10..19, expected class indices 0..9"),
        (dict(tensor="labels", value=lambda t: -torch.eye(10)[t], meta_edit=SOFT), "soft labels must be probabilities"),
        (dict(tensor="labels", value=lambda t: torch.eye(10)[t] * 2, meta_edit=SOFT), "row sums 2..2"),
        (dict(tensor="images", value=lambda t: t.repeat(1, 3, 1, 1)), "1 channel means for images of 3 channels"),
        (dict(meta_edit={"format_version": "abc"}), "field 'format_version' is 'abc', expected an integer 0..1"),
        (dict(meta_edit={"format_version": 7}), "format version 7; upgrade dcbench-tesla"),
        (dict(meta_edit={"classes": "0123456789"}), "field 'classes' is str '0123456789', expected a non-empty list"),
        (dict(meta_edit={"lr": "fast"}), "field 'lr' is str 'fast', expected a positive finite number or null"),
        (dict(meta_edit={"normalisation": {"kind": "zca", "mean": [0], "std": [1]}}), "no tensor 'zca_mean'"),
        (dict(meta_edit={"normalisation": {"kind": "meanstd", "mean": [0], "std": [0]}}), "positive finite numbers"),
        (dict(meta_edit={"label_kind": "soft"}), "field 'label_kind' is 'soft' but tensor 'labels' is torch.int64"),
    ],
)
def test_sets_with_wrong_contents_are_refused_naming_the_field(tmp_path, set_path, edit, fragment):
    rewrite(set_path, **edit)
    result = invoke(["eval", set_path, *CHEAP_EVAL[:-1], "--output", tmp_path / "e.json"])
    assert_user_error(result, str(set_path), fragment)
    assert not (tmp_path / "e.json").exists()


def cifar_root(tmp_path, labels):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(10, 3072), dtype=np.uint8), b"labels": list(range(10))}
        if name == "data_batch_3":
            batch[b"labels"] = labels
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        (["a"] * 10, "'labels' holds <U1 (10,) (e.g. 'a'), expected 1-D integer labels"),
        ([0.5] * 10, "'labels' holds float64 (10,) (e.g. 0.5)"),
        ([True] * 10, "'labels' holds bool (10,)"),
        ([[1, 2]] * 10, "'labels' holds int64 (10, 2)"),
        ([2**70] * 10, "'labels' holds object"),
        ([10] * 10, "train labels span 0..10, expected 0..9"),
    ],
)
def test_a_cifar_batch_with_non_integer_labels_is_refused_naming_the_file(tmp_path, labels, found):
    folder = cifar_root(tmp_path, labels)
    args = ["run", "--method", "random", "--dataset", "cifar10", "--data-root", tmp_path / "data", "--ipc", "1",
            *CHEAP_EVAL, "--output", tmp_path / "out"]  # fmt: skip
    result = invoke(args)
    assert_user_error(result, found)
    if "span" not in found:
        assert str(folder / "data_batch_3") in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_validation_split")
def test_a_cifar_batch_with_integer_labels_of_any_width_loads(tmp_path):
    cifar_root(tmp_path, np.arange(10, dtype=np.uint8))
    dataset = load_dataset("cifar10", tmp_path / "data")
    assert dataset.train_labels.dtype == torch.int64 and dataset.train_labels[20:30].tolist() == list(range(10))
