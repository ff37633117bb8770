"""``check_method``: every check catches the method that breaks it, with a message naming the check."""

import copy

import pytest
import torch

import dcbench_tesla as dc
from dcbench_tesla.conformance import ConformanceError, check_method
from dcbench_tesla.distiller import RunContext
from dcbench_tesla.method import METHODS, MethodSpec
from dcbench_tesla_methods.dm_distiller import DistributionMatching
from dcbench_tesla_methods.random_subset_distiller import RandomSubset

DM_SMOKE = {"iterations": 3, "batch_real": 8}


@pytest.fixture
def registered():
    """Register test fakes under temporary ids; unregister them afterwards."""
    names = []

    def register(name, cls, **kwargs):
        globals()[f"_{name}"] = cls
        dc.register_method(MethodSpec(id=name, entry_point=f"{__name__}:_{name}", **kwargs))
        names.append(name)
        return name

    yield register
    for name in names:
        METHODS.unregister(name)


class Unseeded(RandomSubset):
    """A test fake: draws from the global RNG, so two runs with one seed differ."""

    def reset(self, dataset, ipc, seed):
        info = super().reset(dataset, ipc, seed)
        self._images = self._images + torch.rand(self._images.shape)
        return info


class IgnoresSeed(RandomSubset):
    """A test fake: always draws the subset of seed 0."""

    def reset(self, dataset, ipc, seed):
        return super().reset(dataset, ipc, 0)


class NanLoss(RandomSubset):
    """A test fake: reports a NaN loss."""

    def step(self):
        return {**super().step(), "loss": float("nan")}


class ForgetsOptimiser(DistributionMatching):
    """A test fake: load_state_dict drops the optimiser's momentum."""

    def load_state_dict(self, state):
        state = copy.deepcopy(state)
        state["optimizer"]["state"] = {}
        super().load_state_dict(state)


class DoubleCount(RandomSubset):
    """A test fake: counts two iterations per step."""

    def step(self):
        info = super().step()
        self.iteration += 1
        return info


class NoKeys(RandomSubset):
    """A test fake: declares an info key it never reports."""

    info_keys = ("loss",)


def test_a_nondeterministic_method_is_caught(registered, digits):
    with pytest.raises(ConformanceError, match="same seed: two episodes with the same seed produced different"):
        check_method(registered("test-unseeded", Unseeded), dataset=digits, ipc=1)


def test_a_method_that_ignores_its_seed_is_caught(registered, digits):
    with pytest.raises(ConformanceError, match="different seed: seeds 0 and 1 produced the same synthetic set"):
        check_method(registered("test-ignores-seed", IgnoresSeed), dataset=digits, ipc=1)


def test_nan_info_is_caught(registered, digits):
    with pytest.raises(ConformanceError, match=r"info\['loss'\] is not finite"):
        check_method(registered("test-nanloss", NanLoss), dataset=digits, ipc=1)


def test_load_state_dict_that_drops_the_optimiser_state_is_caught(registered, digits):
    name = registered("test-forgets", ForgetsOptimiser, kwargs=DM_SMOKE)
    with pytest.raises(ConformanceError, match="state_dict round trip: a step after state_dict") as info:
        check_method(name, dataset=digits, ipc=1, steps=3)
    assert "optimiser state" in str(info.value)


def test_a_step_that_miscounts_iterations_is_caught(registered, digits):
    with pytest.raises(ConformanceError, match="moved its iteration counter from 0 to 2"):
        check_method(registered("test-double", DoubleCount), dataset=digits, ipc=1)


def test_missing_info_keys_are_caught(registered, digits):
    with pytest.raises(ConformanceError, match=r"info lacks required keys \['loss'\]"):
        check_method(registered("test-nokeys", NoKeys), dataset=digits, ipc=1)


def test_every_failure_is_reported_at_once(registered, digits):
    class Both(ForgetsOptimiser):
        """A test fake: ignores its seed and forgets its optimiser."""

        def reset(self, dataset, ipc, seed):
            return super().reset(dataset, ipc, 0)

    name = registered("test-both", Both, kwargs=DM_SMOKE)
    with pytest.raises(ConformanceError) as info:
        check_method(name, dataset=digits, ipc=1, steps=3)
    assert "different seed:" in str(info.value) and "state_dict round trip:" in str(info.value)


def test_an_instance_is_checked_like_an_id(digits):
    options = DistributionMatching.Config(**DM_SMOKE)
    check_method(DistributionMatching(options, RunContext()), dataset=digits, ipc=1, steps=3)
    broken = ForgetsOptimiser(DistributionMatching.Config(**DM_SMOKE), RunContext())
    with pytest.raises(ConformanceError, match="(?s)ForgetsOptimiser.*state_dict round trip"):
        check_method(broken, dataset=digits, ipc=1, steps=3)
