"""``dcbench show``: look at a synthetic set (an image grid) and a run's learning curves.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas (no pyplot, so
no global backend is switched) and written atomically as PNG files.

The image grid is pixel exact: every synthetic image is mapped back to [0, 1] with
``preprocessing.invert`` (mean/std or ZCA), enlarged by an integer factor with
nearest-neighbour repetition and pasted unresampled into the figure (``figimage``), so
8x8 digits stay crisp and the PNG holds the images' true values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcbench_tesla.errors import UserError
from dcbench_tesla.files import atomic_path
from dcbench_tesla.run.rundir import RunDir
from dcbench_tesla.synthetic import SyntheticSet

DPI = 100
#: Target on-screen size (pixels) of one synthetic image; the enlargement is an integer factor.
CELL_TARGET_PX = 64
GAP_PX = 4
#: Height of the band under each image holding its top soft-label probability.
PROB_BAND_PX = 14
TITLE_PX = 46
MARGIN_PX = 10
#: Agg refuses images of 2^16 pixels or more in a direction; stay well below.
MAX_FIGURE_PX = 30000
MAX_NAME_CHARS = 20
#: With one image per class, classes run across the page, this many to a line, each name above.
CLASSES_PER_LINE = 10
#: Height of the band above each image holding its class name (classes laid out across).
NAME_BAND_PX = 14
#: Approximate width of one character of a class name above its image, in pixels.
NAME_CHAR_PX = 7
IMAGES_NAME = "images.png"
CURVES_NAME = "curves.png"
RUN_SET_NAME = RunDir.SYNTHETIC_SET
RUN_METRICS_NAME = RunDir.METRICS


@dataclass(frozen=True)
class GridLayout:
    """Where things are in an image-grid PNG (pixel coordinates, origin at the top left).

    Classes are laid out in one of two ways: a row per class with its name on the left (several
    images per class), or, when each class shows one image, across the page in lines of
    :data:`CLASSES_PER_LINE` with each name above its image (as the papers print IPC 1).

    Attributes:
        path: The PNG written.
        classes: The classes shown, in reading order.
        indices: For each class shown, the indices (into the set) of its images, left to right.
        scale: Integer enlargement of every image (one image pixel = scale x scale PNG pixels).
        cell: (height, width) of one enlarged image in PNG pixels.
        pitch: (line pitch, column pitch): distance between the top-left corners of neighbours.
        origin: (y, x) of the top-left corner of the grid (the first image, or its name band).
        size: (height, width) of the PNG.
        classes_per_line: None for a row per class; else how many classes run across one line.
    """

    path: Path
    classes: list[int]
    indices: list[list[int]]
    scale: int
    cell: tuple[int, int]
    pitch: tuple[int, int]
    origin: tuple[int, int]
    size: tuple[int, int]
    classes_per_line: int | None = None

    def cell_offset(self, k: int, j: int) -> tuple[int, int]:
        """(y, x) of image ``j`` of the ``k``-th class shown, relative to :attr:`origin`."""
        if self.classes_per_line is None:
            return k * self.pitch[0], j * self.pitch[1]
        if j != 0:
            raise IndexError("classes laid out across show one image each")
        line, place = divmod(k, self.classes_per_line)
        return NAME_BAND_PX + line * self.pitch[0], place * self.pitch[1]

    def cell_origin(self, k: int, j: int) -> tuple[int, int]:
        """(y, x) of the top-left PNG pixel of image ``j`` of the ``k``-th class shown."""
        dy, dx = self.cell_offset(k, j)
        return self.origin[0] + dy, self.origin[1] + dx


def _method_name(syn: SyntheticSet) -> str:
    method = syn.method or {}
    return str(method.get("id") or method.get("name") or "unknown method")


def _short(name: str, limit: int = MAX_NAME_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _new_figure(width_px: int, height_px: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")


def _pick_rows(
    syn: SyntheticSet, max_per_class: int, max_classes: int | None
) -> tuple[list[int], list[list[int]], int]:
    """Classes shown, image indices per class, and the column count."""
    hard = syn.hard_labels().detach().cpu().numpy()
    classes = list(range(syn.num_classes))
    if max_classes is not None:
        classes = classes[:max_classes]
    indices = [[int(i) for i in np.flatnonzero(hard == c)[:max_per_class]] for c in classes]
    cols = max([len(row) for row in indices] + [1])
    return classes, indices, cols


#: How pixels are mapped to the displayed [0, 1]: ``sigma`` (the papers' view: each channel's
#: mean +- 2.5 standard deviations over the set stretched to [0, 1], so images pushed beyond the
#: pixel range keep their detail) or ``raw`` (the pixel values clipped to [0, 1]).
VIEWS = ("sigma", "raw")
SIGMA_CLIP = 2.5


def display_pixels(pixels: np.ndarray, view: str) -> np.ndarray:
    """Map de-normalised pixels (N, C, H, W) to the displayed [0, 1] (see :data:`VIEWS`)."""
    if view == "raw":
        return np.clip(pixels, 0.0, 1.0)
    mean = pixels.mean(axis=(0, 2, 3), keepdims=True)
    std = pixels.std(axis=(0, 2, 3), keepdims=True)
    low, high = mean - SIGMA_CLIP * std, mean + SIGMA_CLIP * std
    return np.clip((pixels - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)


def _plan(
    syn: SyntheticSet, max_per_class: int, max_classes: int | None, cell: tuple[int, int], soft: bool
) -> tuple[list[int], list[list[int]], int | None, tuple[int, int]]:
    """Classes and images shown, the layout mode and the pitch: ``(classes, indices, per_line, pitch)``.

    One image per class lays the classes across (``per_line`` classes to a line); otherwise a row
    per class. Either way the grid is cut to the lines the renderer allows.
    """
    cell_h, cell_w = cell
    below = GAP_PX + (PROB_BAND_PX if soft else 0)
    room = MAX_FIGURE_PX - TITLE_PX - 2 * MARGIN_PX
    limit = max(1, room // (cell_h + below))
    classes, indices, cols = _pick_rows(syn, max_per_class, limit if max_classes is None else min(max_classes, limit))
    pitch = (cell_h + below, cell_w + GAP_PX)
    if cols > 1:
        return classes, indices, None, pitch
    per_line = min(CLASSES_PER_LINE, syn.num_classes if max_classes is None else max_classes)
    pitch = (NAME_BAND_PX + cell_h + below, cell_w + GAP_PX)
    limit = per_line * max(1, room // pitch[0])
    classes, indices, _ = _pick_rows(syn, max_per_class, limit if max_classes is None else min(max_classes, limit))
    return classes, indices, per_line, pitch


def _mosaic(layout: GridLayout, pixels: np.ndarray, grid_size: tuple[int, int]) -> np.ndarray:
    """The grid's pixels (white between cells): every image enlarged and placed at its cell."""
    grey = pixels.shape[1] == 1
    mosaic = np.ones(grid_size if grey else (*grid_size, 3), dtype=np.float32)
    cell_h, cell_w = layout.cell
    for k, row in enumerate(layout.indices):
        for j, i in enumerate(row):
            img = pixels[i, 0] if grey else pixels[i, :3].transpose(1, 2, 0)
            if not grey and pixels.shape[1] == 2:  # not a real case; keep it displayable
                img = np.concatenate([img, np.zeros_like(img[..., :1])], axis=-1)
            y, x = layout.cell_offset(k, j)
            mosaic[y : y + cell_h, x : x + cell_w] = np.repeat(np.repeat(img, layout.scale, 0), layout.scale, 1)
    return mosaic


def _subtitle(syn: SyntheticSet, indices: list[list[int]], view: str) -> str:
    """What the grid shows: how many images and classes, the labels and the pixel mapping."""
    shown = f"{sum(len(r) for r in indices)} of {len(syn.images)} images"
    if len(indices) < syn.num_classes:
        shown += f", first {len(indices)} of {syn.num_classes} classes"
    undone = "ZCA whitening undone" if syn.preprocessing.kind == "zca" else "mean/std normalisation undone"
    shown_as = f"mean ± {SIGMA_CLIP:g} std per channel" if view == "sigma" else "pixels clipped to [0, 1]"
    return f"{shown} · {syn.label_kind} labels · {undone}; {shown_as}"


def _label_cells(fig: Any, layout: GridLayout, syn: SyntheticSet, names: list[str]) -> None:
    """Class names (left of each row, or above each image) and, with soft labels, each image's probability."""
    height, width = layout.size
    cell_h, cell_w = layout.cell
    left = layout.origin[1]

    def text(y_px: float, x_px: float, words: str, **kwargs: Any) -> None:
        fig.text(x_px / width, 1.0 - y_px / height, words, **kwargs)

    probs = syn.labels.detach().cpu().float().numpy() if syn.label_kind == "soft" else None
    for k, (cls, row) in enumerate(zip(layout.classes, layout.indices, strict=True)):
        y, x = layout.cell_origin(k, 0)
        if layout.classes_per_line is None:
            text(y + cell_h / 2, left - 6, names[k], ha="right", va="center", fontsize=9)
        else:
            text(y - NAME_BAND_PX / 2, x + cell_w / 2, names[k], ha="center", va="center", fontsize=8)
        if not row:
            empty = "(no images)" if layout.classes_per_line is None else "(none)"  # "(none)" fits one cell
            text(y + cell_h / 2, x, empty, ha="left", va="center", fontsize=8, color="0.4")
        for j, i in enumerate(row if probs is not None else []):
            y, x = layout.cell_origin(k, j)
            probability = f"p={float(probs[i, cls]):.2f}"
            text(y + cell_h + PROB_BAND_PX / 2, x + cell_w / 2, probability, ha="center", va="center", fontsize=7)


def image_grid(
    syn: SyntheticSet, path: Path | str, max_per_class: int = 10, max_classes: int | None = None, view: str = "sigma"
) -> GridLayout:
    """Write a PNG grid of the synthetic images: a row per class, or classes across when each shows one image.

    Each class is labelled with its name (left of its row; above its image when classes run
    across, :data:`CLASSES_PER_LINE` to a line); images are mapped back to pixels with
    ``syn.preprocessing.invert`` (undoing mean/std or ZCA), shown with ``view`` (see
    :data:`VIEWS`), in grey for 1-channel sets, and enlarged without interpolation. With soft
    labels an image sits with its most probable class and that probability is printed under it.
    Grids taller than the renderer allows show the first classes only (the subtitle says so).

    Args:
        syn: The synthetic set.
        path: Where to write the PNG (atomically).
        max_per_class: Images shown per class (the first ones of each class).
        max_classes: Classes shown (the first ones), or None for all.
        view: ``"sigma"`` (mean +- 2.5 std per channel, the papers' view) or ``"raw"`` ([0, 1] clip).

    Returns:
        The layout of the written PNG.

    Raises:
        UserError: ``max_per_class`` or ``max_classes`` below 1.
    """
    if max_per_class < 1:
        raise UserError(f"--max-per-class must be at least 1, got {max_per_class}")
    if max_classes is not None and max_classes < 1:
        raise UserError(f"--max-classes must be at least 1, got {max_classes}")
    if view not in VIEWS:
        raise UserError(f"--view must be one of {', '.join(VIEWS)}, got {view!r}")
    path = Path(path)
    _, _, h, w = syn.images.shape
    scale = max(1, round(CELL_TARGET_PX / max(h, w)))
    cell = (h * scale, w * scale)
    classes, indices, per_line, pitch = _plan(syn, max_per_class, max_classes, cell, syn.label_kind == "soft")
    if per_line is None:
        names = [_short(syn.classes[c]) for c in classes]
        label_px = min(10 + 7 * max([len(s) for s in names] + [1]), 170)
        lines, cols = len(classes), max([len(r) for r in indices] + [1])
    else:
        names = [_short(syn.classes[c], max(3, pitch[1] // NAME_CHAR_PX)) for c in classes]
        label_px = 0
        lines, cols = -(-len(classes) // per_line), min(per_line, len(classes))
    grid_size = (lines * pitch[0] - GAP_PX, cols * pitch[1] - GAP_PX)
    title = f"{_method_name(syn)} · {syn.dataset} · IPC {syn.ipc} · iteration {syn.iteration}"
    subtitle = _subtitle(syn, indices, view)
    width = max(2 * MARGIN_PX + label_px + grid_size[1], 7 * max(len(title), len(subtitle)) + 2 * MARGIN_PX)
    height = TITLE_PX + grid_size[0] + MARGIN_PX
    left = MARGIN_PX + label_px
    layout = GridLayout(path, classes, indices, scale, cell, pitch, (TITLE_PX, left), (height, width), per_line)

    pixels = display_pixels(syn.preprocessing.invert(syn.images.detach().cpu().float(), clamp=False).numpy(), view)
    fig = _new_figure(width, height)
    grey = pixels.shape[1] == 1
    fig.figimage(
        _mosaic(layout, pixels, grid_size),
        xo=left,
        yo=MARGIN_PX,
        origin="upper",
        cmap="gray" if grey else None,
        vmin=0.0,
        vmax=1.0,
        resize=False,
    )
    fig.text(MARGIN_PX / width, 1.0 - 8 / height, title, ha="left", va="top", fontsize=11, fontweight="bold")
    fig.text(MARGIN_PX / width, 1.0 - 27 / height, subtitle, ha="left", va="top", fontsize=8.5, color="0.3")
    _label_cells(fig, layout, syn, names)
    _save_png(fig, path)
    return layout


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """Read a run's ``metrics.jsonl``: one dict per line.

    A truncated last line (a run killed mid-write) is skipped.

    Raises:
        UserError: the file is missing or a line other than the last is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no metrics file {str(path)!r}; is this a run directory written by 'dcbench run'?")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {str(path)!r}: {exc}") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines):
                continue
            raise UserError(f"{str(path)!r} line {number} is not a JSON object; not a dcbench metrics log")
        records.append(record)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _accuracy_keys(records: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if "acc" in key.lower() and _number(value) is not None:
                keys.setdefault(key, None)
    return list(keys)


def _series(points: list[tuple[float, dict[str, Any]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, record in points:
        y = _number(record.get(key))
        if y is not None:
            xs.append(x)
            ys.append(y)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _with_x(records: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """Pair every record with its iteration (the ``iteration`` key, else the step count)."""
    out: list[tuple[float, dict[str, Any]]] = []
    steps = 0
    for record in records:
        if record.get("event") == "step":
            steps += 1
        x = _number(record.get("iteration"))
        out.append((steps if x is None else x, record))
    return out


def _run_title(run_dir: Path) -> str:
    label = run_dir.resolve().name
    try:
        config = json.loads(RunDir(run_dir).config.read_text(encoding="utf-8"))
        parts = [
            str(config["method"]),
            str(config["dataset"]),
            f"IPC {config['ipc']}",
            f"seed {config['seed']}",
        ]
        return f"{label}: " + " · ".join(parts)
    except (OSError, ValueError, KeyError, TypeError):
        return label


def _log_if_wide(ax: Any, ys: np.ndarray) -> None:
    finite = ys[np.isfinite(ys)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
        ax.set_yscale("log")


def running_mean(ys: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    sums = np.cumsum(np.insert(ys, 0, 0.0))
    counts = np.minimum(np.arange(1, ys.size + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, ys.size + 1) - window, 0)]) / counts


def learning_curves(run_dir: Path | str, path: Path | str) -> list[str]:
    """Plot a run's matching loss, step size ``syn_lr`` and evaluation accuracies per iteration.

    One panel per quantity logged in ``metrics.jsonl`` (absent ones are skipped); the loss is
    drawn raw (thin) with its running mean over about a twentieth of the run (thick). The title
    gives the distillation time (set-up such as expert training is not in the log's clock). A run
    with no distillation steps (the random baseline) gets no figure: nothing is written.

    Args:
        run_dir: The run directory (holding ``metrics.jsonl``).
        path: Where to write the PNG (atomically).

    Returns:
        The keys plotted (empty when there was nothing to plot and no file was written).

    Raises:
        UserError: ``metrics.jsonl`` is missing or not a metrics log.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / RUN_METRICS_NAME)
    steps = [r for r in records if r.get("event") == "step"]
    points = _with_x(records)
    step_points = [(x, r) for x, r in points if r.get("event") == "step"]
    panels: list[tuple[str, str, list[str]]] = []  # (title, y label, keys)
    if _series(step_points, "loss")[0].size:
        panels.append(("matching loss", "loss (dimensionless)", ["loss"]))
    if _series(step_points, "syn_lr")[0].size:
        panels.append(("learned step size", "syn_lr (student lr)", ["syn_lr"]))
    acc_keys = _accuracy_keys(records)
    if acc_keys:
        split = "validation" if all(key.startswith("val") for key in acc_keys) else "test"
        panels.append(("evaluation", f"{split} accuracy (%)", acc_keys))

    if not panels:
        return []
    title = _run_title(run_dir)
    elapsed = _number(steps[-1].get("elapsed_s")) if steps else None
    if elapsed is not None:
        monitoring = " and its monitoring evaluations" if acc_keys else ""
        title += f"\n{len(steps)} iterations in {elapsed:.1f} s of distillation{monitoring}"
    else:
        title += f"\n{len(steps)} iterations"
    fig = _new_figure(760, 90 + 230 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title, fontsize=10)

    plotted: list[str] = []
    for ax, (panel_title, ylabel, keys) in zip(axes, panels, strict=True):
        source = points if panel_title == "evaluation" else step_points
        for key in keys:
            xs, ys = _series(source, key)
            if panel_title == "evaluation" and ys.size and np.nanmax(np.abs(ys)) <= 1.0:
                ys = ys * 100.0  # fractions to percent
            marker = "o" if xs.size <= 50 or panel_title == "evaluation" else None
            if key == "loss" and xs.size > 20:
                ax.plot(xs, ys, linewidth=0.6, alpha=0.45, color="C0", label="loss (each iteration)")
                window = max(2, xs.size // 20)
                ax.plot(xs, running_mean(ys, window), linewidth=1.8, color="C0", label=f"running mean of {window}")
                ax.legend(fontsize=8)
            else:
                ax.plot(xs, ys, marker=marker, markersize=3, linewidth=1.2, label=key)
            plotted.append(key)
            if panel_title != "evaluation":
                _log_if_wide(ax, ys)
        ax.set_title(panel_title, fontsize=9, loc="left")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(True, alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("outer iteration")
    fig.tight_layout()
    _save_png(fig, Path(path))
    return plotted


def _resolve_outputs(source: Path, output: Path | None, is_run: bool) -> dict[str, Path]:
    """Map each figure ("images", "curves") to its output file."""
    default_image = IMAGES_NAME if is_run else source.with_suffix(".png").name
    if output is None:
        folder = source if is_run else source.parent
    elif output.is_dir() or not output.suffix:
        folder = output
    elif output.suffix.lower() == ".png":
        if is_run:
            raise UserError(
                f"{str(source)!r} is a run directory: 'show' writes {IMAGES_NAME} and {CURVES_NAME}, "
                "so --output must be a directory"
            )
        return {"images": output}
    else:
        raise UserError(f"--output {str(output)!r}: figures are written as PNG; use a .png file or a directory")
    outputs = {"images": folder / default_image}
    if is_run:
        outputs["curves"] = folder / CURVES_NAME
    return outputs


def show(
    target: Path,
    output: Path | None,
    max_per_class: int,
    max_classes: int | None,
    view: str = "sigma",
    echo: Any = print,
) -> None:
    """Draw a synthetic set as an image grid; for a run directory, also its learning curves.

    The figures are (re)drawn every time: they are derived from the run's files, which are never
    touched.
    """
    if not target.exists():
        raise UserError(f"{str(target)!r} does not exist; give a synthetic-set file or a run directory")
    is_run = target.is_dir()
    if is_run:
        have = {name: (target / name).is_file() for name in (RUN_SET_NAME, RUN_METRICS_NAME)}
        if not any(have.values()):
            raise UserError(f"{str(target)!r} is not a dcbench run directory (no {RUN_SET_NAME} or {RUN_METRICS_NAME})")
        missing = [name for name, ok in have.items() if not ok]
        if missing:
            raise UserError(
                f"run directory {str(target)!r} has no {' or '.join(missing)}; did the run finish? "
                "(give the synthetic-set file itself to draw only its images)"
            )
    set_file = target / RUN_SET_NAME if is_run else target
    outputs = _resolve_outputs(target, output, is_run)
    for p in outputs.values():
        if p.is_dir():
            raise UserError(f"{str(p)!r} is a directory; cannot write a PNG there")
    syn = SyntheticSet.load(set_file)
    if is_run:
        read_metrics(target / RUN_METRICS_NAME)  # fail on a bad log before writing anything
    layout = image_grid(syn, outputs["images"], max_per_class=max_per_class, max_classes=max_classes, view=view)
    count = sum(len(row) for row in layout.indices)
    echo(f"images: {layout.path}  ({count} images of {len(layout.classes)} classes)")
    if is_run:
        plotted = learning_curves(target, outputs["curves"])
        if plotted:
            echo(f"curves: {outputs['curves']}  ({', '.join(plotted)})")
        else:
            echo("curves: none (the run logged no distillation steps: nothing to plot)")
