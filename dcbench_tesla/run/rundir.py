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

RESULT_SCHEMA_VERSION = 2


class ResultRecord(TypedDict):
    """The keys of ``result.json``, each with its meaning."""

    schema_version: Annotated[int, "int, version of this schema"]
    method: Annotated[dict, "the MethodSpec as a dict"]
    dataset: Annotated[str, "dataset name"]
    ipc: Annotated[int, "images per class"]
    seed: Annotated[int, "the run's seed (distillation, baseline draw and evaluation models derive from it)"]
    config: Annotated[dict, "resolved method options, run options and the source of each layer"]
    iterations: Annotated[int, "outer iterations done"]
    eval_split: Annotated[str, "the split every accuracy below is scored on: 'test' (a run), 'val' (a tune trial)"]
    evaluation: Annotated[
        dict, "the set with its own labels: protocol, seed, split, per-model accuracies, mean and std (fractions)"
    ]
    evaluation_hard_labels: Annotated[
        dict | None, "the same images with hard labels (argmax of the soft labels); null when the labels are hard"
    ]
    baseline: Annotated[
        dict | None,
        "the random real subset of the same IPC with hard labels, same protocol (null for the baseline method)",
    ]
    baseline_same_rule: Annotated[
        dict | None,
        "the same random subset with labels from the set's own rule (the method's relabel: e.g. the same "
        "teacher's soft labels); 'label_rule' says 'soft' or 'hard' (null with --no-baseline)",
    ]
    real_hard: Annotated[
        dict | None,
        "the whole training pool with hard labels at the protocol's fixed lr, cached per dataset, model, "
        "protocol and preprocessing (null with --no-real)",
    ]
    whole_dataset: Annotated[dict | None, "the whole training set under the protocol, if asked for (else null)"]
    scores: Annotated[
        dict,
        "per model: acc_syn, acc_syn_hard, acc_rdm_same_rule, acc_real_hard (fractions), hlr, ior, ddrs and "
        "ddrs_weight (DD-Ranking; null where an input was not measured)",
    ]
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

    def check_usable(self, overwrite: bool, resume: bool) -> None:
        """Refuse a non-directory, an existing run (unless ``overwrite``), or a resume without a checkpoint.

        Raises:
            UserError: with what to do instead.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output {str(self.path)!r} exists and is not a directory")
        if resume:
            if overwrite:
                raise UserError("--resume and --overwrite contradict each other; pass one")
            if not self.has_checkpoint():
                raise UserError(f"nothing to resume: {str(self.checkpoint)!r} does not exist (run without --resume)")
            return
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise UserError(
                f"run directory {str(self.path)!r} already holds files; pass --overwrite to replace them, "
                "or choose another --output"
            )

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
