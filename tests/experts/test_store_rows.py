"""ExpertStore.rows: only the requested rows are read, NaN rows are refused, the distiller reads rows only."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from dcbench_tesla.errors import UserError
from dcbench_tesla.experts import ExpertStore, expert_filename
from dcbench_tesla.experts.store import write_expert
from dcbench_tesla.profiling.standins import RandomExpertEndpoints, write_standin_experts

EPOCHS = 6


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ExpertStore:
    """Three stand-in experts of the digits ConvNet (P = 75,530), 7 snapshots each."""
    return write_standin_experts(tmp_path_factory.mktemp("rows"), "convnet", "digits", epochs=EPOCHS, num_experts=3)


class CountingFile(io.FileIO):
    """A binary file that records every (offset, length) it reads."""

    log: list[tuple[int, int]]

    def __init__(self, path, log):
        super().__init__(path, "rb")
        self.log = log

    def read(self, size=-1):
        where = self.tell()
        data = super().read(size)
        self.log.append((where, len(data)))
        return data

    def readinto(self, buffer):
        where = self.tell()
        count = super().readinto(buffer)
        self.log.append((where, count))
        return count


def _data_start(path) -> int:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return 8 + length + header["trajectory"]["data_offsets"][0]


def test_rows_equal_the_whole_trajectory_rows(store):
    for i in range(store.num_experts):
        whole = store.trajectory(i)
        got = store.rows(i, [4, 0, EPOCHS, 4])
        assert got.dtype == torch.float32 and got.shape == (4, store.num_params)
        assert torch.equal(got, whole[[4, 0, EPOCHS, 4]])
    start, target = store.segment(1, 2, 3)
    assert torch.equal(start, store.trajectory(1)[2]) and torch.equal(target, store.trajectory(1)[5])


def test_rows_read_only_the_header_and_the_requested_rows(store):
    log: list[tuple[int, int]] = []
    path = store.expert_path(2)
    store.rows(2, [1, 3, EPOCHS], opener=lambda p: CountingFile(p, log))
    row_bytes = 4 * store.num_params
    start = _data_start(path)
    reads = [(offset, n) for offset, n in log if offset >= start]
    assert reads == [(start + row * row_bytes, row_bytes) for row in (1, 3, EPOCHS)]
    header = [(offset, n) for offset, n in log if offset < start]
    assert sum(n for _, n in header) == start  # the 8-byte length and the JSON header, once
    total = sum(n for _, n in log)
    assert total == start + 3 * row_bytes
    assert total < (EPOCHS + 1) * row_bytes / 2  # far from the whole file


def test_a_nan_row_is_refused_and_other_rows_still_read(store, tmp_path):
    directory = tmp_path / "nan-store"
    directory.mkdir()
    for name in ("manifest.safetensors", expert_filename(0)):
        (directory / name).write_bytes((store.directory / name).read_bytes())
    traj = store.trajectory(0).clone()
    traj[4, 17] = float("nan")
    traj[5, 3] = float("inf")
    meta = json.dumps({"format": "dcbench-tesla/expert", "format_version": 1, "index": 0, "key": store.key})
    save_file({"trajectory": traj}, str(directory / expert_filename(0)), metadata={"dcbench": meta})
    broken = ExpertStore.open(directory)
    assert torch.equal(broken.rows(0, [0, 3]), traj[[0, 3]])
    with pytest.raises(UserError, match=r"epoch \[4\] contain NaN or inf"):
        broken.rows(0, [2, 4])
    with pytest.raises(UserError, match=r"epoch \[4, 5\]"):
        broken.rows(0, [4, 5])


def test_rows_refuse_bad_requests_and_foreign_files(store, tmp_path):
    with pytest.raises(IndexError):
        store.rows(0, [EPOCHS + 1])
    with pytest.raises(IndexError):
        store.rows(5, [0])
    directory = tmp_path / "foreign"
    directory.mkdir()
    (directory / "manifest.safetensors").write_bytes((store.directory / "manifest.safetensors").read_bytes())
    (directory / expert_filename(0)).write_bytes(b"\x80\x04 not a safetensors file")
    with pytest.raises(UserError, match="pickle"):
        ExpertStore.open(directory).rows(0, [0])
    meta = json.dumps({"format": "dcbench-tesla/expert", "key": "another-store"})
    save_file(
        {"trajectory": torch.zeros(EPOCHS + 1, 4)}, str(directory / expert_filename(0)), metadata={"dcbench": meta}
    )
    with pytest.raises(UserError, match="another expert store"):
        ExpertStore.open(directory).rows(0, [0])


def test_write_expert_refuses_a_non_finite_trajectory(tmp_path):
    traj = torch.zeros(3, 5)
    traj[1, 2] = float("inf")
    with pytest.raises(UserError, match="NaN or inf"):
        write_expert(tmp_path, 0, traj, {"key": "k"})
    assert not (tmp_path / expert_filename(0)).exists()


def test_standin_store_holds_the_random_trajectories(store):
    assert store.origin["kind"] == "standin" and store.num_experts == 3 and store.epochs == EPOCHS
    base = RandomExpertEndpoints(store.trajectory(0)[0], epochs=EPOCHS, num_experts=3, seed=0)
    assert torch.equal(base.rows(1, [0, 2]), store.rows(1, [0, 2]))


def test_the_distiller_reads_only_rows(store):
    """One trajectory-matching step asks the store for 2 rows (3 with SLA on the last teacher)."""
    from dcbench_tesla import RunContext, make
    from dcbench_tesla.profiling.standins import random_dataset

    class Recording:
        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def rows(self, i, epochs):
            self.calls.append(list(epochs))
            return self.inner.rows(i, epochs)

        def trajectory(self, i):
            raise AssertionError("the distiller must not read whole trajectories")

    for labels, count in (("hard", 2), ("sla-last", 3)):
        options = {"syn_steps": 2, "batch_syn": 5, "iterations": 1, "max_start_epoch": 3, "expert_epochs": 2}
        distiller = make("tesla", RunContext(), labels=labels, dsa_strategy="none", **options)
        recording = Recording(store)
        distiller.context.experts = recording
        distiller.reset(random_dataset("digits", ipc=1), ipc=1, seed=0)
        info = distiller.step()
        assert len(recording.calls) == 1 and len(recording.calls[0]) == count
        start = info["start_epoch"]
        assert recording.calls[0][:2] == [start, start + 2]
        if count == 3:
            assert recording.calls[0][2] == EPOCHS
