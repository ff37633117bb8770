r"""Score candidate settings of one method on the validation split over several seeds, side by side.

``dcbench tune`` scores each trial once (one seed); to choose between a few finished candidates (a
card and a study's best, say) this runs every candidate with every seed as a normal run scored on
validation, as a tune trial is (``eval_split="val"``, no random baseline, the test split never read),
and writes a table of validation accuracy per candidate: the mean over seeds, each seed's mean over
its evaluation models, and the run's phase time. Run directories go under ``--work``; ``--reuse`` reads
back the finished ones there (for candidates that have not changed) instead of running them again.

Usage::

    python benchmarks/cards_on_validation.py --method tesla --dataset digits --ipc 1 --seeds 0,1,2 \
        --candidate "card=" --candidate "study=iterations=200,num_experts=5" --num-eval 5 --threads 1 \
        --output reports/tunes/tesla-ipc1-candidates.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from dcbench_tesla.files import write_text_atomic
from dcbench_tesla.run.request import RunRequest
from dcbench_tesla.run.runner import run


def candidate(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=KEY=VALUE,KEY=VALUE`` (``NAME=`` for the card as it is) -> name and option overrides."""
    name, _, options = text.partition("=")
    pairs = [item.split("=", 1) for item in options.split(",") if item]
    return name, {key: value for key, value in pairs}


def _flag(text: str) -> bool:
    """``true``/``false`` (any case) as a bool."""
    if text.lower() not in ("true", "false"):
        raise SystemExit(f"zca must be true or false, got {text!r}")
    return text.lower() == "true"


def score(args: argparse.Namespace, name: str, options: dict[str, str], seed: int) -> dict[str, Any]:
    """One run of a candidate with one seed, scored on validation (``zca=true|false`` sets the preprocessing)."""
    options = dict(options)
    zca = options.pop("zca", None)
    request = RunRequest(
        method=args.method,
        dataset=args.dataset,
        ipc=args.ipc,
        seed=seed,
        output=Path(args.work) / f"{name}-seed{seed}",
        overwrite=True,
        options=options,
        zca=None if zca is None else _flag(zca),
        num_eval_models=args.num_eval,
        baseline=False,
        real=False,
        threads=args.threads,
        progress=False,
        eval_split="val",
        yes=True,  # a candidate may cost more than the dataset's cards: that is what is being weighed
    )
    finished = request.output / "result.json"
    if args.reuse and finished.is_file():
        record = json.loads(finished.read_text(encoding="utf-8"))
    else:
        record = run(request)
    model, result = next(iter(record["evaluation"]["by_model"].items()))  # the dataset's first evaluation model
    return {"model": model, "val_acc": result["mean"], "wall_s": sum(record["provenance"]["phase_seconds"].values())}


def report(args: argparse.Namespace, rows: dict[str, list[dict[str, Any]]], candidates: dict[str, dict]) -> str:
    """The Markdown table."""
    model = next(iter(rows.values()))[0]["model"]
    lines = [
        f"# {args.method} on {args.dataset}, IPC {args.ipc}: candidates scored on the validation split",
        "",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} torch thread(s). Each cell: the mean validation accuracy of {args.num_eval} {model} models "
        "trained on the set one seed distils; the test split is not read. Run time: the mean of the runs' phase "
        "times (load, set-up, distillation, evaluation); a candidate's first run also trains its experts when the "
        "cache lacks them.",
        "",
        "| candidate | options | " + " | ".join(f"seed {s}" for s in args.seed_list) + " | mean | run time (s) |",
        "|---|---|" + "---:|" * (len(args.seed_list) + 2),
    ]
    for name, results in rows.items():
        accs = [100 * r["val_acc"] for r in results]
        options = ", ".join(f"{k}={v}" for k, v in candidates[name].items()) or "the card as it is"
        cells = " | ".join(f"{a:.2f}" for a in accs)
        wall = statistics.mean(r["wall_s"] for r in results)
        lines.append(f"| {name} | {options} | {cells} | {statistics.mean(accs):.2f} | {wall:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every candidate with every seed, interleaved by seed, and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--candidate", action="append", required=True, help="NAME=KEY=VALUE,... (NAME= the card; zca=true|false too)"
    )
    parser.add_argument("--num-eval", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/cards-on-validation")
    parser.add_argument("--output", required=True)
    parser.add_argument("--reuse", action="store_true", help="read back candidates' finished runs in --work")
    args = parser.parse_args()
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    candidates = dict(candidate(text) for text in args.candidate)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in candidates}
    for seed in args.seed_list:
        for name, options in candidates.items():
            rows[name].append(score(args, name, options, seed))
            print(f"{name} seed {seed}: {rows[name][-1]}", flush=True)
    text = report(args, rows, candidates)
    write_text_atomic(Path(args.output), text)
    print(text)


if __name__ == "__main__":
    main()
