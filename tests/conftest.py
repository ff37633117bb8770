"""Test configuration: one torch thread, deterministic seeds, an isolated cache, the hardening tally.

``pytest --hypothesis-profile=long`` runs every fuzz surface twenty times deeper (see
``tests/attack_tally.py``); the default is a fixed, derandomised example count per surface.
"""

from __future__ import annotations

import pytest
import torch
from attack_tally import COUNTS, LONG_EXAMPLES, summary_lines
from hypothesis import settings

torch.set_num_threads(1)
settings.register_profile("long", max_examples=LONG_EXAMPLES, deadline=None)


def pytest_sessionfinish(session):
    """On a pytest-xdist worker: hand this worker's attack tally to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["attack_tally"] = {surface: dict(counts) for surface, counts in COUNTS.items()}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the pytest-xdist controller: add a finished worker's attack tally to the session's."""
    for surface, counts in getattr(node, "workeroutput", {}).get("attack_tally", {}).items():
        COUNTS[surface].update(counts)


def pytest_terminal_summary(terminalreporter):
    """Print how many attacks the hardening suites ran on each surface and how they ended."""
    lines = summary_lines()
    if lines:
        terminalreporter.write_sep("-", "hardening: attacks per surface (tests/hardening)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's caches (ZCA, experts) out of the user's home directory."""
    cache = tmp_path_factory.mktemp("dcbench-cache")
    monkeypatch.setenv("DCBENCH_CACHE", str(cache))
    monkeypatch.setenv("DCBENCH_DATA", str(cache / "data"))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset (mean/std normalised), loaded once."""
    from dcbench_tesla.data import load_dataset

    return load_dataset("digits")


@pytest.fixture
def no_validation_split(monkeypatch):
    """Isolation for the file-format tests of the loaders: hold no validation images out.

    Their training split then is the files' training images in file order, as the loader read them.
    The validation split itself is tested in tests/data/test_split.py.
    """
    from dcbench_tesla.data.spec import DatasetSpec

    monkeypatch.setattr(DatasetSpec, "val_size", lambda self, class_size: 0)
