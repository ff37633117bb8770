"""Fuzzing every subcommand's arguments: each ends in exit 0 or exit 2 with one line, and changes no
file outside its output directory.

Each example is a cheap base command (digits, one evaluation model for one epoch, the random
method) with one to four options replaced by fuzzed values: boundary and absurd numbers, non-finite
floats, free text, devices this machine lacks, paths that are files, folders or missing. Options
whose valid values cost time (epochs, models, iterations, experts) draw only cheap valid values
or invalid ones, so an example that passes validation finishes in about a second. ``dcbench
profile`` points run through a fake point runner (no subprocess): its arguments are what is fuzzed.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
from attack_tally import fuzz_settings
from hardening_tools import CHEAP_EVAL, check_outcome, invoke, snapshot
from hypothesis import given
from hypothesis import strategies as st

from dcbench_tesla.data import load_dataset
from dcbench_tesla.evaluation import random_real_subset
from dcbench_tesla.synthetic import SyntheticSet

# -- value strategies -------------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_ABSURD = st.sampled_from(
    ["", " ", "-1", "0", "-0", "1.5", "1e30", "-1e30", "inf", "-inf", "nan", "NaN", "99999999999999999999999",
     "1e400", "0x10", "1_000", "abc", "None", "true", ",", ",,", ":", "1:", "../x", "/", "ü", "--", "-x"]
)  # fmt: skip
_INTS = st.integers(min_value=-(2**70), max_value=2**70).map(str)
_FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(repr)
#: Any value: text, numbers of any size, absurd strings.
ANY = st.one_of(_TEXT, _INTS, _FLOATS, _ABSURD)


def cheap_or_invalid(cheap: list[str], low: int, high: int) -> st.SearchStrategy[str]:
    """Cheap valid values, or integers outside ``low..high``, or non-integers (never an expensive valid value)."""
    outside = st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1)).map(str)
    return st.one_of(st.sampled_from(cheap), outside, _FLOATS, _ABSURD.filter(lambda v: not v.strip().isdigit()))


def values(*cheap: str) -> st.SearchStrategy[str]:
    """Mostly the given values, sometimes anything."""
    return st.one_of(st.sampled_from(list(cheap)), ANY)


DEVICES = values("cpu", "cuda", "cuda:0", "cuda:99", "meta", "mps", "xpu", "tpu", "gpu", "CPU", "")
THREADS = values("1", "2", "0", "1024", "1025", "100000")
SEEDS = values("0", "1", "4294967295", "4294967296", "-1", "99999999999999999999999")
EVAL = {
    "--eval-models": values("convnet", "resnet18", "nope", "convnet,convnet", ","),
    "--protocol": values("short", "paper", "nope"),
    "--num-eval": cheap_or_invalid(["1", "2"], 1, 1000),
    "--eval-epochs": cheap_or_invalid(["1", "2"], 1, 100_000),
    "--eval-lr": values("0.01", "10", "10.5", "0", "-1", "inf", "nan", "1e30", "1e-30"),
    "--device": DEVICES,
    "--threads": THREADS,
}
PATHS = values("input.txt", "inputs", "missing", "inputs/config.json", "", "/dev/null")

# -- the surfaces -----------------------------------------------------------------------------

SURFACES = {
    "run": (
        ["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--no-baseline", *CHEAP_EVAL,
         "--output", "out"],
        {
            "--method": values("random", "nope", "tesal", "RANDOM", ""),
            "--dataset": values("digits", "cifar10", "npz", "nope", ""),
            "--ipc": cheap_or_invalid(["1", "2", "1000"], 1, 100_000),
            "--seed": SEEDS,
            "--iterations": cheap_or_invalid(["0"], 0, 10_000_000),
            "--set": values("iterations=0", "dsa_strategy=banana", "model=nope", "x=y", "=", "iterations=1e30", "k"),
            "--config": values("inputs/config.json", "inputs/bad.json", "input.txt", "missing.json", "inputs"),
            "--data-root": PATHS,
            "--image-size": values("32", "3", "513", "x"),
            "--checkpoint-every": values("0", "1", "-1", "10000001"),
            "--eval-every": values("0", "1", "-1", "10000001"),
            "--output": values("out", "out/deeper", "input.txt", "inputs"),
            **EVAL,
        },
        ["--zca", "--overwrite", "--resume", "--whole-dataset", "--no-baseline", "--yes"],
    ),
    "eval": (
        ["eval", "inputs/set.safetensors", *CHEAP_EVAL[:-1]],
        {
            "--seed": SEEDS,
            "--data-root": PATHS,
            "--output": values("out/eval.json", "input.txt", "inputs", "out"),
            **EVAL,
        },
        [],
    ),
    "bench": (
        ["bench", "--methods", "random", "--dataset", "digits", "--ipc", "1", *CHEAP_EVAL, "--output", "out"],
        {
            "--methods": values("random", "random,nope", "nope", ",", "random,random", ""),
            "--ipc": values("1", "1,2", "0", "-1", ",", "1,,2", "99999999999", "1,x", "100001"),
            "--dataset": values("digits", "cifar10", "nope"),
            "--preset": values("inputs/preset.toml", "table1-cifar10", "nope", "input.txt", "inputs"),
            "--iterations": cheap_or_invalid(["0"], 0, 10_000_000),
            "--set": values("random.iterations=0", "iterations=0", "x=1", "nope.x=1", "=", ".x=1"),
            "--exclude": values("random-ipc1", "random-ipc2", "nope", ","),
            "--seed": SEEDS,
            "--output": values("out", "input.txt", "inputs"),
            **EVAL,
        },
        ["--whole-dataset", "--overwrite", "--yes"],
    ),
    "experts": (
        ["experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "1", "--batch-size", "512",
         "--output", "out", "--no-progress"],
        {
            "--dataset": values("digits", "cifar10", "nope"),
            "--model": values("convnet", "nope", "convnet3"),
            "--num-experts": cheap_or_invalid(["1", "2"], 1, 10_000),
            "--epochs": cheap_or_invalid(["1"], 1, 100_000),
            "--lr": values("0.01", "0", "-1", "inf", "nan", "11"),
            "--batch-size": cheap_or_invalid(["512", "1000"], 1, 1_000_000),
            "--seed": SEEDS,
            "--import": values("missing.pt", "input.txt", "inputs/garbage.pt", "inputs"),
            "--output": values("out", "input.txt", "inputs"),
            "--device": DEVICES,
            "--threads": THREADS,
        },
        ["--zca", "--yes"],
    ),
    "profile": (
        ["profile", "--methods", "tesla", "--dataset", "digits", "--steps", "1", "--batch-syn", "10", "--ipc", "1",
         "--iterations", "1", "--warmup", "0", "--device", "cpu", "--output", "out"],
        {
            "--methods": values("tesla", "mtt,tesla", "dm", "random", "nope", ","),
            "--dataset": values("digits", "cifar10", "imagefolder", "nope"),
            "--datasets": values("digits", "digits,cifar10", "nope"),
            "--steps": values("1", "1,2", "0", "2:1", "1:3:0", "a", "1:100001", "1:2:3:4", ",", ""),
            "--batch-syn": values("10", "1", "11", "0", "100001"),
            "--ipc": values("1", "2", "0", "100001"),
            "--iterations": values("1", "0", "10001"),
            "--warmup": values("0", "-1", "10001"),
            "--table-steps": values("1", "0", "100001"),
            "--timeout": values("10", "0", "-1", "inf", "nan"),
            "--seed": SEEDS,
            "--output": values("out", "input.txt", "inputs"),
            "--device": DEVICES,
            "--threads": THREADS,
        },
        ["--overwrite"],
    ),
    "plot": (
        ["plot", "inputs"],
        {"--csv": PATHS, "--output": values("out", "input.txt"), "--table-steps": values("1", "0", "x")},
        [],
    ),
    "show": (
        ["show", "inputs/set.safetensors", "--output", "out/images.png"],
        {
            "--output": values("out/images.png", "out", "input.txt", "out/x.jpg"),
            "--max-per-class": values("1", "10", "0", "10001"),
            "--max-classes": values("1", "3", "0", "100001"),
        },
        ["--overwrite"],
    ),
    "ls": (["ls"], {}, []),
}  # fmt: skip


@pytest.fixture(scope="module")
def valid_set(tmp_path_factory):
    """A valid synthetic-set file (a random real subset of digits)."""
    dataset = load_dataset("digits")
    images, labels = random_real_subset(dataset, 1, 0)
    syn = SyntheticSet(images, labels, "digits", dataset.classes, dataset.preprocessing, ipc=1)
    return syn.save(tmp_path_factory.mktemp("set") / "set.safetensors").read_bytes()


@pytest.fixture
def workspace(tmp_path, valid_set):
    """The current directory of an attack: input files it may name, and ``out`` for its output."""
    (tmp_path / "input.txt").write_text("not a dataset, not a set, not a config\n")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "set.safetensors").write_bytes(valid_set)
    (inputs / "config.json").write_text(json.dumps({"iterations": 0}))
    (inputs / "bad.json").write_text('{"iterations": NaN, "x": [1, {"y": 2}]}')
    (inputs / "preset.toml").write_text('methods = ["random"]\ndataset = "digits"\nipcs = [1]\nnum_eval = 1\n')
    (inputs / "garbage.pt").write_bytes(b"\x80\x02}q\x00." + bytes(range(256)))
    (inputs / "profile.csv").write_text("method,dataset\nx,y\n")
    return tmp_path


class FakePointRunner:
    """A fake (test only) for ``run_point_subprocess``: records a failed point at once, no process."""

    def __call__(self, spec, workdir, timeout_s=None):
        return {**spec.to_dict(), "status": "failed", "error": "fake point runner (test)", "wall_s": 0.0}


@pytest.fixture(autouse=True)
def _no_point_processes(monkeypatch):
    monkeypatch.setattr("dcbench_tesla.profiling.sweep.run_point_subprocess", FakePointRunner())


def attack(draw_options, surface: str):
    base, options, flags = SURFACES[surface]
    names = sorted(options)
    chosen = draw_options(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True)) if names else []
    args = list(base)
    for name in chosen:
        args += [name, draw_options(options[name])]
    if flags:
        args += draw_options(st.lists(st.sampled_from(flags), max_size=2, unique=True))
    return args


def outputs(workspace, args) -> list:
    """What the command may write: ``out`` and every path given to ``--output``."""
    return [workspace / "out", *(workspace / args[i + 1] for i, a in enumerate(args[:-1]) if a == "--output")]


def _eval_default_output(args, name) -> bool:
    """``dcbench eval FILE`` without ``--output`` saves ``<stem>.eval-<protocol>-seed<S>.json`` beside FILE."""
    if args[:1] != ["eval"] or "--output" in args or len(args) < 2:
        return False
    stem = Path(args[1]).with_suffix("")
    return str(name).startswith(f"{stem}.eval-") and str(name).endswith(".json")


def check_attack(workspace, args, surface):
    """The property; files in an existing folder named by ``--output`` may be added, never changed."""
    named = outputs(workspace, args)
    new, existing = [p for p in named if not p.exists()], [p.resolve() for p in named if p.exists()]
    before = snapshot(workspace, skip=new)
    result = invoke(args, cwd=workspace)
    check_outcome(result, f"cli {surface}")
    after = snapshot(workspace, skip=new)
    changed = [name for name in before if after.get(name) != before[name]]
    added = [n for n in after if n not in before and not any(e in (workspace / n).resolve().parents for e in existing)]
    added = [n for n in added if not _eval_default_output(args, n)]
    assert not changed and not added, f"{args} changed {changed} and added {added} outside its output"


def reset_workspace(workspace, names) -> None:
    """Remove what earlier examples wrote (every example starts from the same workspace)."""
    import shutil

    for path in workspace.iterdir():
        if path.name not in names:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


EXAMPLES = {"run": 30, "eval": 15, "bench": 20, "experts": 15, "profile": 10, "plot": 10, "show": 10, "ls": 1}


def _fuzz_test(surface: str):
    @fuzz_settings(EXAMPLES[surface])
    @given(data=st.data())
    def test(workspace, data):
        reset_workspace(workspace, {"input.txt", "inputs"})
        args = attack(data.draw, surface)
        check_attack(workspace, args, surface)
        torch.set_num_threads(1)  # --threads changes the process's torch threads

    test.__name__ = f"test_fuzzed_{surface}_arguments_end_in_exit_0_or_2"
    return test


for _surface in SURFACES:
    globals()[f"test_fuzzed_{_surface}_arguments_end_in_exit_0_or_2"] = _fuzz_test(_surface)


def test_ls_kinds_and_a_bad_kind(workspace):
    for kind in ("methods", "datasets", "models", "engines", "protocols", "widgets", string.ascii_letters):
        check_outcome(invoke(["ls", kind], cwd=workspace), "cli ls")
