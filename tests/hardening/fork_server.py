"""A fork server (test tool): imports dcbench once, then forks one real process per command.

The kill-anywhere harness SIGKILLs dozens of ``dcbench`` processes; starting each from scratch
costs seconds of imports on a small CPU. This server imports the package (and torch, scikit-learn,
matplotlib) once, without running any torch operation, and forks a fresh process per command:
each child is a real process running the real CLI with the real signal and exit paths (atexit
handlers included), in its own process group so that a kill takes its subprocesses (profile
points) with it.

Protocol, one JSON object per line (several children may run at once):

    stdin  <- {"argv": [...], "cwd": DIR, "env": {...}, "log": FILE, "kill_in_write": N or null}
    stdout -> {"pid": PID}                      the child runs
    stdin  <- {"wait": PID}
    stdout -> {"pid": PID, "status": CODE}      it ended: its exit code, or -SIGNAL when killed

``kill_in_write: N`` installs a fake ``atomic_path`` in the child that SIGKILLs the process inside
its N-th atomic write: after the temporary file is complete, before the rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys


def _preload() -> None:
    import matplotlib  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (what the first optimiser would import)

    import dcbench_tesla_methods.dm_distiller
    import dcbench_tesla_methods.random_subset_distiller
    import dcbench_tesla_methods.trajectory_matching_distiller  # noqa: F401


def _install_fake_killing_write(n: int) -> None:
    """A fake ``atomic_path`` (test only) that SIGKILLs this process inside its ``n``-th write."""
    from dcbench_tesla import files

    real = files.atomic_path
    calls = [0]

    @contextlib.contextmanager
    def killing_atomic_path(path, size_bytes=None):
        with real(path, size_bytes) as tmp:
            yield tmp
            calls[0] += 1
            if calls[0] == n:  # the temporary file is written; the rename has not happened
                os.kill(os.getpid(), signal.SIGKILL)

    files.atomic_path = killing_atomic_path


def _child(request: dict) -> None:
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.update(request.get("env") or {})
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if request.get("kill_in_write"):
        _install_fake_killing_write(int(request["kill_in_write"]))
    from dcbench_tesla.cli import main

    try:
        main(args=request["argv"], prog_name="dcbench")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)  # a normal interpreter exit: atexit handlers and finalizers run


def serve() -> None:
    """Answer commands on stdin until it closes."""
    _preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            pid = int(request["wait"])
            _, status = os.waitpid(pid, 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(json.dumps({"pid": pid, "status": code}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            _child(request)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # (the child does it too): its group exists before anyone can kill it
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    serve()
