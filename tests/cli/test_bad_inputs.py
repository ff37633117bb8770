"""The bad-input suite: every user mistake ends with a clear message, exit code 2, nothing lost.

Complements test_cli.py (run/eval arguments), test_synthetic.py (set files), test_experts.py
(expert files and metadata) and test_state_io.py (checkpoints).
"""

import string

import pytest
import torch
from cli_checks import assert_user_error
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcbench_tesla as dc
from dcbench_tesla.cli import main
from dcbench_tesla.method import METHODS
from dcbench_tesla_methods.random_subset_distiller import RandomSubset

FAST = ["--num-eval", "1", "--eval-epochs", "1", "--no-progress", "--no-baseline"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class WrongShape(RandomSubset):
    """A faulty plugin (test fake): exports images of the wrong size."""

    def synthetic_set(self):
        syn = super().synthetic_set()
        syn.images = syn.images[:, :, :4, :4].clone()
        return syn


class NanLoss(RandomSubset):
    """A faulty plugin (test fake): reports a NaN loss at its second step."""

    def step(self):
        info = super().step()
        return {**info, "loss": float("nan") if self.iteration >= 2 else 1.0}


class NanImages(RandomSubset):
    """A faulty plugin (test fake): exports NaN pixels."""

    def synthetic_set(self):
        syn = super().synthetic_set()
        syn.images[0] = float("nan")
        return syn


class OutOfMemory(RandomSubset):
    """A fake (test only): raises torch's out-of-memory error as a GPU would."""

    def step(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")


FAKES = {
    "fake-wrong-shape": WrongShape,
    "fake-nan-loss": NanLoss,
    "fake-nan-images": NanImages,
    "fake-oom": OutOfMemory,
}


@pytest.fixture(autouse=True, scope="module")
def _faulty_plugins():
    """Register the faulty fakes for this module only (other tests enumerate the registry)."""
    for name, cls in FAKES.items():
        dc.register_method(dc.MethodSpec(id=name, entry_point=f"{__name__}:{cls.__name__}", kwargs={"iterations": 3}))
    yield
    for name in FAKES:
        METHODS.unregister(name)


@pytest.mark.parametrize(
    "method, message",
    [
        ("fake-wrong-shape", "produced images of shape (10, 1, 4, 4)"),
        ("fake-nan-loss", "reported loss=nan at iteration 2"),
        ("fake-nan-images", "NaN or inf"),
    ],
)
def test_faulty_plugins_end_with_a_clear_message(tmp_path, method, message):
    out = tmp_path / "run"
    result = invoke("run", "--method", method, "--ipc", "1", "--output", out, *FAST)
    assert_user_error(result)
    assert message in result.output
    assert not (out / "result.json").exists() and not (out / "synthetic_set.safetensors").exists()
    assert (out / "config.json").exists()  # what was written stays readable


@pytest.mark.parametrize(
    "args",
    [
        ["run"],  # --method missing
        ["run", "--method", "random", "--ipc", "ten"],
        ["run", "--method", "random", "--seed", "1.5"],
        ["run", "--method", "random", "--zca", "--no-zca", "--bogus"],
        ["ls", "widgets"],
        ["eval"],
        ["experts", "--dataset", "digits", "--num-experts", "0"],
        ["experts", "--dataset", "nope"],
        ["bench", "--methods", "random,nope", "--dataset", "digits", "--ipc", "1", "--output", "x"],
        ["bench", "--methods", "random", "--dataset", "digits", "--ipc", "1,-2", "--output", "x"],
        ["profile", "--methods", "mtt", "--dataset", "digits", "--steps", "0", "--output", "x"],
        ["profile", "--methods", "mtt", "--dataset", "digits", "--steps", "a,b", "--output", "x"],
        ["show", "no/such/path"],
        ["plot", "no/such/dir"],
    ],
)
def test_malformed_arguments(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke(*args))
    assert not (tmp_path / "x").exists()


_names = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=_names.filter(lambda n: n not in METHODS and not n.startswith("fake-")),
    ipc=st.one_of(st.integers(max_value=0), st.integers(min_value=10_000), st.text(max_size=5)),
    dataset=st.one_of(st.just("digits"), _names),
)
def test_fuzzed_run_arguments_never_crash(tmp_path, method, ipc, dataset):
    out = tmp_path / "fuzz"
    result = invoke("run", "--method", method, "--dataset", dataset, "--ipc", ipc, "--output", out, *FAST)
    assert_user_error(result)
    assert not out.exists()


def test_checkpoint_of_another_format_is_refused(tmp_path):
    from safetensors.torch import save_file

    from dcbench_tesla.state_io import load_state

    path = tmp_path / "checkpoint.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(dc.UserError, match="not a dcbench checkpoint"):
        load_state(path)


def test_out_of_memory_ends_with_advice(tmp_path):
    result = invoke("run", "--method", "fake-oom", "--ipc", "1", "--output", tmp_path / "run", *FAST)
    assert_user_error(result)
    assert "ran out of GPU memory at iteration 1" in result.output
    assert "dcbench profile" in result.output and "Tried to allocate 2.00 GiB (fake)" in result.output
