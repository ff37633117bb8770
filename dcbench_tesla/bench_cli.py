"""``dcbench bench``: a resumable sweep over methods x IPCs, and its preset files.

A preset is a TOML file of bench settings (``dcbench_tesla/presets/*.toml`` ship with the
package; ``--preset table1-cifar10`` names one, ``--preset path/to/file.toml`` reads any).
Explicit flags override the preset. Method hyper-parameters come from the methods' config
cards; a preset or ``--set`` only overrides them.
"""

from __future__ import annotations

import inspect
import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dcbench_tesla.errors import UserError

if TYPE_CHECKING:
    from dcbench_tesla.bench import BenchRequest

#: Keys a preset may hold, with the Python type each must have.
PRESET_KEYS: dict[str, type | tuple[type, ...]] = {
    "description": str,
    "methods": list,
    "dataset": str,
    "ipcs": list,
    "eval_models": list,
    "num_eval": int,
    "eval_epochs": int,
    "protocol": str,
    "iterations": int,
    "whole_dataset": bool,
    "exclude": list,
    "seed": int,
    "set": dict,
}


class BenchCommand(click.Command):
    """A click command that reports UserError as one line and exit code 2 (also outside the group)."""

    def invoke(self, ctx: click.Context) -> Any:  # noqa: D102
        try:
            return super().invoke(ctx)
        except UserError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = 2
            raise error from None


def preset_names() -> list[str]:
    """Names of the presets shipped in ``dcbench_tesla/presets``."""
    folder = resources.files("dcbench_tesla").joinpath("presets")
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _preset_text(name_or_path: str) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    name = name_or_path[: -len(".toml")] if name_or_path.endswith(".toml") else name_or_path
    if name in preset_names():
        return resources.files("dcbench_tesla").joinpath("presets", f"{name}.toml").read_text(encoding="utf-8"), name
    raise UserError(
        f"--preset {name_or_path!r} is neither a file nor a shipped preset; "
        f"presets: {', '.join(preset_names()) or '(none)'}"
    )


def _flatten_set(table: dict[str, Any], where: str) -> dict[str, Any]:
    """``{"mtt": {"lr_img": 1}, "iterations": 5}`` -> ``{"mtt.lr_img": 1, "iterations": 5}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                if isinstance(sub_value, dict):
                    raise UserError(f"{where}: [set.{key}.{sub}] nests too deep; use [set.<method>] key = value")
                flat[f"{key}.{sub}"] = sub_value
        else:
            flat[key] = value
    return flat


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read and check a preset (a shipped name or a TOML file path).

    Raises:
        UserError: missing, malformed, unknown keys or values of the wrong type.
    """
    text, where = _preset_text(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"preset {where!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(PRESET_KEYS))
    if unknown:
        raise UserError(f"preset {where!r}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(PRESET_KEYS)}")
    for key, value in data.items():
        expected = PRESET_KEYS[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise UserError(f"preset {where!r}: {key} must be {getattr(expected, '__name__', expected)}, got {value!r}")
    if "set" in data:
        data["set"] = _flatten_set(data["set"], f"preset {where!r}")
    return data


def _csv(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"{flag} expects a comma-separated list, got {value!r}")
    return items


def parse_ipcs(value: str | None) -> list[int] | None:
    """``"1,10,50"`` -> ``[1, 10, 50]``.

    Raises:
        UserError: an entry that is not a positive integer.
    """
    items = _csv(value, "--ipc")
    if items is None:
        return None
    try:
        ipcs = [int(v) for v in items]
    except ValueError:
        ipcs = []
    if not ipcs or any(ipc < 1 for ipc in ipcs):
        raise UserError(f"--ipc expects a comma-separated list of positive integers, got {value!r}")
    return ipcs


def parse_set(pairs: tuple[str, ...]) -> dict[str, str]:
    """Parse ``--set KEY=VALUE`` / ``--set METHOD.KEY=VALUE`` flags."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or key.strip().endswith("."):
            raise UserError(f"--set expects KEY=VALUE or METHOD.KEY=VALUE, got {pair!r} (e.g. --set mtt.lr_img=100)")
        parsed[key.strip()] = value.strip()
    return parsed


def request_from_flags(kw: dict[str, Any]) -> BenchRequest:
    """Merge ``--preset`` (lowest) and explicit flags into a :class:`~dcbench_tesla.bench.BenchRequest`."""
    from dcbench_tesla.bench import BenchRequest  # imported here: keeps "dcbench --help" fast

    preset = load_preset(kw["preset"]) if kw["preset"] else {}

    def pick(flag_value: Any, key: str, default: Any = None) -> Any:
        return flag_value if flag_value is not None else preset.get(key, default)

    methods = pick(_csv(kw["methods"], "--methods"), "methods")
    ipcs = pick(parse_ipcs(kw["ipc"]), "ipcs")
    if not methods:
        raise UserError("--methods is required (or a --preset that names them), e.g. --methods random,dm,mtt,tesla")
    if not ipcs:
        raise UserError("--ipc is required (or a --preset that names them), e.g. --ipc 1,10,50")
    if kw["output"] is None:
        raise UserError("--output DIR is required: the bench directory (re-use it to resume)")
    return BenchRequest(
        methods=[str(m) for m in methods],
        dataset=pick(kw["dataset"], "dataset", "digits"),
        ipcs=list(ipcs),
        output=kw["output"],
        eval_models=pick(_csv(kw["eval_models"], "--eval-models"), "eval_models"),
        num_eval_models=pick(kw["num_eval"], "num_eval"),
        eval_epochs=pick(kw["eval_epochs"], "eval_epochs"),
        protocol=pick(kw["protocol"], "protocol"),
        iterations=pick(kw["iterations"], "iterations"),
        options={**preset.get("set", {}), **parse_set(kw["set_pairs"])},
        whole_dataset=bool(pick(kw["whole_dataset"], "whole_dataset", False)),
        exclude=pick(_csv(kw["exclude"], "--exclude"), "exclude", []),
        seed=pick(kw["seed"], "seed", 0),
        overwrite=kw["overwrite"],
        data_root=kw["data_root"],
        device=kw["device"],
        threads=kw["threads"],
        progress=not kw["no_progress"],
    )


@click.command(name="bench", cls=BenchCommand)
@click.option("--preset", default=None, help="Preset name (see below) or a TOML file; flags override it.")
@click.option("--methods", default=None, help="Comma-separated method ids, e.g. random,dm,mtt,tesla.")
@click.option("--dataset", default=None, help="Dataset (see 'dcbench ls datasets') [digits].")
@click.option("--ipc", default=None, help="Comma-separated images-per-class values, e.g. 1,10,50.")
@click.option(
    "--eval-models",
    default=None,
    help="Comma-separated architectures; the first makes Table 1 [dataset default].",
)
@click.option("--num-eval", type=int, default=None, help="Models trained per architecture [protocol's: 5].")
@click.option("--eval-epochs", type=int, default=None, help="Epochs per evaluation model [protocol's].")
@click.option("--protocol", default=None, help="Evaluation protocol [short on digits, paper elsewhere].")
@click.option("--iterations", type=int, default=None, help="Outer iterations of every method that optimises.")
@click.option(
    "--set",
    "set_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option for every method that has it, or METHOD.KEY=VALUE for one.",
)
@click.option("--exclude", default=None, help="Comma-separated cells to leave out, e.g. dm-ipc50.")
@click.option(
    "--whole-dataset/--no-whole-dataset",
    default=None,
    help="Also evaluate the whole training set (upper bound).",
)
@click.option("--seed", type=int, default=None, help="Seed of every run [0].")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory holding dataset folders [$DCBENCH_DATA].",
)
@click.option("--device", default=None, help="cpu, cuda or cuda:N [cuda when present].")
@click.option("--threads", type=int, default=None, help="Torch intra-op threads.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Bench directory (required; run again to resume).",
)
@click.option("--overwrite", is_flag=True, help="Discard the results in --output and compute every cell again.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def bench(**kw: Any) -> None:
    """Run every (method, IPC) cell, resumably, and write results.csv and the paper's tables.

    Each cell is a normal run directory under OUTPUT/cells/. Cells already finished are
    read back, never recomputed: stop a bench at any time and run the same command again.
    A different request into the same OUTPUT is refused (use another --output or --overwrite).
    """
    from dcbench_tesla.bench import run_bench_request

    run_bench_request(request_from_flags(kw))


bench.help = (
    inspect.cleandoc(bench.help or "") + "\n\nShipped presets: " + (", ".join(preset_names()) or "(none)") + "."
)
