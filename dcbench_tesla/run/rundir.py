"""The run directory: the only place that names its files, and the schema of ``result.json``.

A run directory holds::

    config.json                 the resolved configuration and where each part came from
    metrics.jsonl               one JSON line per iteration (and one for the reset)
    checkpoint.safetensors      the full episode state, while a run is unfinished
    synthetic_set.safetensors   the distilled set (see dcbench_tesla.synthetic)
    result.json                 the result record (:class:`ResultRecord`)
    .dcbench.lock               while a process works in it: that process's pid (see :class:`RunLock`)

Two processes never work in one run directory at once: :meth:`RunDir.open` takes the lock
(created with ``O_EXCL``), and a second run is refused naming the owner. A lock whose process is
gone (killed) is taken over. A directory that holds only the files of a run killed before its
first checkpoint may be started again by the same command (:meth:`RunDir.is_restartable`); one
that holds a result needs ``--overwrite``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import socket
import sys
import time
import typing
import weakref
from pathlib import Path
from typing import Annotated, Any, TypedDict

from dcbench_tesla.errors import UserError
from dcbench_tesla.files import (
    ensure_writable_dir,
    is_stale_temporary,
    process_alive,
    process_start,
    remove_stale_temporaries,
)

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


class RunLock:
    """The ``.dcbench.lock`` of a directory: created with ``O_EXCL``, holding the owner's pid.

    Args:
        path: The lock file.
    """

    #: An unreadable lock (its writer died between creating and filling it) younger than this is
    #: taken as a process starting up; older, as stale.
    UNREADABLE_GRACE_S = 2.0

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.token: str | None = None
        self._finalizer: Any = None

    def owner(self) -> dict[str, Any] | None:
        """The lock's content, ``{}`` if it exists but cannot be read, None if there is no lock."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def held_by_another(self) -> dict[str, Any] | None:
        """The owner of the lock if it is another process that still runs; None if free, stale or ours."""
        owner = self.owner()
        if owner is None:
            return None
        if not owner:
            try:
                young = time.time() - self.path.stat().st_mtime < self.UNREADABLE_GRACE_S
            except OSError:
                return None
            return {"pid": "?", "starting": True} if young else None
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname():
            return owner  # another machine's process: it cannot be checked from here
        if not isinstance(pid, int) or isinstance(pid, bool) or pid == os.getpid():
            return None
        return owner if process_alive(pid, owner.get("start")) else None

    def describe(self, owner: dict[str, Any]) -> str:
        """``"pid 123 on host since 2024-..."``."""
        if owner.get("starting"):
            return "a process that is starting"
        return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"

    def acquire(self) -> None:
        """Take the lock (a stale one is taken over); it is released by :meth:`release` or at exit.

        Raises:
            UserError: another live process holds it.
        """
        for _ in range(5):
            owner = self.held_by_another()
            if owner is not None:
                raise UserError(
                    f"{str(self.path.parent)!r} is in use by another dcbench process ({self.describe(owner)}): "
                    f"wait for it to finish, or choose another --output. If that process is gone, delete "
                    f"{str(self.path)!r}."
                )
            stale = self.path.read_bytes() if self.path.exists() else None
            if stale is not None:
                self._remove_if(stale)
            token = secrets.token_hex(8)
            content = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "start": process_start(os.getpid()),
                "since": _dt.datetime.now().isoformat(timespec="seconds"),
                "token": token,
                "command": " ".join(["dcbench", *sys.argv[1:]]),
            }
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue  # someone took it in between: look again
            try:
                os.write(fd, (json.dumps(content) + "\n").encode("utf-8"))
            finally:
                os.close(fd)
            self.token = token
            self._finalizer = weakref.finalize(self, RunLock._release, self.path, token)
            return
        raise UserError(f"could not take the lock {str(self.path)!r}: other processes keep taking it")

    def remove_if_stale(self) -> None:
        """Remove the lock if no other live process holds it and this object does not either."""
        if self.token is None and self.owner() is not None and self.held_by_another() is None:
            try:
                self._remove_if(self.path.read_bytes())
            except OSError:
                pass

    def _remove_if(self, content: bytes) -> None:
        """Remove the lock if it still holds ``content`` (a stale lock being taken over)."""
        try:
            if self.path.read_bytes() == content:
                self.path.unlink()
        except OSError:
            pass

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.token = None

    @staticmethod
    def _release(path: Path, token: str) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("token") == token:
                path.unlink()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass


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
    LOCK = ".dcbench.lock"
    FILES = (CONFIG, METRICS, CHECKPOINT, SYNTHETIC_SET, RESULT)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock = RunLock(self.path / self.LOCK)

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
        """True for a run stopped before its first checkpoint, of which a rerun loses nothing.

        That is a directory holding only ``config.json``, ``metrics.jsonl``, the lock of a stopped
        process or temporaries of interrupted writes: no result, no checkpoint, no set. The same
        command may start it again without ``--overwrite``.
        """
        present = list(self.path.iterdir()) if self.path.is_dir() else []
        ours = {self.CONFIG, self.METRICS, self.LOCK}
        return bool(present) and all(p.name in ours or is_stale_temporary(p) for p in present)

    def check_usable(self, overwrite: bool, resume: bool) -> bool:
        """Check the directory can take this run (touching no file); return whether it resumes a checkpoint.

        A fresh or restartable directory (see :meth:`is_restartable`) is used as is, also with
        ``--resume`` (then the run starts from the beginning: there is no state to resume).

        Raises:
            UserError: a non-directory, a directory another live process works in, an existing run
                without ``overwrite``, contradictory flags, or ``--resume`` where there is nothing to
                resume from.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output {str(self.path)!r} exists and is not a directory")
        owner = self.lock.held_by_another()
        if owner is not None:
            raise UserError(
                f"run directory {str(self.path)!r} is in use by another dcbench process ({self.lock.describe(owner)}); "
                "wait for it to finish or choose another --output"
            )
        if resume and overwrite:
            raise UserError("--resume and --overwrite contradict each other; pass one")
        if resume and self.has_checkpoint():
            return True
        if resume and not self.is_restartable():
            raise UserError(f"nothing to resume: {str(self.checkpoint)!r} does not exist (run without --resume)")
        if overwrite or not self.path.is_dir() or not any(self.path.iterdir()) or self.is_restartable():
            return False
        if self.has_checkpoint() and not self.is_finished():
            raise UserError(
                f"run directory {str(self.path)!r} holds the checkpoint of an unfinished run: pass --resume to "
                "continue it, --overwrite to start again, or choose another --output"
            )
        raise UserError(
            f"run directory {str(self.path)!r} already holds files; pass --overwrite to replace them, "
            "or choose another --output"
        )

    def open(self, resume: bool) -> None:
        """Create the directory, take its lock, and remove the files the run rewrites.

        A fresh run removes every run file, a resumed one the set and the result; both remove the
        leftovers of writes interrupted by a kill.

        Raises:
            UserError: the directory cannot be written, or another process holds its lock.
        """
        ensure_writable_dir(self.path)
        self.lock.acquire()
        stale = (self.SYNTHETIC_SET, self.RESULT) if resume else self.FILES
        for name in stale:
            (self.path / name).unlink(missing_ok=True)
        remove_stale_temporaries(self.path)

    def discard(self) -> None:
        """Remove every run file (result, set, checkpoint, config, metrics): nothing of an old run is resumed."""
        for name in self.FILES:
            (self.path / name).unlink(missing_ok=True)

    def close(self) -> None:
        """Release the directory's lock (it is also released when the process exits)."""
        self.lock.release()

    def remove_stale_lock(self) -> None:
        """Remove a lock whose process is gone (a kill after the run's result was written leaves one)."""
        self.lock.remove_if_stale()

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
