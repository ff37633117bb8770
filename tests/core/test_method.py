import json

import pytest

import dcbench_tesla as dc
from dcbench_tesla.conformance import check_method
from dcbench_tesla.errors import UserError
from dcbench_tesla.method import METHODS, ConfigCard, MethodSpec


def test_builtin_methods_arrive_through_entry_points():
    assert "random" in dc.list_methods()
    assert isinstance(dc.spec("random"), MethodSpec)


def test_method_spec_json_round_trip():
    original = MethodSpec(
        id="x",
        entry_point="m:C",
        kwargs={"lr": 1.0},
        reference_accuracy={"cifar10": {1: 46.3}},
        config_cards=(ConfigCard("cifar10", 1, {"syn_steps": 50}, zca=True, source="paper A.12"),),
        eval_lr="learned",
    )
    data = json.loads(original.to_json())
    assert data["reference_accuracy"] == {"cifar10": {"1": 46.3}}
    assert MethodSpec.from_dict(data) == original
    assert original.card_for("cifar10", 1).options == {"syn_steps": 50}
    assert original.card_for("cifar10", 10) is None


def test_make_rejects_unknown_options_and_lists_valid_ones():
    with pytest.raises(UserError, match=r"unknown option\(s\) 'lr_imgg'.*Valid options: iterations"):
        dc.make("random", lr_imgg=3)


def test_baseline_role_is_the_random_subset_and_roles_are_checked():
    from dcbench_tesla.method import baseline_method

    assert dc.spec(baseline_method()).is_baseline and not dc.spec("tesla").is_baseline
    with pytest.raises(ValueError, match="role must be one of"):
        MethodSpec(id="x", entry_point="m:C", role="reference")


def test_make_unknown_method_suggests():
    with pytest.raises(UserError, match="Did you mean 'random'"):
        dc.make("randon")


@pytest.mark.parametrize("method_id", METHODS.names())
def test_every_registered_method_passes_the_conformance_checker(method_id, digits):
    method = dc.spec(method_id)
    check_method(method_id, dataset=digits, ipc=1, seed=3, steps=2, **method.smoke_options)
