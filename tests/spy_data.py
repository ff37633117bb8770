"""A fake for isolation: a dataset that records every read of its test split, and what read it."""

from __future__ import annotations

import dataclasses
import sys

from dcbench_tesla.data import Dataset


class SpyDataset(Dataset):
    """A :class:`Dataset` whose ``test_images`` / ``test_labels`` reads are appended to ``log``."""

    def __getattribute__(self, name):
        if name in ("test_images", "test_labels"):
            frame, files = sys._getframe(1), []
            while frame is not None:
                files.append(frame.f_code.co_filename.replace("\\", "/"))
                frame = frame.f_back
            object.__getattribute__(self, "log").append(("test", files))
        return super().__getattribute__(name)


def spy_on(dataset: Dataset, log: list) -> SpyDataset:
    """``dataset`` as a :class:`SpyDataset` writing to ``log``."""
    spy = SpyDataset(**{f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)})
    object.__setattr__(spy, "log", log)
    return spy


def install(monkeypatch, log: list) -> None:
    """Make every run load its data as a spy, and mark in ``log`` where the final evaluation starts."""
    from dcbench_tesla.run import runner
    from dcbench_tesla.run.request import ResolvedRun

    load, evaluate = ResolvedRun.load_dataset, runner.evaluate
    monkeypatch.setattr(ResolvedRun, "load_dataset", lambda self: spy_on(load(self), log))

    def final_evaluation(*args, **kwargs):
        log.append(("final", []))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", final_evaluation)


def early_test_reads(log: list) -> list[list[str]]:
    """Reads of the test split before the first final evaluation (expert training included), with their callers."""
    early = []
    for event, files in log:
        if event == "final":
            break
        early.append(files)
    return early


def test_reads(log: list) -> list[list[str]]:
    """Every read of the test split, with its callers."""
    return [files for event, files in log if event == "test"]
