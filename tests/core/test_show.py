"""``dcbench show``: pixel-exact image grids, learning curves, and bad inputs ending in exit code 2."""

import json
import pickle

import numpy as np
import pytest
import torch
from cli_checks import assert_user_error
from click.testing import CliRunner
from matplotlib.image import imread

from dcbench_tesla.cli import main
from dcbench_tesla.data import Preprocessing, ZCAState
from dcbench_tesla.errors import UserError
from dcbench_tesla.show import CLASSES_PER_LINE, NAME_BAND_PX, image_grid, learning_curves, running_mean
from dcbench_tesla.synthetic import SyntheticSet

TOL = 2.5 / 255  # 8-bit PNG (and the grey colormap's 256-entry table)


def make_set(channels=1, size=8, soft=False, zca=False, per_class=2, classes=3):
    """A small set whose pixels in [0, 1] are known; returns (set, pixels01)."""
    g = torch.Generator().manual_seed(0)
    n = classes * per_class
    x01 = 0.05 + 0.9 * torch.rand(n, channels, size, size, generator=g)
    d = channels * size * size
    if zca:
        matrix = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g) / d**0.5  # invertible, well conditioned
        pre = Preprocessing(
            mean=(0.0,) * channels,
            std=(1.0,) * channels,
            zca=ZCAState(mean=x01.reshape(n, -1).mean(0), matrix=matrix),
        )
    else:
        pre = Preprocessing(mean=(0.5,) * channels, std=(0.25,) * channels)
    hard = torch.arange(classes).repeat_interleave(per_class).flip(0)  # rows must be regrouped by class
    if soft:
        labels = torch.full((n, classes), 0.1)
        labels[torch.arange(n), hard] = torch.linspace(0.5, 0.8, n)
        labels = labels / labels.sum(1, keepdim=True)
    else:
        labels = hard
    syn = SyntheticSet(
        images=pre.apply(x01),
        labels=labels,
        dataset="toy",
        classes=[f"class-{c}" for c in range(classes)],
        preprocessing=pre,
        ipc=per_class,
        method={"id": "dm"},
        iteration=7,
    )
    syn.validate()
    return syn, x01


def read_png(path):
    png = imread(str(path))
    assert png.dtype == np.float32
    return png[..., :3]  # drop alpha


def sigma_view(x01):
    """The papers' view, written out independently: per channel, mean +- 2.5 std over the set to [0, 1]."""
    mean = x01.mean(dim=(0, 2, 3), keepdim=True)
    std = x01.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return ((x01 - (mean - 2.5 * std)) / (5 * std)).clamp(0, 1)


def assert_cells_match(layout, png, x01):
    """Every grid cell shows its image, enlarged with nearest-neighbour repetition."""
    s = layout.scale
    h, w = layout.cell
    for r, row in enumerate(layout.indices):
        for c, i in enumerate(row):
            y, x = layout.cell_origin(r, c)
            cell = png[y : y + h, x : x + w]
            expected = x01[i].permute(1, 2, 0).numpy()
            if expected.shape[-1] == 1:  # grey: R = G = B
                expected = np.repeat(expected, 3, axis=-1)
            expected = np.repeat(np.repeat(expected, s, axis=0), s, axis=1)
            np.testing.assert_allclose(cell, expected, atol=TOL)


def test_hard_labels_grey_grid_is_pixel_exact(tmp_path):
    syn, x01 = make_set(channels=1, size=8)
    layout = image_grid(syn, tmp_path / "grid.png", view="raw")
    png = read_png(tmp_path / "grid.png")
    assert png.shape[:2] == layout.size
    assert layout.classes == [0, 1, 2] and [len(r) for r in layout.indices] == [2, 2, 2]
    hard = syn.hard_labels()
    assert all(int(hard[i]) == c for c, row in zip(layout.classes, layout.indices, strict=True) for i in row)
    assert layout.scale == 8 and layout.cell == (64, 64)  # 8x8 digits enlarged 8x, no blur
    assert_cells_match(layout, png, x01)
    # one cell is crisp: every 8x8 block of the enlarged image is a single value
    y, x = layout.cell_origin(0, 0)
    block = png[y : y + 8, x : x + 8, 0]
    assert np.ptp(block) == 0
    assert not list(tmp_path.glob(".grid.png.*"))  # no temp file left behind
    sigma = image_grid(syn, tmp_path / "sigma.png")  # the default: the papers' 2.5-sigma view
    assert_cells_match(sigma, read_png(tmp_path / "sigma.png"), sigma_view(x01))


def test_soft_labels_and_zca_are_inverted_in_the_grid(tmp_path):
    syn, x01 = make_set(channels=3, size=4, soft=True, zca=True)
    assert syn.label_kind == "soft" and syn.preprocessing.kind == "zca"
    assert not torch.allclose(syn.images, x01, atol=0.05)  # the stored images really are whitened
    layout = image_grid(syn, tmp_path / "soft.png", view="raw")
    png = read_png(tmp_path / "soft.png")
    assert png.shape[:2] == layout.size
    assert len(layout.indices) == 3
    assert layout.pitch[0] > layout.cell[0] + 4  # room for the probability under each image
    assert_cells_match(layout, png, x01)
    assert_cells_match(image_grid(syn, tmp_path / "s.png"), read_png(tmp_path / "s.png"), sigma_view(x01))


def test_limits_on_images_and_classes(tmp_path):
    syn, x01 = make_set(per_class=3, classes=4)
    layout = image_grid(syn, tmp_path / "g.png", max_per_class=1, max_classes=2, view="raw")
    png = read_png(tmp_path / "g.png")
    assert layout.classes == [0, 1] and [len(r) for r in layout.indices] == [1, 1]
    assert png.shape[:2] == layout.size
    assert_cells_match(layout, png, x01)
    with pytest.raises(UserError, match="max-per-class"):
        image_grid(syn, tmp_path / "h.png", max_per_class=0)


@pytest.mark.parametrize("soft", [False, True])
def test_one_image_per_class_runs_across_in_lines_of_ten(tmp_path, soft):
    syn, x01 = make_set(per_class=1, classes=12, soft=soft)
    layout = image_grid(syn, tmp_path / "ipc1.png", view="raw")
    png = read_png(tmp_path / "ipc1.png")
    assert png.shape[:2] == layout.size
    assert layout.classes_per_line == CLASSES_PER_LINE == 10 and layout.classes == list(range(12))
    assert_cells_match(layout, png, x01)
    first, tenth, eleventh = layout.cell_origin(0, 0), layout.cell_origin(9, 0), layout.cell_origin(10, 0)
    assert tenth == (first[0], first[1] + 9 * layout.pitch[1])  # one line of ten
    assert eleventh == (first[0] + layout.pitch[0], first[1])  # then the next line, from the left
    grid_right = first[1] + 10 * layout.pitch[1] - 4
    assert layout.size[1] - grid_right < 0.5 * layout.size[1]  # no tall column on a wide, mostly white page
    for k in (0, 11):  # each class's name is drawn in the band above its image
        y, x = layout.cell_origin(k, 0)
        band = png[y - NAME_BAND_PX : y, x : x + layout.cell[1]]
        assert band.min() < 0.5
    with pytest.raises(IndexError, match="one image each"):
        layout.cell_origin(0, 1)
    if soft:  # the probability is printed under each image
        y, x = layout.cell_origin(0, 0)
        assert png[y + layout.cell[0] : y + layout.pitch[0] - NAME_BAND_PX, x : x + layout.cell[1]].min() < 0.5


def write_metrics(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


STEPS = [{"event": "reset", "iteration": 0, "elapsed_s": 0.1}] + [
    {"event": "step", "iteration": i, "loss": 1.0 / i, "syn_lr": 0.01 + 0.001 * i, "elapsed_s": 0.1 * i}
    | ({"eval_acc": 0.2 + 0.03 * i} if i % 5 == 0 else {})
    for i in range(1, 21)
]


def test_learning_curves_plot_loss_step_size_and_accuracy(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", STEPS)
    plotted = learning_curves(tmp_path, tmp_path / "curves.png")
    assert plotted == ["loss", "syn_lr", "eval_acc"]
    three = read_png(tmp_path / "curves.png")
    # a log without syn_lr or accuracy: one panel only, a shorter figure
    write_metrics(tmp_path / "metrics.jsonl", [{"event": "step", "loss": 0.5 - 0.01 * i} for i in range(10)])
    assert learning_curves(tmp_path, tmp_path / "one.png") == ["loss"]
    one = read_png(tmp_path / "one.png")
    assert one.shape[0] < three.shape[0] and one.shape[1] == three.shape[1]


def test_learning_curves_of_a_run_without_steps_write_nothing(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [{"event": "reset", "num_images": 6, "elapsed_s": 0.01}])
    assert learning_curves(tmp_path, tmp_path / "c.png") == []
    assert not (tmp_path / "c.png").exists()


def test_running_mean():
    ys = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(running_mean(ys, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(running_mean(ys, 10), [1.0, 2.0, 3.0, 4.0])


def test_learning_curves_tolerate_a_truncated_last_line_only(tmp_path):
    text = "".join(json.dumps(line) + "\n" for line in STEPS[:5])
    (tmp_path / "metrics.jsonl").write_text(text + '{"event": "step", "lo', encoding="utf-8")
    assert learning_curves(tmp_path, tmp_path / "c.png") == ["loss", "syn_lr"]
    (tmp_path / "metrics.jsonl").write_text("not json\n" + text, encoding="utf-8")
    with pytest.raises(UserError, match="line 1"):
        learning_curves(tmp_path, tmp_path / "d.png")
    with pytest.raises(UserError, match="no metrics file"):
        learning_curves(tmp_path / "nowhere", tmp_path / "e.png")


# --- the command, invoked through a group as 'dcbench' does -------------------------------


def invoke(*args):
    return CliRunner().invoke(main, ["show", *[str(a) for a in args]])


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    syn, _ = make_set()
    syn.save(run / "synthetic_set.safetensors")
    write_metrics(run / "metrics.jsonl", STEPS)
    (run / "config.json").write_text(json.dumps({"method": "dm", "dataset": "toy", "ipc": 2, "seed": 0}))
    return run


def test_show_run_directory_writes_both_figures_and_redraws_them(run_dir, tmp_path):
    result = invoke(run_dir)
    assert result.exit_code == 0, result.output
    assert (run_dir / "images.png").is_file() and (run_dir / "curves.png").is_file()
    before = (run_dir / "images.png").read_bytes()
    assert invoke(run_dir, "--max-per-class", "1").exit_code == 0  # a redraw needs no flag
    assert (run_dir / "images.png").read_bytes() != before
    out = tmp_path / "figures"
    assert invoke(run_dir, "--output", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "images.png"]
    assert_user_error(invoke(run_dir, "--output", tmp_path / "x.png"), "must be a directory")


def test_show_set_file(run_dir, tmp_path):
    set_file = run_dir / "synthetic_set.safetensors"
    assert invoke(set_file).exit_code == 0
    assert (run_dir / "synthetic_set.png").is_file() and not (run_dir / "curves.png").exists()
    assert invoke(set_file, "--output", tmp_path / "mine.png").exit_code == 0
    assert (tmp_path / "mine.png").is_file()
    assert invoke(set_file, "--output", tmp_path / "mine.png", "--view", "raw").exit_code == 0
    assert_user_error(invoke(set_file, "--output", tmp_path / "mine.jpg"), "PNG")


def test_show_bad_inputs_exit_2(run_dir, tmp_path):
    assert_user_error(invoke(tmp_path / "missing.safetensors"), "does not exist")
    pickled = tmp_path / "set.pt"
    pickled.write_bytes(pickle.dumps({"images": [1, 2, 3]}, protocol=4))
    assert_user_error(invoke(pickled), "pickle")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a tensor file\n")
    assert_user_error(invoke(text), "not a readable")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(invoke(empty), "not a dcbench run directory")
    (run_dir / "metrics.jsonl").unlink()
    assert_user_error(invoke(run_dir), "metrics.jsonl")
    assert_user_error(invoke(run_dir / "synthetic_set.safetensors", "--max-per-class", "0"), "max-per-class")
    assert not list(tmp_path.rglob("*.png"))
