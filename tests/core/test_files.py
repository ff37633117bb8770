"""The one safetensors reader/writer: round trips, header-only reads, pickles refused, never misjudged."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dcbench_tesla.errors import UserError
from dcbench_tesla.files import looks_like_pickle, read_tensor_file, write_tensor_file


def test_round_trip_and_header_only(tmp_path):
    path = write_tensor_file(tmp_path / "a.safetensors", {"x": torch.arange(3.0)}, {"format": "t", "n": 1})
    tensors, meta = read_tensor_file(path, "test file")
    assert torch.equal(tensors["x"], torch.arange(3.0)) and meta == {"format": "t", "n": 1}
    assert read_tensor_file(path, "test file", tensors=False) == ({}, meta)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary file left


def test_a_safetensors_header_whose_length_starts_with_0x80_is_not_a_pickle(tmp_path):
    # A header length with 0x80 as its low byte (128, 384, ...) starts the file like a pickle does.
    for pad in range(300):
        path = tmp_path / "t.safetensors"
        save_file({"x": torch.zeros(1)}, str(path), metadata={"dcbench": json.dumps({"p": "x" * pad})})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert not looks_like_pickle(path)
    assert read_tensor_file(path, "test file")[1] == {"p": "x" * pad}


def test_pickles_are_refused_without_being_loaded(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(pickle.dumps({"x": 1}))
    assert looks_like_pickle(path)
    with pytest.raises(UserError, match="never unpickles"):
        read_tensor_file(path, "test file")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full (writes fail with ENOSPC)")
def test_a_log_line_on_a_full_disk_is_a_user_error_naming_the_file():
    from dcbench_tesla.files import append_line

    with pytest.raises(UserError, match=r"cannot write '/dev/full': no space left on the device \(2 B"):
        append_line("/dev/full", "x")
