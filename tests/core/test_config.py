import dataclasses
from typing import Literal

import pytest

from dcbench_tesla.cli.common import parse_set
from dcbench_tesla.config import build_options, read_config_file
from dcbench_tesla.errors import UserError
from dcbench_tesla.method import ConfigCard, MethodSpec
from dcbench_tesla.run.request import RunRequest, option_layers


@dataclasses.dataclass
class Opts:
    iterations: int = 10
    lr_img: float = 100.0
    labels: Literal["hard", "soft"] = "hard"
    batch_syn: int | None = None
    learn_lr: bool = True


def test_strings_are_coerced_to_field_types():
    opts = build_options(Opts, {"iterations": "5", "lr_img": "1e3", "batch_syn": "none", "learn_lr": "false"}, "m")
    assert (opts.iterations, opts.lr_img, opts.batch_syn, opts.learn_lr) == (5, 1000.0, None, False)
    assert build_options(Opts, {"batch_syn": "64"}, "m").batch_syn == 64


@pytest.mark.parametrize(
    "values, message",
    [
        ({"iterations": "ten"}, "'iterations' must be int"),
        ({"iterations": 2.5}, "'iterations' must be int"),
        ({"labels": "fuzzy"}, r"'labels' must be one of \['hard', 'soft'\]"),
        ({"learn_lr": "maybe"}, "'learn_lr' must be bool"),
        ({"nope": 1}, r"unknown option\(s\) 'nope'"),
    ],
)
def test_bad_values_raise_user_errors(values, message):
    with pytest.raises(UserError, match=message):
        build_options(Opts, values, "method 'x'")


def test_parse_set():
    assert parse_set(["lr-img=5", "syn_steps = 3"]) == {"lr_img": "5", "syn_steps": "3"}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_set(["lr_img"])


def test_config_files_json_and_toml(tmp_path):
    (tmp_path / "a.json").write_text('{"lr_img": 5}')
    (tmp_path / "a.toml").write_text("lr_img = 6\n")
    (tmp_path / "bad.toml").write_text("lr_img = \n")
    (tmp_path / "nested.json").write_text('{"a": {"b": 1}}')
    (tmp_path / "a.yaml").write_text("a: 1")
    assert read_config_file(tmp_path / "a.json") == {"lr_img": 5}
    assert read_config_file(tmp_path / "a.toml") == {"lr_img": 6}
    with pytest.raises(UserError, match="malformed"):
        read_config_file(tmp_path / "bad.toml")
    with pytest.raises(UserError, match="flat mapping"):
        read_config_file(tmp_path / "nested.json")
    with pytest.raises(UserError, match=".json or .toml"):
        read_config_file(tmp_path / "a.yaml")
    with pytest.raises(UserError, match="does not exist"):
        read_config_file(tmp_path / "missing.json")


def test_precedence_defaults_card_file_flags(tmp_path):
    spec = MethodSpec(
        id="m",
        entry_point="x:y",
        kwargs={"lr_img": 1.0, "iterations": 1, "batch_syn": 7},
        config_cards=(ConfigCard("digits", 1, {"lr_img": 2.0, "iterations": 2}, zca=True, source="test"),),
    )
    (tmp_path / "c.json").write_text('{"lr_img": 3.0}')
    request = RunRequest(method="m", dataset="digits", ipc=1, config_file=tmp_path / "c.json", iterations=9)
    merged, layers, zca = option_layers(request, spec)
    assert merged == {"lr_img": 3.0, "iterations": 9, "batch_syn": 7}
    assert zca is True and layers["config_card"]["source"] == "test"
    request.options = {"lr_img": "4"}
    assert option_layers(request, spec)[0]["lr_img"] == "4"
    request.zca = False
    assert option_layers(request, spec)[2] is False
