import pickle

import pytest
import torch

from dcbench_tesla.errors import UserError
from dcbench_tesla.state_io import load_state, save_state


def test_round_trip_of_optimizer_and_rng_state(tmp_path):
    param = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.5)
    param.grad = torch.ones(3)
    opt.step()
    gen = torch.Generator().manual_seed(4)
    state = {"opt": opt.state_dict(), "gen": gen.get_state(), "it": 7, "none": None, "xs": [1.5, "a"]}
    back = load_state(save_state(tmp_path / "s.safetensors", state))
    assert back["it"] == 7 and back["none"] is None and back["xs"] == [1.5, "a"]
    assert torch.equal(back["gen"], gen.get_state())
    restored = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1.0)
    restored.load_state_dict(back["opt"])
    assert torch.equal(
        restored.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"]
    )
    assert restored.param_groups[0]["lr"] == 0.1


def test_unsupported_objects_are_rejected_before_writing(tmp_path):
    with pytest.raises(TypeError, match="cannot store object"):
        save_state(tmp_path / "s.safetensors", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="never unpickles"):
        load_state(path)
