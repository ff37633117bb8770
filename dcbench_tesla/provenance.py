"""Where a number came from: package versions, device, threads, git revision."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import dcbench_tesla


def package_versions() -> dict[str, str]:
    """Versions of Python, dcbench-tesla and the libraries that shape results."""
    versions = {"python": platform.python_version(), "dcbench_tesla": dcbench_tesla.__version__}
    for name in ("torch", "kornia", "numpy", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    versions["cuda"] = torch.version.cuda or "none"
    return versions


def device_description(device: torch.device | str) -> str:
    """Human name of ``device`` (GPU model, or the CPU)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def git_revision() -> str:
    """The git commit of the source tree, or "unknown" outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def command_line() -> str:
    """The ``dcbench ...`` command that started this work (inside a remote task: the driver's)."""
    from dcbench_tesla.executors import task_context

    context = task_context()
    if context is not None and context.get("command"):
        return str(context["command"])
    return " ".join(["dcbench", *sys.argv[1:]]) if sys.argv else ""


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, device, thread count, command line, git revision and executor.

    ``executor`` is :func:`~dcbench_tesla.executors.executor_record`: the command's executor (kind,
    and for Ray its address, nodes and cluster resources) and, inside a remote task, where it ran.
    """
    from dcbench_tesla.executors import executor_record

    return {
        "versions": package_versions(),
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "command": command_line(),
        "git_revision": git_revision(),
        "executor": executor_record(),
    }
