"""``dcbench bench``: every (method, IPC) cell as a normal run, resumably, and the paper's tables."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dcbench_tesla.cli.common import (
    ITERATIONS,
    MAX_SEED,
    PATH,
    SEED,
    command,
    data_root_option,
    device_option,
    evaluation_options,
    executor_from_flags,
    executor_options,
    fair_evaluation_options,
    image_size_option,
    parse_ints,
    parse_list,
    parse_set,
    progress_option,
    threads_option,
    yes_option,
)
from dcbench_tesla.data import DEFAULT_DATASET
from dcbench_tesla.errors import UserError

if TYPE_CHECKING:
    from dcbench_tesla.run.bench import BenchRequest


def default_output(preset: str | None, dataset: str, methods: list[str], ipcs: list[int]) -> Path:
    """``benches/<preset>`` or ``benches/<dataset>-<methods>-ipc<ipcs>``."""
    if preset:
        return Path("benches") / Path(preset).stem
    return Path("benches") / f"{dataset}-{'_'.join(methods)}-ipc{'_'.join(map(str, ipcs))}"


def request_from_flags(kw: dict[str, Any]) -> BenchRequest:
    """Merge ``--preset`` (lowest) and explicit flags into a :class:`~dcbench_tesla.run.bench.BenchRequest`."""
    from dcbench_tesla.run.bench import BenchRequest
    from dcbench_tesla.run.presets import load_preset

    preset = load_preset(kw["preset"]) if kw["preset"] else {}

    def pick(flag_value: Any, key: str, default: Any = None) -> Any:
        return flag_value if flag_value is not None else preset.get(key, default)

    methods = pick(parse_list(kw["methods"], "--methods"), "methods")
    ipcs = pick(parse_ints(kw["ipc"], "--ipc"), "ipcs")
    if not methods:
        raise UserError("--methods is required (or a --preset that names them), e.g. --methods random,dm,mtt,tesla")
    if not ipcs:
        raise UserError("--ipc is required (or a --preset that names them), e.g. --ipc 1,10,50")
    dataset = pick(kw["dataset"], "dataset", DEFAULT_DATASET)
    methods = [str(m) for m in methods]
    return BenchRequest(
        methods=methods,
        dataset=dataset,
        ipcs=list(ipcs),
        output=kw["output"] or default_output(kw["preset"], dataset, methods, list(ipcs)),
        eval_models=pick(parse_list(kw["eval_models"], "--eval-models"), "eval_models"),
        num_eval_models=pick(kw["num_eval"], "num_eval"),
        eval_epochs=pick(kw["eval_epochs"], "eval_epochs"),
        protocol=pick(kw["protocol"], "protocol"),
        iterations=pick(kw["iterations"], "iterations"),
        options={**preset.get("set", {}), **parse_set(kw["set_pairs"], scoped=True)},
        whole_dataset=bool(pick(kw["whole_dataset"], "whole_dataset", False)),
        exclude=pick(parse_list(kw["exclude"], "--exclude"), "exclude", []),
        seed=pick(kw["seed"], "seed", 0),
        overwrite=kw["overwrite"],
        data_root=kw["data_root"],
        image_size=kw.get("image_size"),
        device=kw["device"],
        threads=kw["threads"],
        progress=not kw["no_progress"],
        yes=bool(kw.get("yes")),
        real=kw["real"],
        ddrs_weight=kw["ddrs_weight"],
    )


@command("bench")
@click.option("--preset", default=None, help="Preset name (see below) or a TOML file; flags override it.")
@click.option("--methods", default=None, help="Comma-separated method ids, e.g. random,dm,mtt,tesla.")
@click.option("--dataset", default=None, help=f"Dataset (see 'dcbench ls datasets') [{DEFAULT_DATASET}].")
@click.option("--ipc", default=None, help="Comma-separated images-per-class values, e.g. 1,10,50.")
@evaluation_options
@click.option("--iterations", type=ITERATIONS, default=None, help="Outer iterations of every method that optimises.")
@click.option(
    "--set",
    "set_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option for every method that has it, or METHOD.KEY=VALUE for one.",
)
@click.option("--exclude", default=None, help="Comma-separated cells to leave out, e.g. dm-ipc50.")
@click.option(
    "--whole-dataset/--no-whole-dataset", default=None, help="Also evaluate the whole training set (upper bound)."
)
@fair_evaluation_options
@click.option("--seed", type=SEED, default=None, help=f"Seed of every run (0..{MAX_SEED}) [0].")
@data_root_option
@image_size_option
@device_option
@threads_option
@click.option(
    "--output",
    type=PATH,
    default=None,
    help="Bench directory; run the same command again to resume "
    "[benches/<preset> or benches/<dataset>-<methods>-ipc<ipcs>].",
)
@click.option("--overwrite", is_flag=True, help="Discard the results in --output and compute every cell again.")
@yes_option
@progress_option
@executor_options
def bench_command(**kw: Any) -> None:
    """Run every (method, IPC) cell, resumably, and write results.csv and the paper's tables.

    Each cell is a normal run directory under OUTPUT/cells/. Cells already finished are
    read back, never recomputed: stop a bench at any time and run the same command again.
    A different request into the same OUTPUT is refused (use another --output or --overwrite).
    With --executor ray the cells run side by side on a Ray cluster (task logs in OUTPUT/logs/).
    """
    from dcbench_tesla.run.bench import run_bench_request

    with executor_from_flags(kw):
        run_bench_request(request_from_flags(kw))


def _shipped_presets() -> str:
    from dcbench_tesla.run.presets import preset_names

    return ", ".join(preset_names()) or "(none)"


bench_command.help = inspect.cleandoc(bench_command.help or "") + f"\n\nShipped presets: {_shipped_presets()}."
