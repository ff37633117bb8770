"""The run directory: the only place that names its files, and the schema of ``result.json``.

A run directory holds::

    config.json                 the resolved configuration and where each part came from
    metrics.jsonl               one JSON line per iteration (and one for the reset)
    checkpoint.safetensors      the full episode state, while a run is unfinished
    synthetic_set.safetensors   the distilled set (see dcbench_tesla.synthetic)
    result.json                 the result record (:class:`ResultRecord`)
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Annotated, Any, TypedDict

from dcbench_tesla.errors import UserError

RESULT_SCHEMA_VERSION = 1


class ResultRecord(TypedDict):
    """The keys of ``result.json``, each with its meaning."""

    schema_version: Annotated[int, "int, version of this schema"]
    method: Annotated[dict, "the MethodSpec as a dict"]
    dataset: Annotated[str, "dataset name"]
    ipc: Annotated[int, "images per class"]
    seed: Annotated[int, "the run's seed (distillation, baseline draw and evaluation models derive from it)"]
    config: Annotated[dict, "resolved method options, run options and the source of each layer"]
    iterations: Annotated[int, "outer iterations done"]
    evaluation: Annotated[dict, "protocol, seed and per-model accuracies, mean and std (fractions)"]
    baseline: Annotated[
        dict | None, "the random real subset of the same IPC under the same protocol (null for the baseline method)"
    ]
    whole_dataset: Annotated[dict | None, "the whole training set under the protocol, if asked for (else null)"]
    reference_accuracy: Annotated[
        float | None, "the paper's published accuracy for this dataset and IPC, if any (percent)"
    ]
    synthetic_set: Annotated[str, "path of the synthetic-set file, relative to the run directory"]
    provenance: Annotated[dict, "versions, device, threads, command, git revision"]


#: ``{key: meaning}`` of ``result.json``, read off :class:`ResultRecord`.
RESULT_SCHEMA: dict[str, str] = {
    key: hint.__metadata__[0] for key, hint in typing.get_type_hints(ResultRecord, include_extras=True).items()
}


class RunDir:
    """A run directory and its files.

    Args:
        path: The directory (it may not exist yet).
    """

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.safetensors"
    SYNTHETIC_SET = "synthetic_set.safetensors"
    RESULT = "result.json"
    FILES = (CONFIG, METRICS, CHECKPOINT, SYNTHETIC_SET, RESULT)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        """``config.json``."""
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``."""
        return self.path / self.METRICS

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.safetensors``."""
        return self.path / self.CHECKPOINT

    @property
    def synthetic_set(self) -> Path:
        """``synthetic_set.safetensors``."""
        return self.path / self.SYNTHETIC_SET

    @property
    def result(self) -> Path:
        """``result.json``."""
        return self.path / self.RESULT

    def is_finished(self) -> bool:
        """True when ``result.json`` exists."""
        return self.result.is_file()

    def has_checkpoint(self) -> bool:
        """True when a checkpoint exists (an unfinished run that can be resumed)."""
        return self.checkpoint.is_file()

    def is_restartable(self) -> bool:
        """True for a run stopped before its first checkpoint: only ``config.json`` / ``metrics.jsonl``.

        Such a directory holds nothing a rerun would lose (no result, no checkpoint, no set), so the
        same command may start it again without ``--overwrite``.
        """
        present = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
        return bool(present) and present <= {self.CONFIG, self.METRICS}

    def check_usable(self, overwrite: bool, resume: bool) -> bool:
        """Check the directory can take this run; return whether it resumes from a checkpoint.

        A fresh or restartable directory (see :meth:`is_restartable`) is used as is, also with
        ``--resume`` (then the run starts from the beginning: there is no state to resume).

        Raises:
            UserError: a non-directory, an existing run without ``overwrite``, contradictory flags, or
                ``--resume`` where there is nothing to resume from.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output {str(self.path)!r} exists and is not a directory")
        if resume and overwrite:
            raise UserError("--resume and --overwrite contradict each other; pass one")
        if resume and self.has_checkpoint():
            return True
        if resume and not self.is_restartable():
            raise UserError(f"nothing to resume: {str(self.checkpoint)!r} does not exist (run without --resume)")
        if self.path.is_dir() and any(self.path.iterdir()) and not (overwrite or self.is_restartable()):
            raise UserError(
                f"run directory {str(self.path)!r} already holds files; pass --overwrite to replace them, "
                "or choose another --output"
            )
        return False

    def open(self, resume: bool) -> None:
        """Create the directory (checking it is writable) and remove files a fresh or resumed run rewrites."""
        from dcbench_tesla.files import ensure_writable_dir

        ensure_writable_dir(self.path)
        stale = (self.SYNTHETIC_SET, self.RESULT) if resume else self.FILES
        for name in stale:
            (self.path / name).unlink(missing_ok=True)

    def read_json(self, path: Path) -> dict[str, Any] | None:
        """A JSON file of this directory, or None when it is missing or unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def read_result(self) -> dict[str, Any] | None:
        """``result.json`` as a dict, or None when the run has none (or it is unreadable)."""
        return self.read_json(self.result)
