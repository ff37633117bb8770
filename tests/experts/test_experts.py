"""Expert trajectories on digits: format, determinism, resume, disk check, compatibility, import, CLI."""

import collections
import os
import shutil

import pytest
import torch
from cli_checks import assert_user_error
from click.testing import CliRunner

from dcbench_tesla.cli import main
from dcbench_tesla.data import Preprocessing, ZCAState
from dcbench_tesla.errors import UserError
from dcbench_tesla.experts import (
    MANIFEST,
    ExpertConfig,
    ExpertStore,
    ensure_experts,
    expert_directory,
    expert_filename,
    import_upstream,
    model_layout,
    train_experts,
)
from dcbench_tesla.experts import training as training_module
from dcbench_tesla.files import read_tensor_file
from dcbench_tesla.models import build_model

FAST = {"epochs": 2, "batch_size": 256}


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits):
    """Two experts of two epochs, trained once for the module."""
    directory = tmp_path_factory.mktemp("experts") / "store"
    return train_experts(digits, config_for_digits(), directory, "cpu", progress=False, notice=lambda m: None)


def config_for_digits(**changes):
    return ExpertConfig(dataset="digits", model="convnet", **{"num_experts": 2, **FAST, **changes})


# -- the stored format -------------------------------------------------------------------


def test_training_writes_manifest_and_expert_files(store, digits):
    layout = model_layout("convnet", digits)
    num_params = sum(p.numel() for p in build_model("convnet", 1, 10, 8).parameters())
    assert sorted(p.name for p in store.directory.iterdir()) == [
        "expert_0000.safetensors",
        "expert_0001.safetensors",
        MANIFEST,
    ]
    assert store.num_experts == 2 and store.epochs == 2 and store.num_params == num_params
    assert store.layout == layout
    for i in range(2):
        traj = store.trajectory(i)
        assert traj.dtype == torch.float32 and traj.shape == (3, num_params)
        assert not torch.equal(traj[0], traj[1]) and not torch.equal(traj[1], traj[2])
        meta = store.expert_metadata(i)
        assert meta["index"] == i and 0.0 <= meta["val_accuracy"] <= 1.0 and isinstance(meta["seed"], int)
    assert not torch.equal(store.trajectory(0)[0], store.trajectory(1)[0])  # different initialisations

    tensors, meta = read_tensor_file(store.directory / MANIFEST, what="manifest")
    assert tensors == {}  # no ZCA tensors without ZCA
    assert meta["format"] == "dcbench-tesla/experts" and meta["format_version"] == 1
    assert meta["config"] == config_for_digits().to_dict()
    assert meta["dataset"] == "digits" and meta["classes"] == digits.classes and meta["image_shape"] == [1, 8, 8]
    assert meta["normalisation"]["kind"] == "meanstd" and meta["normalisation"]["mean"] == list(
        digits.preprocessing.mean
    )
    assert meta["layout"] == layout
    assert "num_experts_finished" not in meta and "finished" not in meta

    start, target = store.segment(1, 0, 2)
    assert torch.equal(start, store.trajectory(1)[0]) and torch.equal(target, store.trajectory(1)[2])
    with pytest.raises(ValueError):
        store.segment(0, 1, 2)


def test_snapshot_zero_is_the_seeded_initialisation(store, digits):
    from dcbench_tesla.experts import expert_seed
    from dcbench_tesla.experts.config import build_for
    from dcbench_tesla.models.flat import FlatParams

    model = build_for("convnet", digits, expert_seed(0, 1))
    assert torch.equal(FlatParams(model).flatten(), store.trajectory(1)[0])


def test_training_is_deterministic_and_leaves_the_global_rng_alone(store, digits, tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = train_experts(
        digits, config_for_digits(num_experts=1), tmp_path / "b", "cpu", progress=False, notice=lambda m: None
    )
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(again.trajectory(0), store.trajectory(0))  # bitwise, same seed and index


def test_key_ignores_num_experts_but_not_training_settings(digits):
    layout = model_layout("convnet", digits)
    key = config_for_digits().key(digits.preprocessing, layout)
    assert key == config_for_digits(num_experts=7).key(digits.preprocessing, layout)
    assert key == config_for_digits(lr=1e-2).key(digits.preprocessing, layout)
    assert key != config_for_digits(lr=0.02).key(digits.preprocessing, layout)
    assert key != config_for_digits(seed=1).key(digits.preprocessing, layout)
    other = Preprocessing(mean=(0.5,), std=(0.5,))
    assert key != config_for_digits().key(other, layout)
    assert len(key) == 12 and key == config_for_digits().key(digits.preprocessing, layout)


def test_invalid_config_is_a_user_error():
    with pytest.raises(UserError, match="epochs"):
        ExpertConfig(dataset="digits", model="convnet", num_experts=1, epochs=0)
    with pytest.raises(UserError, match="DSA"):
        ExpertConfig(dataset="digits", model="convnet", num_experts=1, dsa_strategy="warp")


# -- resume and the cache ----------------------------------------------------------------


def test_ensure_trains_only_missing_experts(digits, tmp_path, monkeypatch):
    cfg = config_for_digits(num_experts=1, epochs=1)
    directory = expert_directory(tmp_path, cfg, digits)
    assert directory.parent == tmp_path / "experts" and directory.name.startswith("digits-convnet-")
    notices = []
    first = ensure_experts(digits, cfg, tmp_path, "cpu", notice=notices.append, progress=False)
    assert first.directory == directory and first.num_experts == 1
    assert any("first run only" in n and str(directory) in n for n in notices)
    expert0 = directory / expert_filename(0)
    bytes0, stat0 = expert0.read_bytes(), expert0.stat()

    trained = collections.Counter()
    real = training_module.train_one_expert

    def counting(dataset, config, index, device, **kwargs):
        trained[index] += 1
        return real(dataset, config, index, device, **kwargs)

    monkeypatch.setattr(training_module, "train_one_expert", counting)
    notices.clear()
    second = ensure_experts(digits, config_for_digits(num_experts=2, epochs=1), tmp_path, "cpu", notices.append, False)
    assert trained == {1: 1}
    assert second.num_experts == 2 and second.directory == directory
    assert expert0.read_bytes() == bytes0 and expert0.stat().st_mtime_ns == stat0.st_mtime_ns
    assert any("1 more" in n for n in notices)

    trained.clear()
    third = ensure_experts(digits, config_for_digits(num_experts=2, epochs=1), tmp_path, "cpu", notices.append, False)
    assert not trained and third.num_experts == 2
    # A config asking for fewer experts sees only those.
    assert ensure_experts(digits, cfg, tmp_path, "cpu", notices.append, False).num_experts == 1


def test_training_into_a_store_of_another_config_is_refused(store, digits):
    with pytest.raises(UserError, match="another config"):
        train_experts(digits, config_for_digits(lr=0.5), store.directory, "cpu", progress=False, notice=lambda m: None)


def test_disk_estimate_is_printed_and_checked(digits, tmp_path, monkeypatch):
    notices = []
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UserError, match="not enough disk space"):
        train_experts(
            digits,
            config_for_digits(num_experts=3),
            tmp_path / "x",
            "cpu",
            progress=False,
            notice=notices.append,
        )
    assert len(notices) == 1
    assert "3 x 3 snapshots" in notices[0] and "MiB" in notices[0]
    assert not (tmp_path / "x").exists()  # nothing written before the check


# -- compatibility ------------------------------------------------------------------------


def test_check_compatible_accepts_the_same_data_and_model(store, digits):
    store.check_compatible(digits, model_layout("convnet", digits))


def test_check_compatible_refuses_other_normalisation(store, digits):
    other = digits.with_preprocessing(Preprocessing(mean=(0.5,), std=(0.25,)))
    with pytest.raises(UserError, match=r"trained on digits normalised with mean .* this run uses mean \[0\.5\]"):
        store.check_compatible(other, model_layout("convnet", digits))


def test_check_compatible_refuses_zca_mismatch(store, tmp_path):
    from dcbench_tesla.data import load_dataset

    whitened = load_dataset("digits", zca=True, cache_dir=tmp_path)
    with pytest.raises(UserError, match="without ZCA .* this run uses ZCA: pass --no-zca"):
        store.check_compatible(whitened, model_layout("convnet", whitened))


def test_check_compatible_refuses_another_layout_and_dataset(store, digits):
    layout = model_layout("convnet4", digits)
    with pytest.raises(UserError, match="parameters per snapshot; this run's model has"):
        store.check_compatible(digits, layout)
    renamed = digits.with_preprocessing(digits.preprocessing)
    renamed.name = "cifar10"
    with pytest.raises(UserError, match="trained on digits; this run uses cifar10"):
        store.check_compatible(renamed, model_layout("convnet", digits))


def test_zca_store_round_trips_its_state(tmp_path):
    from dcbench_tesla.data import load_dataset

    whitened = load_dataset("digits", zca=True, cache_dir=tmp_path)
    cfg = ExpertConfig.for_dataset(whitened, num_experts=1, epochs=1)
    assert cfg.zca and cfg.model == "convnet"
    stored = train_experts(whitened, cfg, tmp_path / "z", "cpu", progress=False, notice=lambda m: None)
    reopened = ExpertStore.open(tmp_path / "z")
    assert torch.equal(reopened.preprocessing.zca.matrix, whitened.preprocessing.zca.matrix)
    reopened.check_compatible(whitened, stored.layout)
    zca = whitened.preprocessing.zca
    shifted = ZCAState(mean=zca.mean, matrix=zca.matrix * 1.01, eps=zca.eps)
    # mean/std are unused under ZCA: only the whitening differs.
    changed = whitened.with_preprocessing(Preprocessing(mean=(0.5,), std=(0.5,), zca=shifted))
    with pytest.raises(UserError, match="different ZCA whitening"):
        reopened.check_compatible(changed, stored.layout)


# -- reading never unpickles --------------------------------------------------------------


def test_open_refuses_missing_pickled_truncated_and_foreign_files(store, tmp_path):
    with pytest.raises(UserError, match="no expert store"):
        ExpertStore.open(tmp_path / "nothing")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"trajectory": torch.zeros(3)}, pickled / MANIFEST)
    with pytest.raises(UserError, match="pickle"):
        ExpertStore.open(pickled)

    truncated = tmp_path / "truncated"
    shutil.copytree(store.directory, truncated)
    data = (truncated / MANIFEST).read_bytes()
    (truncated / MANIFEST).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable"):
        ExpertStore.open(truncated)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(foreign / MANIFEST), metadata={"dcbench": '{"format": "other"}'})
    with pytest.raises(UserError, match="not a dcbench expert manifest"):
        ExpertStore.open(foreign)


def test_corrupt_expert_files_are_user_errors(store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store.directory, copy)
    torch.save([torch.zeros(3)], copy / expert_filename(0))
    data = (copy / expert_filename(1)).read_bytes()
    (copy / expert_filename(1)).write_bytes(data[:100])
    opened = ExpertStore.open(copy)
    assert opened.num_experts == 2
    with pytest.raises(UserError, match="pickle"):
        opened.trajectory(0)
    with pytest.raises(UserError, match="not a readable"):
        opened.trajectory(1)


# -- importing upstream replay buffers -----------------------------------------------------


def _fake_buffer(digits, num_trajectories, snapshots, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = build_model("convnet", 1, 10, 8)
    shapes = [p.shape for p in model.parameters()]
    return [
        [[torch.randn(s, generator=generator) for s in shapes] for _ in range(snapshots)]
        for _ in range(num_trajectories)
    ]


def test_import_upstream_buffer_equals_flattened_tensors(digits, tmp_path):
    buffers = [_fake_buffer(digits, 2, 4, seed=0), _fake_buffer(digits, 1, 4, seed=1)]
    paths = []
    for n, buffer in enumerate(buffers):
        paths.append(tmp_path / f"replay_buffer_{n}.pt")
        torch.save(buffer, paths[-1])
    notices = []
    imported = import_upstream(paths, digits, "convnet", tmp_path / "store", notice=notices.append)
    assert imported.num_experts == 3 and imported.epochs == 3
    flat = [torch.stack([torch.cat([p.reshape(-1) for p in snap]) for snap in traj]) for b in buffers for traj in b]
    for i in range(3):
        assert torch.equal(imported.trajectory(i), flat[i])
    assert imported.origin["kind"] == "imported"
    assert any("do not record their normalisation" in n for n in notices)
    imported.check_compatible(digits, model_layout("convnet", digits))
    # Importing the same files again adds nothing; a directory argument finds the buffers.
    again = import_upstream([tmp_path], digits, "convnet", tmp_path / "store", notice=notices.append)
    assert again.num_experts == 3


def test_import_into_the_cache_is_found_by_ensure(digits, tmp_path):
    torch.save(_fake_buffer(digits, 2, 3), tmp_path / "replay_buffer_0.pt")
    imported = import_upstream(
        [tmp_path / "replay_buffer_0.pt"],
        digits,
        "convnet",
        cache_dir=tmp_path / "cache",
        notice=lambda m: None,
    )
    cfg = ExpertConfig.for_dataset(digits, model="convnet", num_experts=2, epochs=2)
    assert imported.directory == expert_directory(tmp_path / "cache", cfg, digits)
    found = ensure_experts(digits, cfg, tmp_path / "cache", "cpu", notice=lambda m: None, progress=False)
    assert found.num_experts == 2 and torch.equal(found.trajectory(1), imported.trajectory(1))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_import_refuses_code_payloads(digits, tmp_path):
    marker = tmp_path / "pwned"
    torch.save([_Payload(str(marker))], tmp_path / "evil.pt")
    with pytest.raises(UserError, match="carries code"):
        import_upstream([tmp_path / "evil.pt"], digits, "convnet", tmp_path / "store", notice=lambda m: None)
    assert not marker.exists()
    assert not (tmp_path / "store").exists()


def test_import_refuses_wrong_parameter_count_and_garbage(digits, tmp_path):
    buffer = _fake_buffer(digits, 1, 3)
    buffer[0] = [snap[:-1] for snap in buffer[0]]  # drop the classifier bias
    torch.save(buffer, tmp_path / "short.pt")
    num_params = sum(p.numel() for p in build_model("convnet", 1, 10, 8).parameters())
    with pytest.raises(UserError, match=f"{num_params - 10:,} parameters, but the model's layout has {num_params:,}"):
        import_upstream([tmp_path / "short.pt"], digits, "convnet", tmp_path / "s1", notice=lambda m: None)
    (tmp_path / "text.pt").write_text("not a buffer")
    with pytest.raises(UserError, match="replay buffer"):
        import_upstream([tmp_path / "text.pt"], digits, "convnet", tmp_path / "s2", notice=lambda m: None)
    torch.save({"a": torch.zeros(2)}, tmp_path / "dict.pt")
    with pytest.raises(UserError, match="list of trajectories"):
        import_upstream([tmp_path / "dict.pt"], digits, "convnet", tmp_path / "s3", notice=lambda m: None)


# -- the command line ---------------------------------------------------------------------


def test_cli_trains_a_store(tmp_path):
    out = tmp_path / "experts"
    args = [
        "experts",
        "--dataset",
        "digits",
        "--num-experts",
        "1",
        "--epochs",
        "1",
        "--output",
        str(out),
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "MiB" in result.output and "1 expert(s) of digits/convnet" in result.output
    opened = ExpertStore.open(out)
    assert opened.num_experts == 1 and opened.epochs == 1 and opened.config.lr == 0.01


def test_cli_imports_into_the_cache(digits, tmp_path):
    torch.save(_fake_buffer(digits, 1, 3), tmp_path / "replay_buffer_0.pt")
    result = CliRunner().invoke(
        main, ["experts", "--dataset", "digits", "--import", str(tmp_path / "replay_buffer_0.pt")]
    )
    assert result.exit_code == 0, result.output
    cfg = ExpertConfig.for_dataset(digits, num_experts=1, epochs=2)
    assert ExpertStore.open(expert_directory(os.environ["DCBENCH_CACHE"], cfg, digits)).num_experts == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--dataset", "nope"], "nope"),
        (["--dataset", "digits", "--model", "nope"], "nope"),
        (["--dataset", "digits", "--epochs", "0"], "epochs"),
        (["--dataset", "digits", "--import", "missing.pt"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback(args, fragment, tmp_path):
    result = CliRunner().invoke(main, ["experts", *args, "--output", str(tmp_path / "o"), "--no-progress"])
    assert_user_error(result, fragment)
