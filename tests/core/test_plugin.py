"""A throwaway plugin package, registered only through its entry point, runs through `dcbench run`."""

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

BROKEN = "raise ImportError('this plugin is broken on purpose')\n"


def _install_fake_distribution(site, name, module, source, entry):
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dcbench_tesla.methods]\n{entry}\n")


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
