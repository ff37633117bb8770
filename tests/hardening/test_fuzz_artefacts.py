"""Fuzzing every reader with mutated copies of valid files.

Each artefact kind starts from a valid file written here in its real format (a synthetic set, a
checkpoint, an expert store, CIFAR-10 pickles, Tiny ImageNet's folder, ImageNet-64 npz batches, a
config file, a bench preset) and is fed truncations, bit flips, dtype and shape swaps, bad values
and metadata edits (see ``mutations.py``). Through the CLI the property is: exit 0, or exit 2 with
one ``Error:`` line and no traceback, and the input files unchanged. Where the CLI would need far
more than the reader (ImageNet-64's 1,000 classes), the reader itself must return or raise a
UserError.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil

import numpy as np
import pytest
from attack_tally import fuzz_settings, record
from hardening_tools import CHEAP_EVAL, FakeFullDisk, check_outcome, invoke, snapshot
from hypothesis import given
from hypothesis import strategies as st
from mutations import mutate_bytes, mutate_npz, mutate_pickled_batch, mutate_safetensors, mutate_text
from PIL import Image

from dcbench_tesla.data import load_dataset
from dcbench_tesla.errors import UserError
from dcbench_tesla.evaluation import random_real_subset
from dcbench_tesla.synthetic import SyntheticSet

RUN_CHEAP = ["--ipc", "1", "--no-baseline", *CHEAP_EVAL]


def fresh(path):
    """Remove ``path`` (a folder an earlier example wrote) so every example starts alike."""
    if path.exists():
        shutil.rmtree(path)
    return path


def attack_files(tmp_path, files: dict, args: list, surface: str, output) -> None:
    """Write ``files`` (relative path -> bytes), run ``dcbench ARGS`` and check the property."""
    for relative, data in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    before = snapshot(tmp_path, skip=[output])
    check_outcome(invoke(args, cwd=tmp_path), surface)
    assert snapshot(tmp_path, skip=[output]) == before, "an input file changed"


# -- synthetic sets ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def set_files(tmp_path_factory):
    """A hard-label and a soft-label digits set, as bytes."""
    dataset = load_dataset("digits")
    images, labels = random_real_subset(dataset, 1, 0)
    folder = tmp_path_factory.mktemp("sets")
    hard = SyntheticSet(images, labels, "digits", dataset.classes, dataset.preprocessing, ipc=1)
    soft = SyntheticSet(images, np.eye(10, dtype=np.float32)[labels.numpy()], "digits", dataset.classes,
                        dataset.preprocessing, lr=0.01, ipc=1)  # fmt: skip
    import torch

    soft.labels = torch.from_numpy(np.asarray(soft.labels))
    return [hard.save(folder / "hard.safetensors").read_bytes(), soft.save(folder / "soft.safetensors").read_bytes()]


@fuzz_settings(40)
@given(data=st.data())
def test_mutated_synthetic_sets(tmp_path, set_files, data):
    mutated = mutate_safetensors(data.draw, data.draw(st.sampled_from(set_files)))
    out = fresh(tmp_path / "out")
    args = ["eval", "set.safetensors", *CHEAP_EVAL[:-1], "--output", out / "eval.json"]
    attack_files(tmp_path, {"set.safetensors": mutated}, args, "file synthetic set (dcbench eval)", out)


# -- checkpoints -------------------------------------------------------------------------------

# Checkpoints at iteration 2 and at the end of the episode.
DM_RUN = ["run", "--method", "dm", "--dataset", "digits", *RUN_CHEAP, "--iterations", "3", "--set", "batch_real=8",
          "--checkpoint-every", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def dm_run(tmp_path_factory):
    """A 3-iteration DM run stopped by a full disk after its checkpoint of iteration 2: config, metrics, checkpoint."""
    folder = tmp_path_factory.mktemp("dm")
    patch = pytest.MonkeyPatch()
    try:
        FakeFullDisk("checkpoint.safetensors", after=2).install(patch)
        result = invoke([*DM_RUN, "--output", folder / "run"])
    finally:
        patch.undo()
    assert result.exit_code == 2 and "no space left" in result.output, result.output
    return {
        name: (folder / "run" / name).read_bytes()
        for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors")
    }


@fuzz_settings(20)
@given(data=st.data())
def test_mutated_checkpoints_on_resume(tmp_path, dm_run, data):
    run = fresh(tmp_path / "run")
    files = {f"run/{name}": content for name, content in dm_run.items()}
    files["run/checkpoint.safetensors"] = mutate_safetensors(data.draw, dm_run["checkpoint.safetensors"])
    attack_files(
        tmp_path, files, [*DM_RUN, "--output", "run", "--resume"], "file checkpoint (dcbench run --resume)", run
    )


# -- expert stores -----------------------------------------------------------------------------

TESLA_RUN = ["run", "--method", "tesla", "--dataset", "digits", *RUN_CHEAP, "--iterations", "1", "--set",
             "experts_dir=store", "--set", "syn_steps=2", "--set", "expert_epochs=1", "--set", "max_start_epoch=1",
             "--output", "out"]  # fmt: skip


@pytest.fixture(scope="module")
def expert_store(tmp_path_factory):
    """A one-expert, two-epoch digits store: manifest and expert file as bytes."""
    folder = tmp_path_factory.mktemp("experts") / "store"
    args = ["experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "2", "--batch-size", "512",
            "--output", folder, "--no-progress"]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 0, result.output
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@fuzz_settings(20)
@given(data=st.data())
def test_mutated_expert_stores(tmp_path, expert_store, data):
    fresh(tmp_path / "store")
    out = fresh(tmp_path / "out")
    files = {f"store/{name}": content for name, content in expert_store.items()}
    target = data.draw(st.sampled_from(sorted(expert_store)))
    files[f"store/{target}"] = mutate_safetensors(data.draw, expert_store[target])
    attack_files(tmp_path, files, TESLA_RUN, "file expert store (dcbench run --set experts_dir)", out)


# -- CIFAR-10 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_files():
    """A tiny CIFAR-10 folder in the real format (pickled dicts of bytes keys), as bytes per file."""
    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    files = {"batches.meta": pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.permutation(10)],
            b"data": rng.integers(0, 256, size=(10, 3072), dtype=np.uint8),
            b"filenames": [b"img_%d.png" % i for i in range(10)],
        }
        files[name] = pickle.dumps(batch, protocol=2)
    return files


@fuzz_settings(20)
@given(data=st.data())
def test_mutated_cifar_batches(tmp_path, cifar_files, data):
    target = data.draw(st.sampled_from(sorted(cifar_files)))
    mutated = mutate_pickled_batch(data.draw, cifar_files[target])
    attack_dataset(tmp_path, "cifar10", "cifar-10-batches-py", cifar_files, target, mutated, "CIFAR-10 batch")


def attack_dataset(tmp_path, dataset, folder, files, target, mutated, what) -> None:
    """``dcbench run`` of the random method on ``dataset``'s ``folder`` with ``target`` replaced by ``mutated``."""
    root = fresh(tmp_path / "data")
    out = fresh(tmp_path / "out")
    written = {f"data/{folder}/{name}": content for name, content in files.items()}
    written[f"data/{folder}/{target}"] = mutated
    args = ["run", "--method", "random", "--dataset", dataset, "--data-root", root.name, *RUN_CHEAP, "--output", out]
    attack_files(tmp_path, written, args, f"file {what} (dcbench run)", out)


# -- Tiny ImageNet -----------------------------------------------------------------------------

WNIDS = ["n02124075", "n01443537", "n04067472"]


def _jpeg(rng) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def tiny_files():
    """A three-class Tiny ImageNet folder in the real layout, as bytes per file."""
    rng = np.random.default_rng(0)
    files = {
        "wnids.txt": ("\n".join(WNIDS) + "\n").encode(),
        "words.txt": b"n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\nn04067472\treel\n",
    }
    for wnid in WNIDS:
        files[f"train/{wnid}/images/{wnid}_0.JPEG"] = _jpeg(rng)
    lines = []
    for i, wnid in enumerate(WNIDS):
        files[f"val/images/val_{i}.JPEG"] = _jpeg(rng)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t10\t62\t50")
    files["val/val_annotations.txt"] = ("\n".join(lines) + "\n").encode()
    return files


@fuzz_settings(15)
@given(data=st.data())
def test_mutated_tiny_imagenet_files(tmp_path, tiny_files, data):
    target = data.draw(st.sampled_from(sorted(tiny_files)))
    content = tiny_files[target]
    if target.endswith(".txt"):
        mutated = mutate_text(data.draw, content.decode()).encode("utf-8", errors="surrogateescape")
    else:
        mutated = mutate_bytes(data.draw, content)
    attack_dataset(tmp_path, "tinyimagenet", "tiny-imagenet-200", tiny_files, target, mutated, "Tiny ImageNet")


# -- ImageNet-64 (the reader: a run would need all 1,000 classes) -------------------------------


@pytest.fixture(scope="module")
def imagenet64_files():
    """Two npz batches in the official layout (uint8 (N, 12288) data, 1-based labels), as bytes."""
    rng = np.random.default_rng(0)
    files = {}
    for name, labels in (("train_data_batch_1.npz", [1, 2, 1000]), ("val_data.npz", [2, 1000])):
        out = io.BytesIO()
        data = rng.integers(0, 256, size=(len(labels), 12288), dtype=np.uint8)
        np.savez(out, data=data, labels=np.asarray(labels))
        files[name] = out.getvalue()
    return files


@fuzz_settings(20)
@given(data=st.data())
def test_mutated_imagenet64_batches(tmp_path, imagenet64_files, data):
    root = fresh(tmp_path / "data")
    target = data.draw(st.sampled_from(sorted(imagenet64_files)))
    files = dict(imagenet64_files)
    files[target] = mutate_npz(data.draw, files[target])
    (root / "imagenet64").mkdir(parents=True)
    for name, content in files.items():
        (root / "imagenet64" / name).write_bytes(content)
    before = snapshot(root)
    try:
        load_dataset("imagenet64", root)
        record("file ImageNet-64 batch (reader)", "loaded")
    except UserError as exc:
        assert "\n" not in str(exc)
        record("file ImageNet-64 batch (reader)", "refused")
    assert snapshot(root) == before


# -- config files and presets ------------------------------------------------------------------


@fuzz_settings(20)
@given(data=st.data())
def test_mutated_config_files(tmp_path, data):
    suffix = data.draw(st.sampled_from([".json", ".toml"]))
    valid = (
        '{"lr_img": 1.0, "momentum": 0.5, "init": "noise"}\n' if suffix == ".json" else 'lr_img = 1.0\ninit = "noise"\n'
    )
    if data.draw(st.booleans()):
        raw = mutate_text(data.draw, valid).encode("utf-8", errors="surrogateescape")
    else:
        raw = mutate_bytes(data.draw, valid.encode())
    out = fresh(tmp_path / "out")
    args = ["run", "--method", "dm", "--dataset", "digits", *RUN_CHEAP, "--iterations", "1", "--set", "batch_real=8",
            "--config", f"options{suffix}", "--output", out]  # fmt: skip
    attack_files(tmp_path, {f"options{suffix}": raw}, args, "file config (dcbench run --config)", out)


PRESET = """methods = ["random"]
dataset = "digits"
ipcs = [1]
num_eval = 1
eval_epochs = 1
protocol = "short"
seed = 0
"""


@fuzz_settings(20)
@given(data=st.data())
def test_mutated_bench_presets(tmp_path, data):
    if data.draw(st.booleans()):
        raw = mutate_text(data.draw, PRESET).encode("utf-8", errors="surrogateescape")
    else:
        raw = mutate_bytes(data.draw, PRESET.encode())
    out = fresh(tmp_path / "out")
    args = ["bench", "--preset", "preset.toml", "--no-progress", "--output", out]
    attack_files(tmp_path, {"preset.toml": raw}, args, "file bench preset (dcbench bench --preset)", out)


def test_a_config_file_naming_json_values_is_read(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"lr_img": 2.0}))
    result = invoke(["run", "--method", "dm", "--dataset", "digits", *RUN_CHEAP, "--iterations", "1", "--set",
                     "batch_real=8", "--config", tmp_path / "c.json", "--output", tmp_path / "out"])  # fmt: skip
    assert result.exit_code == 0, result.output


# -- upstream replay buffers (torch.save files, read with weights_only=True) --------------------


@pytest.fixture(scope="module")
def replay_buffer(expert_store, tmp_path_factory):
    """An upstream-style ``replay_buffer_0.pt``: a list of trajectories, each a list of parameter lists."""
    import torch

    from dcbench_tesla.experts.store import ExpertStore

    folder = tmp_path_factory.mktemp("buffer-store")
    for name, content in expert_store.items():
        (folder / name).write_bytes(content)
    store = ExpertStore.open(folder)
    shapes = [tuple(s) for s in store.layout["shapes"]]
    snapshots = []
    for row in store.trajectory(0):
        parts, start = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            parts.append(row[start : start + size].reshape(shape).clone())
            start += size
        snapshots.append(parts)
    out = io.BytesIO()
    torch.save([snapshots], out)
    return out.getvalue(), [snapshots]


def _mutated_buffer(draw, buffer) -> bytes:
    import torch

    data, trajectories = buffer
    if draw(st.booleans()):
        return mutate_bytes(draw, data)
    snapshots = [list(s) for s in trajectories[0]]
    t = draw(st.integers(0, len(snapshots) - 1))
    p = draw(st.integers(0, len(snapshots[t]) - 1))
    choices = [
        "not a tensor",
        None,
        snapshots[t][p].reshape(-1),
        snapshots[t][p].to(torch.int64),
        snapshots[t][p] * float("nan"),
        torch.zeros(3),
        [snapshots[t][p]],
    ]
    kind = draw(st.sampled_from(["param", "drop_snapshot", "drop_param", "nest", "flat"]))
    if kind == "param":
        snapshots[t][p] = draw(st.sampled_from(choices))
    elif kind == "drop_snapshot":
        del snapshots[t]
    elif kind == "drop_param":
        del snapshots[t][p]
    obj = {"nest": {"trajectories": [snapshots]}, "flat": snapshots}.get(kind, [snapshots])
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


@fuzz_settings(20)
@given(data=st.data())
def test_mutated_replay_buffers(tmp_path, replay_buffer, data):
    out = fresh(tmp_path / "store")
    args = ["experts", "--dataset", "digits", "--import", "replay_buffer_0.pt", "--output", out, "--no-progress"]
    files = {"replay_buffer_0.pt": _mutated_buffer(data.draw, replay_buffer)}
    attack_files(tmp_path, files, args, "file upstream replay buffer (dcbench experts --import)", out)
