"""Tables of a bench directory: tidy ``results.csv`` and the layouts of the paper's Tables 1 and 2.

Everything here is read back from ``bench.json`` and the cells' ``result.json`` files, so
the tables can be rebuilt at any time from a (possibly unfinished) bench directory.

- ``results.csv``: one row per method x dataset x IPC x evaluation model.
- ``table1.md`` / ``table1.csv``: rows dataset x IPC, columns the baseline method (the random
  real subset), the methods and "whole dataset"; cells "mean ± std" (%) on the first evaluation
  model.
- ``table2.md`` / ``table2.csv`` (more than one evaluation model): rows method at one IPC,
  columns evaluation architectures.
- ``ranking.md`` / ``ranking.csv``: per IPC, the methods ranked by DDRS (DD-Ranking's label-robust
  score, see :mod:`dcbench_tesla.scores`) beside their accuracy, HLR and IOR, on the first
  evaluation model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from dcbench_tesla.errors import UserError
from dcbench_tesla.files import write_text_atomic
from dcbench_tesla.run.rundir import RunDir

WHOLE_DATASET = "whole-dataset"
DERIVED_FILES = ("results.csv", "table1.md", "table1.csv", "table2.md", "table2.csv", "ranking.md", "ranking.csv")
MISSING = "–"

RESULT_COLUMNS = [
    "dataset",
    "ipc",
    "method",
    "eval_model",
    "mean_pct",
    "std_pct",
    "n_models",
    "baseline_mean_pct",
    "baseline_std_pct",
    "reference_pct",
    "syn_hard_pct",
    "rdm_same_rule_pct",
    "same_rule_labels",
    "real_hard_pct",
    "hlr_pts",
    "ior_pts",
    "ddrs",
    "eval_lr",
    "protocol",
    "epochs",
    "iterations",
    "seed",
    "run_dir",
]


def read_manifest(bench_dir: Path | str) -> dict[str, Any]:
    """The bench's ``bench.json`` (its request and cells)."""
    try:
        manifest = json.loads((Path(bench_dir) / "bench.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        raise UserError(f"{bench_dir} has no readable bench.json: it is not a bench directory")
    return manifest


def read_records(bench_dir: Path | str) -> dict[str, dict[str, Any]]:
    """``result.json`` of every finished cell, by cell name (unfinished cells are absent)."""
    bench_dir = Path(bench_dir)
    records = {}
    for cell in read_manifest(bench_dir)["cells"]:
        record = RunDir(bench_dir / cell["dir"]).read_result()
        if record is not None:
            records[cell["name"]] = record
    return records


def baseline_of(manifest: dict[str, Any]) -> str:
    """The id of the bench's baseline method (recorded in ``bench.json``; else the registry's)."""
    if manifest.get("baseline_method"):
        return str(manifest["baseline_method"])
    from dcbench_tesla.method import baseline_method

    return baseline_method()


def _pct(value: float | None) -> float:
    return math.nan if value is None else 100.0 * float(value)


def results_frame(bench_dir: Path | str) -> pd.DataFrame:
    """Tidy results: one row per finished cell x evaluation model (accuracies in %)."""
    bench_dir = Path(bench_dir)
    manifest = read_manifest(bench_dir)
    records = read_records(bench_dir)
    default_model = manifest["request"]["eval_models"][0]
    rows = []
    for cell in manifest["cells"]:
        record = records.get(cell["name"])
        if record is None:
            continue
        whole = cell["name"] == WHOLE_DATASET
        evaluation = record["whole_dataset"] if whole else record["evaluation"]
        baseline = None if whole else record.get("baseline")
        same_rule = None if whole else record.get("baseline_same_rule")
        for model, result in evaluation["by_model"].items():
            base = (baseline or {}).get("by_model", {}).get(model)
            reference = record.get("reference_accuracy") if not whole and model == default_model else None
            scores = {} if whole else (record.get("scores") or {}).get(model, {})
            rows.append(
                {
                    "dataset": record["dataset"],
                    "ipc": None if whole else record["ipc"],
                    "method": WHOLE_DATASET if whole else record["method"]["id"],
                    "eval_model": model,
                    "mean_pct": _pct(result["mean"]),
                    "std_pct": _pct(result["std"]),
                    "n_models": len(result["accuracies"]),
                    "baseline_mean_pct": _pct(base["mean"]) if base else math.nan,
                    "baseline_std_pct": _pct(base["std"]) if base else math.nan,
                    "reference_pct": math.nan if reference is None else float(reference),
                    "syn_hard_pct": _pct(scores.get("acc_syn_hard")),
                    "rdm_same_rule_pct": _pct(scores.get("acc_rdm_same_rule")),
                    "same_rule_labels": (same_rule or {}).get("label_rule"),
                    "real_hard_pct": _pct(scores.get("acc_real_hard")),
                    "hlr_pts": _pct(scores.get("hlr")),
                    "ior_pts": _pct(scores.get("ior")),
                    "ddrs": math.nan if scores.get("ddrs") is None else float(scores["ddrs"]),
                    "eval_lr": result["lr"],
                    "protocol": evaluation["protocol"]["name"],
                    "epochs": evaluation["protocol"]["epochs"],
                    "iterations": None if whole else record["iterations"],
                    "seed": record["seed"],
                    "run_dir": cell["dir"],
                }
            )
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame["ipc"] = frame["ipc"].astype("Int64")
    frame["iterations"] = frame["iterations"].astype("Int64")
    return frame


def _entry(hits: pd.DataFrame, markdown: bool, baseline: bool = False) -> str:
    """``"mean ± std"`` of the first row of ``hits`` (its baseline if asked), linked to its run."""
    if hits.empty:
        return MISSING
    row = hits.iloc[0]
    mean, std = (row.baseline_mean_pct, row.baseline_std_pct) if baseline else (row.mean_pct, row.std_pct)
    text = f"{mean:.1f} ± {std:.1f}"
    return f"[{text}]({row.run_dir}/)" if markdown else text


def _distinct(values: list[str]) -> str:
    unique = list(dict.fromkeys(v for v in values if v))
    return "; ".join(unique) if unique else "unknown"


def provenance_lines(records: dict[str, dict[str, Any]], manifest: dict[str, Any]) -> list[str]:
    """Markdown bullet lines: command, versions, device, threads and git revision of the cells."""
    provs = [r.get("provenance") or {} for r in records.values()]
    versions = [", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items()) for p in provs]
    commands = [f"`{p['command']}`" for p in provs if p.get("command")] or [f"`{manifest.get('command', '')}`"]
    protocol = manifest["request"]["protocol"]
    return [
        f"- command: {_distinct(commands)}",
        f"- versions: {_distinct(versions)}",
        f"- device: {_distinct([str(p.get('device', '')) for p in provs])}",
        f"- threads: {_distinct([str(p.get('threads', '')) for p in provs])}",
        f"- git revision: {_distinct([str(p.get('git_revision', '')) for p in provs])}",
        f"- protocol: {protocol['name']}, {protocol['num_models']} model(s) x {protocol['epochs']} epochs "
        "per architecture; mean ± std (population) of the final test accuracy in %, never selected on test",
        f"- seed: {manifest['request']['seed']}; request: [bench.json](bench.json); "
        "tidy results: [results.csv](results.csv)",
    ]


def _table1(frame: pd.DataFrame, manifest: dict[str, Any], markdown: bool) -> tuple[pd.DataFrame, list[str]]:
    """Table 1 layout on the first evaluation model, and its footnotes.

    The baseline column is the baseline method's cell when the bench has one, else the random
    real subset evaluated beside the first method that has a baseline.
    """
    request = manifest["request"]
    baseline = baseline_of(manifest)
    on_model = frame[frame["eval_model"] == request["eval_models"][0]]
    methods = [m for m in request["methods"] if m != baseline]
    notes: list[str] = []
    rows = []
    for ipc in request["ipcs"]:
        row: dict[str, str] = {"Dataset": request["dataset"], "IPC": str(ipc)}
        at_ipc = on_model[on_model["ipc"] == ipc]
        if baseline in request["methods"]:
            row[baseline] = _entry(at_ipc[at_ipc["method"] == baseline], markdown)
        else:
            with_base = at_ipc.dropna(subset=["baseline_mean_pct"])
            beside = next((m for m in methods if m in set(with_base["method"])), None)
            row[baseline] = _entry(with_base[with_base["method"] == beside], markdown, baseline=True)
            if beside is not None:
                notes.append(
                    f"{baseline} at IPC {ipc}: the real subset evaluated beside {beside} (its protocol and lr)"
                )
        for method in methods:
            row[method] = _entry(at_ipc[at_ipc["method"] == method], markdown)
        if request.get("whole_dataset"):
            row["whole dataset"] = _entry(on_model[on_model["method"] == WHOLE_DATASET], markdown)
        rows.append(row)
    return pd.DataFrame(rows), notes


def _reference_table(frame: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame | None:
    """The paper's numbers (from the method specs) in the Table 1 layout, or None if there are none."""
    request = manifest["request"]
    on_model = frame[frame["eval_model"] == request["eval_models"][0]]
    if on_model["reference_pct"].isna().all():
        return None
    baseline = baseline_of(manifest)
    columns = [m for m in request["methods"] if m == baseline] + [m for m in request["methods"] if m != baseline]
    rows = []
    for ipc in request["ipcs"]:
        row = {"Dataset": request["dataset"], "IPC": str(ipc)}
        for method in columns:
            hit = on_model[(on_model["ipc"] == ipc) & (on_model["method"] == method)].reference_pct.dropna()
            row[method] = MISSING if hit.empty else f"{hit.iloc[0]:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _table2(frame: pd.DataFrame, manifest: dict[str, Any], markdown: bool) -> pd.DataFrame:
    """Cross-architecture layout: rows method at one IPC, columns evaluation architectures."""
    request = manifest["request"]
    rows = []
    for method in [*request["methods"], WHOLE_DATASET]:
        for ipc in [None] if method == WHOLE_DATASET else request["ipcs"]:
            hits = frame[frame["method"] == method]
            hits = hits[hits["ipc"].isna()] if ipc is None else hits[hits["ipc"] == ipc]
            if hits.empty and (method == WHOLE_DATASET or f"{method}-ipc{ipc}" in request.get("exclude", [])):
                continue
            row = {
                "Method": "whole dataset" if method == WHOLE_DATASET else method,
                "IPC": MISSING if ipc is None else str(ipc),
            }
            for model in request["eval_models"]:
                row[model] = _entry(hits[hits["eval_model"] == model], markdown)
            rows.append(row)
    return pd.DataFrame(rows)


def _ranking(frame: pd.DataFrame, manifest: dict[str, Any], markdown: bool) -> pd.DataFrame:
    """Per IPC, the methods on the first evaluation model ranked by DDRS (unscored ones last)."""
    request = manifest["request"]
    on_model = frame[(frame["eval_model"] == request["eval_models"][0]) & (frame["method"] != WHOLE_DATASET)]
    rows = []

    def num(value: float, digits: int = 1) -> str:
        return MISSING if pd.isna(value) else f"{value:.{digits}f}"

    for ipc in request["ipcs"]:
        at_ipc = on_model[on_model["ipc"] == ipc].sort_values("ddrs", ascending=False, na_position="last")
        for rank, row in enumerate(at_ipc.itertuples(index=False), start=1):
            accuracy = _entry(at_ipc[at_ipc["method"] == row.method], markdown)
            same_rule = num(row.rdm_same_rule_pct)
            rows.append(
                {
                    "IPC": str(ipc),
                    "Rank": str(rank) if not pd.isna(row.ddrs) else MISSING,
                    "Method": row.method,
                    "DDRS": num(row.ddrs, 3),
                    "Accuracy": accuracy,
                    "Hard labels": num(row.syn_hard_pct),
                    "Random, same rule": f"{same_rule} ({row.same_rule_labels})" if row.same_rule_labels else same_rule,
                    "Whole dataset": num(row.real_hard_pct),
                    "HLR (pts)": num(row.hlr_pts),
                    "IOR (pts)": num(row.ior_pts),
                }
            )
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_tables(bench_dir: Path | str) -> list[Path]:
    """Write ``results.csv``, ``table1.{md,csv}`` and (several eval models) ``table2.{md,csv}``.

    Returns:
        The paths written.
    """
    bench_dir = Path(bench_dir)
    manifest = read_manifest(bench_dir)
    records = read_records(bench_dir)
    request = manifest["request"]
    frame = results_frame(bench_dir)
    written = [bench_dir / "results.csv"]
    write_text_atomic(written[0], frame.to_csv(index=False))
    provenance = provenance_lines(records, manifest)
    missing = [c["name"] for c in manifest["cells"] if c["name"] not in records]
    unfinished = [f"\n**Unfinished cells** (shown as {MISSING}): {', '.join(missing)}."] if missing else []

    table1, notes = _table1(frame, manifest, markdown=True)
    model = request["eval_models"][0]
    lines = [
        f"# Table 1: test accuracy (%) on {request['dataset']}, evaluated on {model}",
        "",
        *provenance,
        *unfinished,
        "",
    ]
    lines += [markdown_table(table1), ""]
    lines += ["Each number links to the run directory it comes from."] + [f"- {n}" for n in notes]
    reference = _reference_table(frame, manifest)
    if reference is not None:
        lines += ["", "## The papers' numbers (%), for comparison", "", markdown_table(reference)]
    write_text_atomic(bench_dir / "table1.md", "\n".join(lines) + "\n")
    write_text_atomic(bench_dir / "table1.csv", _table1(frame, manifest, markdown=False)[0].to_csv(index=False))
    written += [bench_dir / "table1.md", bench_dir / "table1.csv"]

    ranking = _ranking(frame, manifest, markdown=True)
    weight = request.get("ddrs_weight", 0.5)
    lines = [
        f"# Ranking by DDRS on {request['dataset']}, evaluated on {model}",
        "",
        *provenance,
        *unfinished,
        "",
        markdown_table(ranking),
        "",
        "Accuracies in %, HLR and IOR in percentage points. Hard labels: the same images trained with the argmax "
        "of their labels. Random, same rule: the random real subset of the same IPC labelled by the set's own rule "
        "(soft: the same teacher's soft labels). Whole dataset: the whole training pool, hard labels, cached.",
        f"HLR = whole - hard labels; IOR = accuracy - random (same rule); DDRS = (e^a - e^-1) / (e - e^-1) with "
        f"a = w IOR - (1 - w) HLR, w = {weight:g} (DD-Ranking, Li et al. 2025). Higher DDRS ranks first.",
    ]
    write_text_atomic(bench_dir / "ranking.md", "\n".join(lines) + "\n")
    write_text_atomic(bench_dir / "ranking.csv", _ranking(frame, manifest, markdown=False).to_csv(index=False))
    written += [bench_dir / "ranking.md", bench_dir / "ranking.csv"]

    if len(request["eval_models"]) > 1:
        table2 = _table2(frame, manifest, markdown=True)
        lines = [
            f"# Table 2: cross-architecture test accuracy (%) on {request['dataset']}",
            "",
            *provenance,
            *unfinished,
            "",
        ]
        lines += [
            markdown_table(table2),
            "",
            "Rows: the synthetic set of a method at one IPC; columns: the architecture trained on it.",
        ]
        write_text_atomic(bench_dir / "table2.md", "\n".join(lines) + "\n")
        write_text_atomic(bench_dir / "table2.csv", _table2(frame, manifest, markdown=False).to_csv(index=False))
        written += [bench_dir / "table2.md", bench_dir / "table2.csv"]
    return written
