"""Tables and figures of a profile sweep, from its tidy CSV.

- Table 4 (the paper's layout: rows = inner steps, columns = methods, cells = peak memory MiB),
  one per dataset shape and memory measure. GPU: ``torch.cuda.max_memory_allocated`` and the NVML
  device peak. CPU: autograd's saved tensors (``saved + snapshots = total`` for the adjoint engine)
  and the process's peak RSS.
- Table 5 (memory and time per method at one step count, e.g. 50, with the ratios
  ``mtt/tesla`` memory, ``tesla/mtt`` and ``tesla-exact/mtt`` time).
- Figure 2 (memory vs steps, a line per method, out-of-memory points marked ``x``) per dataset,
  and Figure 3 (memory and time bars per dataset shape and method).

Everything here reads only the CSV (and ``provenance.json`` when present), so ``dcbench plot``
redraws a report without running anything. Figures use matplotlib's Agg canvas directly (no
pyplot state, no display needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dcbench_tesla.files import atomic_path, write_text_atomic
from dcbench_tesla.profiling.standins import RANDOM_STANDIN_NOTE

__all__ = [
    "figure2",
    "figure3",
    "load_csv",
    "markdown_report",
    "table4_markdown",
    "table5_markdown",
    "table_steps_for",
    "write_reports",
]

MARKDOWN_NAME = "profile.md"
PAPER_TABLE5_STEPS = 50
_CANONICAL = ("mtt", "tesla", "tesla-exact")

#: Memory measures shown per device type: (column, description), the first one is the primary.
MEMORY_MEASURES: dict[str, tuple[tuple[str, str], ...]] = {
    "cuda": (
        ("peak_alloc_mib", "torch.cuda.max_memory_allocated, peak MiB (tensors of PyTorch's allocator)"),
        ("peak_device_mib", "NVML device used memory, peak MiB (CUDA context and every process included)"),
        ("peak_saved_tensors_mib", "autograd saved tensors, peak MiB (one extra, untimed iteration)"),
    ),
    "cpu": (
        (
            "peak_saved_plus_snapshots_mib",
            "autograd saved tensors + the adjoint engine's parameter snapshots, peak MiB",
        ),
        ("peak_rss_mib", "process peak RSS MiB (ru_maxrss; imports and data included)"),
    ),
}
_SHORT = {
    "peak_alloc_mib": "peak allocated (torch.cuda), MiB",
    "peak_device_mib": "NVML device peak, MiB",
    "peak_saved_tensors_mib": "saved tensors, MiB",
    "peak_saved_plus_snapshots_mib": "saved tensors + snapshots, MiB",
    "peak_rss_mib": "peak RSS, MiB",
}


# -- loading and grouping ------------------------------------------------------------------
def load_csv(path: Path | str) -> pd.DataFrame:
    """Read a profile CSV written by the sweep (empty text cells become ``""``)."""
    frame = pd.read_csv(path)
    for column in ("status", "error", "measures", "missing", "device", "device_name", "method", "dataset"):
        if column in frame:
            frame[column] = ["" if pd.isna(value) else str(value) for value in frame[column]]
    return frame


def _device_type(device: Any) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def _groups(frame: pd.DataFrame, by_ipc: bool = True) -> list[tuple[tuple[str, int, int | None], pd.DataFrame]]:
    """Rows split by (device type, batch_syn[, ipc]), in order of appearance; rows get a ``_label``."""
    frame = frame.assign(
        _device_type=frame["device"].map(_device_type),
        _label=[
            f"{d} ({s}, ipc {int(i)})"
            for d, s, i in zip(frame["dataset"], frame["image_shape"], frame["ipc"], strict=True)
        ],
    )
    ipcs = frame["ipc"] if by_ipc else pd.Series([-1] * len(frame), index=frame.index)
    keys = list(dict.fromkeys(zip(frame["_device_type"], frame["batch_syn"], ipcs, strict=True)))
    out = []
    for dev, batch, ipc in keys:
        part = frame[(frame["_device_type"] == dev) & (frame["batch_syn"] == batch) & (ipcs == ipc)]
        out.append(((dev, int(batch), int(ipc) if by_ipc else None), part))
    return out


def _methods(frame: pd.DataFrame) -> list[str]:
    seen = list(dict.fromkeys(frame["method"]))
    return [m for m in _CANONICAL if m in seen] + [m for m in seen if m not in _CANONICAL]


def _group_suffix(key: tuple[str, int, int | None], several: bool) -> str:
    dev, batch, ipc = key
    if not several:
        return ""
    return f"_{dev}_b{batch}" + (f"_ipc{ipc}" if ipc is not None else "")


def _device_name(part: pd.DataFrame) -> str:
    names = [n for n in dict.fromkeys(part.get("device_name", pd.Series(dtype=str))) if n]
    return ", ".join(names) or str(part["device"].iloc[0])


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _present(part: pd.DataFrame, column: str) -> bool:
    return column in part and part[column].notna().any()


def table_steps_for(frame: pd.DataFrame, requested: int | None = None) -> int | None:
    """Steps of Table 5: ``requested``, else 50 if swept, else the largest count measured on every dataset."""
    if frame.empty:
        return None
    if requested is not None:
        return int(requested)
    steps = set(frame["steps"].astype(int))
    if PAPER_TABLE5_STEPS in steps:
        return PAPER_TABLE5_STEPS
    ok = frame[frame["status"] == "ok"]
    common = [set(p["steps"].astype(int)) for _, p in ok.groupby("dataset")]
    if common and set.intersection(*common):
        return max(set.intersection(*common))
    return max(steps)


# -- cells -------------------------------------------------------------------------------------
def _status_cell(row: pd.Series) -> str | None:
    status = row.get("status", "ok")
    if status == "oom":
        return "OOM"
    if status != "ok":
        return "failed"
    return None


def _memory_cell(row: pd.Series, column: str) -> str:
    marker = _status_cell(row)
    if marker:
        return marker
    if column == "peak_saved_plus_snapshots_mib":
        saved, snap = _num(row.get("peak_saved_tensors_mib")), _num(row.get("snapshot_mib")) or 0.0
        if saved is None:
            return "–"
        return f"{saved:.1f} + {snap:.1f} = {saved + snap:.1f}" if snap >= 0.05 else f"{saved:.1f}"
    value = _num(row.get(column))
    return "–" if value is None else f"{value:.1f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- Table 4 -------------------------------------------------------------------------------------
def table4_markdown(frame: pd.DataFrame) -> str:
    """Peak memory (MiB) by inner steps (rows) and method (columns), per dataset and measure."""
    blocks: list[str] = []
    for (dev, batch, ipc), part in _groups(frame):
        methods = _methods(part)
        for dataset, rows in part.groupby("dataset", sort=False):
            shape, classes = rows["image_shape"].iloc[0], _num(rows["num_classes"].iloc[0])  # None: no point ran
            blocks.append(
                f"### Table 4: {dataset} shape ({shape}, {'?' if classes is None else int(classes)} classes, "
                f"{rows['model'].iloc[0]}), batch_syn {batch}, ipc {ipc}, {_device_name(rows)}"
            )
            for column, description in MEMORY_MEASURES[dev]:
                check = "peak_saved_tensors_mib" if column == "peak_saved_plus_snapshots_mib" else column
                if not _present(rows, check):
                    continue
                table_rows = []
                for step in sorted(rows["steps"].astype(int).unique()):
                    cells = [str(step)]
                    for method in methods:
                        hit = rows[(rows["method"] == method) & (rows["steps"] == step)]
                        cells.append(_memory_cell(hit.iloc[-1], column) if len(hit) else "")
                    table_rows.append(cells)
                if rows["steps"].nunique() > 1:
                    table_rows.append(["max/min"] + [_growth(rows, m, column) for m in methods])
                blocks.append(f"{description}:\n\n" + _markdown_table(["steps", *methods], table_rows))
    return "\n\n".join(blocks)


def _growth(rows: pd.DataFrame, method: str, column: str) -> str:
    ok = rows[(rows["method"] == method) & (rows["status"] == "ok")]
    values = [v for v in (_num(x) for x in ok[column])] if column in ok else []
    values = [v for v in values if v is not None and v > 0]
    return f"{max(values) / min(values):.2f}x" if len(values) >= 2 else "–"


# -- Table 5 -------------------------------------------------------------------------------------
def table5_markdown(frame: pd.DataFrame, steps: int | None = None) -> str:
    """Memory and time per method at ``steps`` inner steps, per dataset, with the paper's ratios."""
    steps = table_steps_for(frame, steps)
    if steps is None:
        return ""
    blocks = []
    for (dev, batch, _), part in _groups(frame, by_ipc=False):
        at = part[part["steps"].astype(int) == steps]
        if at.empty:
            continue
        methods = _methods(part)
        column = MEMORY_MEASURES[dev][0][0]
        header = ["dataset (shape, ipc)"] + [f"{m} MiB" for m in methods] + [f"{m} s/it" for m in methods]
        ratios = [("mtt", "tesla", "mtt/tesla memory", True), ("tesla", "mtt", "tesla/mtt time", False)]
        ratios.append(("tesla-exact", "mtt", "tesla-exact/mtt time", False))
        ratios = [r for r in ratios if r[0] in methods and r[1] in methods]
        header += [r[2] for r in ratios]
        rows, split_rows, iterations, soft = [], [], [], []
        for label, drows in at.groupby("_label", sort=False):
            by_method = {m: drows[drows["method"] == m].iloc[-1] for m in methods if (drows["method"] == m).any()}
            cells = [str(label)]
            cells += [_memory_cell(by_method[m], column) if m in by_method else "" for m in methods]
            cells += [_time_cell(by_method.get(m)) for m in methods]
            for num, den, _, memory in ratios:
                key = column if memory else "step_time_s"
                cells.append(_ratio(by_method.get(num), by_method.get(den), key))
            rows.append(cells)
            split_rows.append([cells[0]] + [_split_cell(by_method.get(m)) for m in methods])
            counts = "/".join(str(int(i)) for i in dict.fromkeys(drows["iterations"]))
            iterations.append(f"{drows['dataset'].iloc[0]} {counts}")
            soft += [
                f"{m} {r['labels']} on {drows['dataset'].iloc[0]}"
                for m, r in by_method.items()
                if str(r.get("labels", "hard")) not in ("hard", "", "nan")
            ]
        blocks.append(
            f"### Table 5: {steps} inner steps, batch_syn {batch}, {_device_name(at)}\n\n"
            f"Memory: {MEMORY_MEASURES[dev][0][1]}. Time: mean seconds per outer iteration over the "
            f"measured iterations ({', '.join(iterations)}; warm-up excluded). Labels: "
            f"{'; '.join(soft) + ', hard elsewhere' if soft else 'hard'} (each method's config card).\n\n"
            + _markdown_table(header, rows)
            + "\n\nTime split, s per iteration: gradient engine (inner steps + gradient pass) / the rest "
            "(expert segment, SLA soft labels, optimiser step, guards):\n\n"
            + _markdown_table(["dataset (shape, ipc)", *methods], split_rows)
        )
    return "\n\n".join(blocks)


def _split_cell(row: pd.Series | None) -> str:
    if row is None:
        return ""
    engine, other = _num(row.get("engine_time_s")), _num(row.get("other_time_s"))
    marker = _status_cell(row)
    return marker or ("–" if engine is None or other is None else f"{engine:.3g} / {other:.3g}")


def _time_cell(row: pd.Series | None) -> str:
    if row is None:
        return ""
    marker = _status_cell(row)
    value = _num(row.get("step_time_s"))
    return marker or ("–" if value is None else f"{value:.3g}")


def _ratio(num: pd.Series | None, den: pd.Series | None, column: str) -> str:
    if num is None or den is None:
        return ""
    marker = _status_cell(num) or _status_cell(den)
    if marker:
        return marker
    a, b = _num(num.get(column)), _num(den.get(column))
    return "–" if a is None or not b else f"{a / b:.2f}x"


# -- figures -------------------------------------------------------------------------------------
def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _value(row: pd.Series, column: str) -> float | None:
    return _num(row.get(column))


#: One marker and line style per method (in plot order), so overlapping constant-memory lines stay apart.
_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"))


def _spread(rows: pd.DataFrame) -> list[list[float]] | None:
    """Error-bar lengths (below, above) of the mean step time from the measured iterations' min and max."""
    if not {"step_time_min_s", "step_time_max_s"} <= set(rows.columns):
        return None
    mean, low, high = (rows[c].astype(float) for c in ("step_time_s", "step_time_min_s", "step_time_max_s"))
    return [list((mean - low).clip(lower=0).fillna(0)), list((high - mean).clip(lower=0).fillna(0))]


def _mark_failures(ax: Any, rows: pd.DataFrame, method: str, color: str, y: float) -> bool:
    """Mark the method's out-of-memory / failed points at height ``y``; True if there were any."""
    bad = rows[rows["status"] != "ok"]
    for _, row in bad.iterrows():
        text = "OOM" if row["status"] == "oom" else "failed"
        ax.plot([row["steps"]], [y], marker="x", markersize=9, mew=2.5, color=color, linestyle="")
        ax.annotate(
            f"{method} {text}", (row["steps"], y), textcoords="offset points", xytext=(-6, 0), ha="right",
            va="center", fontsize=7, color=color,
        )  # fmt: skip
    return not bad.empty


def figure2(frame: pd.DataFrame, output: Path | str, log_y: bool = True) -> list[Path]:
    """Memory and time vs inner steps, a line per method: one PNG per dataset shape.

    Left: the primary memory measure (log scale by default, so constant-memory lines are not
    flattened against the linear growth of unrolling); out-of-memory / failed points are marked ``x``.
    Right: seconds per iteration, the mean with the min-max range of the measured iterations.
    Every method has its own marker and line style; steps are integer ticks.
    """
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    output = Path(output)
    groups = _groups(frame)
    paths = []
    for key, part in groups:
        dev, batch, ipc = key
        column, description = MEMORY_MEASURES[dev][0]
        for dataset, rows in part.groupby("dataset", sort=False):
            if rows["steps"].nunique() < 2:
                continue  # a single step count: Table 5 / Figure 3 show it
            fig = Figure(figsize=(11, 4.6), layout="constrained")
            mem_ax, time_ax = fig.subplots(1, 2)
            ok_values = [v for v in (_value(r, column) for _, r in rows.iterrows()) if v]
            top = max(ok_values) * 1.08 if ok_values else 1.0
            any_bad = False
            for index, method in enumerate(_methods(rows)):
                mrows = rows[rows["method"] == method].sort_values("steps")
                color, style = f"C{index}", _STYLES[index % len(_STYLES)]
                ok = mrows[(mrows["status"] == "ok") & mrows[column].notna()] if column in mrows else mrows.iloc[:0]
                common = {"marker": style[0], "linestyle": style[1], "color": color, "markersize": 6}
                mem_ax.plot(ok["steps"], ok[column], label=method, mfc="none" if index % 2 else color, **common)
                if not ok.empty and "step_time_s" in ok:
                    time_ax.errorbar(
                        ok["steps"], ok["step_time_s"], yerr=_spread(ok), capsize=3, label=method,
                        mfc="none" if index % 2 else color, **common,
                    )  # fmt: skip
                y = top * (1.25 ** (index + 1) if log_y else 1 + 0.06 * index)
                any_bad = _mark_failures(mem_ax, mrows, method, color, y) or any_bad
            if any_bad:
                mem_ax.plot([], [], marker="x", mew=2.5, color="grey", linestyle="", label="out of memory / failed")
            if log_y and ok_values:
                mem_ax.set_yscale("log")
                mem_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
                mem_ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                mem_ax.yaxis.set_minor_formatter(NullFormatter())
            else:
                mem_ax.set_ylim(bottom=0, top=top * (1.3 if any_bad else 1.05))
            for ax in (mem_ax, time_ax):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel("inner matching steps T (syn_steps)")
                ax.grid(alpha=0.3, which="both")
                ax.legend(fontsize=8)
            mem_ax.set_ylabel(_SHORT.get(column, column) + (" (log scale)" if log_y else ""))
            time_ax.set_ylabel("seconds per iteration (mean; bars: min-max)")
            time_ax.set_ylim(bottom=0)
            fig.suptitle(
                f"Peak memory and time vs steps: {dataset} shape {rows['image_shape'].iloc[0]}, "
                f"batch_syn {batch}, ipc {ipc}; {_device_name(rows)}\nmemory = {description}",
                fontsize=9,
            )
            name = f"figure2_{dataset}{_group_suffix(key, len(groups) > 1)}.png"
            paths.append(_save(fig, output / name))
    return paths


def figure3(frame: pd.DataFrame, output: Path | str, steps: int | None = None) -> list[Path]:
    """Memory and time bars per dataset shape and method at ``steps`` (one PNG per device/batch/ipc)."""
    output = Path(output)
    steps = table_steps_for(frame, steps)
    groups = _groups(frame, by_ipc=False)
    paths = []
    for key, part in groups:
        dev, batch, _ = key
        at = part[part["steps"].astype(int) == steps] if steps is not None else part.iloc[:0]
        if at.empty:
            continue
        column, description = MEMORY_MEASURES[dev][0]
        datasets = list(dict.fromkeys(at["_label"]))
        methods = _methods(at)
        width = 0.8 / max(len(methods), 1)
        fig = Figure(figsize=(max(7.0, 2.5 * len(datasets) + 3), 4.6), layout="constrained")
        axes = fig.subplots(1, 2)
        panels = (
            (axes[0], column, _SHORT.get(column, column)),
            (axes[1], "step_time_s", "time per iteration, s"),
        )
        for ax, measure, label in panels:
            for index, method in enumerate(methods):
                xs, heights, marks = [], [], []
                for d, dataset in enumerate(datasets):
                    hit = at[(at["_label"] == dataset) & (at["method"] == method)]
                    if hit.empty:
                        continue
                    row = hit.iloc[-1]
                    xs.append(d + (index - (len(methods) - 1) / 2) * width)
                    heights.append(_value(row, measure) or 0.0 if row["status"] == "ok" else 0.0)
                    marks.append(_status_cell(row))
                ax.bar(xs, heights, width=width, color=f"C{index}", label=method)
                for x, mark in zip(xs, marks, strict=True):
                    if mark:
                        ax.text(x, 0, mark, rotation=90, ha="center", va="bottom", fontsize=8, color=f"C{index}")
            ax.set_xticks(range(len(datasets)))
            ax.set_xticklabels([label.replace(" (", "\n(") for label in datasets])
            ax.set_ylabel(label)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(
            f"Memory and time at {steps} steps, batch_syn {batch}: {_device_name(at)}\nmemory = {description}",
            fontsize=9,
        )
        paths.append(_save(fig, output / f"figure3{_group_suffix(key, len(groups) > 1)}.png"))
    return paths


# -- Markdown report -----------------------------------------------------------------------------
_MEASURE_DOC = """\
Measures (units in the names):

- `peak_alloc_mib` / `peak_reserved_mib`: `torch.cuda.max_memory_allocated` / `max_memory_reserved`
  over the measured iterations (`reset_peak_memory_stats` after warm-up). GPU points only.
- `peak_device_mib` / `peak_process_mib`: NVML's device used memory / this process's GPU memory,
  sampled every 5 ms (a lower bound of the true peak; the device figure includes the CUDA context).
- `peak_saved_tensors_mib`: bytes autograd holds in saved tensors (deterministic, device-free; see
  `dcbench_tesla/profiling/saved_tensors.py`). `snapshot_mib`: the parameter snapshots the adjoint
  engine (tesla-exact) keeps outside autograd, `(T + 1) P` floats. One of them is also held by the
  graph, so `saved + snapshots` over-counts by one parameter vector.
- `peak_rss_mib`: the point process's peak resident set size (`ru_maxrss`), imports and data included;
  `peak_rss_before_steps_mib`: the same just before the measured iterations (after reset and warm-up).
- `step_time_s`: mean seconds per measured iteration (CUDA-synchronised on GPU); `engine_time_s`: the
  gradient engine's share (inner steps + gradient pass); `other_time_s`: the rest (expert segment,
  SLA soft labels, optimiser step, guards). On CPU the times include the saved-tensor meter's hooks.
"""


def markdown_report(
    frame: pd.DataFrame,
    provenance: dict[str, Any] | None = None,
    *,
    table_steps: int | None = None,
    figures: Sequence[Path] = (),
) -> str:
    """The Markdown report: provenance header, measure definitions, Tables 4 and 5, figures, failures."""
    prov = provenance or {}
    lines = ["# Trajectory-matching profile: peak memory and time vs inner steps", ""]
    lines += [f"> {prov.get('note', RANDOM_STANDIN_NOTE)}", ""]
    if prov:
        versions = prov.get("versions", {})
        nvml = prov.get("nvml") or {}
        nvml_text = (
            f"{nvml.get('device_name')}, driver {nvml.get('driver_version')}, "
            f"CUDA driver {nvml.get('cuda_driver_version')}"
            if nvml.get("available")
            else f"unavailable ({nvml.get('reason')})"
        )
        if nvml.get("used") is False:
            nvml_text += f"; not used: {nvml.get('why_unused')}"
        lines += [
            f"- Command: `{prov.get('command', '')}`",
            f"- Created (UTC): {prov.get('created_utc', '')}; git {prov.get('git_revision', 'unknown')}",
            f"- Device: {prov.get('device_name') or prov.get('device')}; NVML: {nvml_text}",
            f"- Threads (torch.get_num_threads in the points): {prov.get('threads')}",
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- Settings: `{json.dumps(prov.get('settings', {}), sort_keys=True)}`",
            f"- Points: {prov.get('statuses', {})}",
            "",
        ]
    lines += [_MEASURE_DOC, "## Table 4: peak memory vs inner steps", "", table4_markdown(frame), ""]
    table5 = table5_markdown(frame, table_steps)
    if table5:
        lines += ["## Table 5: memory and time per method", "", table5, ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    bad = frame[frame["status"] != "ok"]
    if not bad.empty:
        lines += ["## Points that did not complete", ""]
        for _, row in bad.iterrows():
            lines.append(f"- {row['method']} {row['dataset']} steps={row['steps']}: {row['status']}: {row['error']}")
        lines.append("")
    return "\n".join(lines)


def write_reports(
    frame: pd.DataFrame,
    output: Path | str,
    provenance: dict[str, Any] | None = None,
    *,
    table_steps: int | None = None,
    log_y: bool = True,
) -> dict[str, Any]:
    """Write Figure 2 (per dataset), Figure 3 and ``profile.md`` into ``output``; return their paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    steps = table_steps_for(frame, table_steps)
    figures = figure2(frame, output, log_y=log_y) + figure3(frame, output, steps)
    markdown = markdown_report(frame, provenance, table_steps=steps, figures=figures)
    write_text_atomic(output / MARKDOWN_NAME, markdown)
    return {"markdown": output / MARKDOWN_NAME, "figures": figures}
