"""Throwaway plugin packages (a method, a dataset, a model), registered only through entry points, run end to end."""

import json
import os
import subprocess
import sys
import textwrap

PLUGIN = '''
"""A third-party method: the class means of random real images (a toy)."""
import torch
from dcbench_tesla import Distiller, MethodSpec
from dcbench_tesla.evaluation import random_real_subset


class Blur(Distiller):
    info_keys = ("loss",)

    def reset(self, dataset, ipc, seed):
        self.begin(dataset, ipc, seed)
        self.images, self.labels = random_real_subset(dataset, ipc, seed)
        return {}

    def step(self):
        self.iteration += 1
        self.images = 0.5 * self.images + 0.5 * self.images.mean(dim=(2, 3), keepdim=True)
        return {"loss": float(self.images.var())}

    def synthetic_set(self):
        return self.package(self.images, self.labels)


SPEC = MethodSpec(id="blur", entry_point="toy_dcbench_plugin:Blur", kwargs={"iterations": 2}, description="toy plugin")
'''

DATASET = '''
"""A third-party dataset: 4 classes of random 16x16 colour images, built in memory."""
import numpy as np
from dcbench_tesla.data import DatasetSpec, build_dataset


def load(root, *, zca=False, cache_dir=None):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 3, 16, 16), dtype=np.uint8)
    y = np.arange(120) % 4
    return build_dataset(SPEC, train_images=x[:100], train_labels=y[:100], test_images=x[100:],
                         test_labels=y[100:], classes=["a", "b", "c", "d"], zca=zca, cache_dir=cache_dir,
                         source="toy_dcbench_data")


SPEC = DatasetSpec(name="toyset", loader="toy_dcbench_data:load", image_shape=(3, 16, 16), num_classes=4,
                   mean=(0.5, 0.5, 0.5), std=(0.29, 0.29, 0.29), default_model="tinynet", needs_root=False,
                   expected_files="(none)", how_to_get="(built in memory)", description="toy dataset plugin")
'''

MODEL = '''
"""A third-party architecture: one linear layer."""
from torch import nn


def build(channels, num_classes, image_size, **kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size * image_size, num_classes))
'''

BROKEN = "raise ImportError('this plugin is broken on purpose')\n"


def _install_fake_distribution(site, name, module, source, entry, group="dcbench_tesla.methods"):
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")


def _dcbench(args, site, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "dcbench_tesla", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_plugin_registered_only_by_entry_point_runs_end_to_end(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_fake_distribution(
        site, "toy_dcbench_plugin", "toy_dcbench_plugin", PLUGIN, "blur = toy_dcbench_plugin:SPEC"
    )
    _install_fake_distribution(
        site, "broken_dcbench_plugin", "broken_dcbench_plugin", BROKEN, "broken = broken_dcbench_plugin:SPEC"
    )

    listed = _dcbench(["ls", "methods"], site)
    assert listed.returncode == 0, listed.stderr
    assert "blur" in listed.stdout and "toy plugin" in listed.stdout
    assert "broken" in listed.stdout and "BROKEN" in listed.stdout  # named, not a crash

    out = tmp_path / "run"
    args = [
        "run",
        "--method",
        "blur",
        "--ipc",
        "2",
        "--output",
        str(out),
        "--num-eval",
        "1",
        "--eval-epochs",
        "2",
        "--no-progress",
    ]
    result = _dcbench(args, site)
    assert result.returncode == 0, result.stderr
    assert "blur on digits" in result.stdout and "±" in result.stdout
    record = json.loads((out / "result.json").read_text())
    assert record["method"]["id"] == "blur" and record["iterations"] == 2
    assert record["baseline"] is not None  # a plugin result is reported beside the random subset

    broken = _dcbench(["run", "--method", "broken", "--output", str(tmp_path / "b")], site)
    assert broken.returncode == 2
    assert "broken_dcbench_plugin:SPEC" in broken.stderr and "Traceback" not in broken.stderr


def test_dataset_and_model_plugins_run_without_any_edit_to_the_harness(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_fake_distribution(
        site,
        "toy_dcbench_data",
        "toy_dcbench_data",
        DATASET,
        "toyset = toy_dcbench_data:SPEC",
        "dcbench_tesla.datasets",
    )
    _install_fake_distribution(
        site,
        "toy_dcbench_model",
        "toy_dcbench_model",
        MODEL,
        "tinynet = toy_dcbench_model:build",
        "dcbench_tesla.models",
    )
    _install_fake_distribution(
        site,
        "broken_dcbench_data",
        "broken_dcbench_data",
        BROKEN,
        "brokenset = broken_dcbench_data:SPEC",
        "dcbench_tesla.datasets",
    )
    listed = _dcbench(["ls"], site)
    assert listed.returncode == 0, listed.stderr
    assert "toyset" in listed.stdout and "toy dataset plugin" in listed.stdout and "tinynet" in listed.stdout
    assert "brokenset" in listed.stdout and "BROKEN" in listed.stdout

    out = tmp_path / "run"
    args = ["run", "--method", "random", "--dataset", "toyset", "--ipc", "3", "--output", str(out)]
    result = _dcbench([*args, "--num-eval", "1", "--eval-epochs", "2", "--no-progress"], site)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "result.json").read_text())
    assert record["dataset"] == "toyset" and list(record["evaluation"]["by_model"]) == ["tinynet"]
    assert "tinynet: test accuracy" in result.stdout

    broken = _dcbench(["run", "--method", "random", "--dataset", "brokenset", "--output", str(tmp_path / "b")], site)
    assert broken.returncode == 2 and "broken_dcbench_data:SPEC" in broken.stderr and "Traceback" not in broken.stderr
