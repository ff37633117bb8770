"""``imagefolder``: your own images in train/<class>/ and test/<class>/, resized, normalised on train."""

from __future__ import annotations

import pytest
import torch
from cli_checks import assert_user_error
from click.testing import CliRunner
from PIL import Image

from dcbench_tesla.cli import main
from dcbench_tesla.data import load_dataset
from dcbench_tesla.errors import UserError

# the loaders read files; the validation split cut from them is tested in test_split.py
pytestmark = pytest.mark.usefixtures("no_validation_split")


def write_folder(root, sizes=((12, 10), (9, 9)), per_class=(3, 2), test_per_class=1):
    """Two classes of solid-colour images of mixed sizes and formats; returns the colours."""
    colours = {"cat": (200, 10, 10), "dog": (10, 120, 200)}
    for split, count in (("train", per_class), ("test", (test_per_class,) * 2)):
        for (name, colour), n in zip(colours.items(), count, strict=True):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                suffix = ".png" if i % 2 == 0 else ".jpg"
                Image.new("RGB", (w, h), colour).save(folder / f"{i}{suffix}")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return colours


def test_images_are_resized_labelled_and_normalised_on_train(tmp_path):
    write_folder(tmp_path / "mine")
    ds = load_dataset("imagefolder", tmp_path / "mine", image_size=8, cache_dir=tmp_path / "cache")
    assert ds.classes == ["cat", "dog"] and ds.image_shape == (3, 8, 8)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1] and ds.test_labels.tolist() == [0, 1]
    # mean/std are the train split's: the normalised train pixels have mean 0 and std 1 per channel
    flat = ds.train_images.permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(flat.mean(dim=1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(flat.std(dim=1, unbiased=False), torch.ones(3), atol=1e-3)
    raw = ds.preprocessing.invert(ds.train_images, clamp=False)
    assert raw[0, 0].mean().item() == pytest.approx(200 / 255, abs=0.02)  # red cat, JPEG within 2 %


def test_second_load_reads_the_cache_and_a_changed_file_is_seen(tmp_path):
    write_folder(tmp_path / "mine")
    first = load_dataset("imagefolder", tmp_path / "mine", image_size=8, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "imagefolder").glob("*.npz"))) == 1
    again = load_dataset("imagefolder", tmp_path / "mine", image_size=8, cache_dir=tmp_path / "cache")
    assert torch.equal(first.train_images, again.train_images)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "mine" / "train" / "dog" / "new.png")
    changed = load_dataset("imagefolder", tmp_path / "mine", image_size=8, cache_dir=tmp_path / "cache")
    assert changed.train_images.shape[0] == first.train_images.shape[0] + 1


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("no-test", "missing test/"),
        ("empty-class", "without images"),
        ("unknown-test-class", "have no folder under"),
        ("one-class", "at least 2 class folders"),
        ("corrupt", "cannot read"),
    ],
)
def test_bad_folders_are_user_errors(tmp_path, damage, fragment):
    root = tmp_path / "mine"
    write_folder(root)
    if damage == "no-test":
        for path in sorted((root / "test").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "test").rmdir()
    elif damage == "empty-class":
        (root / "train" / "bird").mkdir()
    elif damage == "unknown-test-class":
        (root / "test" / "bird").mkdir()
        Image.new("RGB", (4, 4)).save(root / "test" / "bird" / "0.png")
    elif damage == "one-class":
        for path in sorted((root / "train" / "dog").iterdir()):
            path.unlink()
        (root / "train" / "dog").rmdir()
        for path in sorted((root / "test" / "dog").iterdir()):
            path.unlink()
        (root / "test" / "dog").rmdir()
    elif damage == "corrupt":
        (root / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=fragment):
        load_dataset("imagefolder", root, image_size=8, cache_dir=tmp_path / "cache")


def test_run_on_an_image_folder_without_code(tmp_path):
    write_folder(tmp_path / "mine", per_class=(3, 3))
    out = tmp_path / "run"
    mine = [
        "run",
        "--method",
        "random",
        "--dataset",
        "imagefolder",
        "--data-root",
        tmp_path / "mine",
        "--image-size",
        8,
    ]
    fast = ["--num-eval", 1, "--eval-epochs", 1, "--no-progress"]

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    result = invoke(*mine, "--ipc", 2, "--output", out, *fast)
    assert result.exit_code == 0, result.output
    assert (out / "result.json").is_file()
    assert_user_error(invoke(*mine, "--ipc", 4, "--output", tmp_path / "x", *fast), "--ipc must be between 1 and 3")
    not_here = invoke("run", "--method", "random", "--image-size", 8, "--output", tmp_path / "y", *fast)
    assert_user_error(not_here, "--image-size does not apply to dataset 'digits'")


def test_image_folder_shape_is_unknown_to_the_profiler(tmp_path):
    result = CliRunner().invoke(main, ["profile", "--dataset", "imagefolder", "--output", str(tmp_path / "p")])
    assert_user_error(result, "no fixed image shape")
