"""Files the harness writes and reads: atomic writes, and safetensors files with JSON metadata.

Every file goes through a temporary file and a rename, so a crash never leaves a half-written
result behind. Every tensor file (synthetic sets, checkpoints, expert stores, ZCA caches) is
safetensors with one JSON metadata entry ``dcbench``, written by :func:`write_tensor_file` and read
by :func:`read_tensor_file`, which never unpickles.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dcbench_tesla.errors import UserError

METADATA_KEY = "dcbench"

#: Write failures that are the user's to fix (a full disk, a quota, a read-only or forbidden place):
#: they end as a UserError naming the path and the size, never as a traceback.
_USER_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
}


def human_bytes(n: float) -> str:
    """``"58.1 MiB"``, ``"2.37 GiB"``, ``"1003 MiB"``: binary units, about three significant digits."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            break
        n /= 1024
    if unit == "B" or abs(n) >= 100:
        return f"{n:.0f} {unit}"
    return f"{n:.2f} {unit}" if abs(n) < 10 else f"{n:.1f} {unit}"


def write_error(path: Path, exc: OSError, size_bytes: int | None) -> UserError:
    """A failed write (full disk, quota, read-only, forbidden) as a message naming the path and the size."""
    reason = _USER_WRITE_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
    need = f"{human_bytes(size_bytes)} ({size_bytes:,} bytes) needed" if size_bytes is not None else "size unknown"
    try:
        free = f", {human_bytes(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = ""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    fix = "Free some space (or choose another --output)" if full else "Choose a place you can write to (--output)"
    return UserError(
        f"cannot write {str(path)!r}: {reason} ({need}{free}). Nothing was replaced: the previous "
        f"{path.name}, if any, is intact. {fix} and run the command again (with --resume where it left a checkpoint)."
    )


@contextlib.contextmanager
def atomic_path(path: Path | str, size_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched. The temporary's
    name carries the process id, so the temporaries a killed process left behind are recognised
    and removed by the next write of the same file. A write that fails because the disk is full
    (``ENOSPC``), a quota is exceeded, or the place is read-only or forbidden ends as a
    :class:`UserError` naming ``path`` and ``size_bytes`` (what was being written).
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_current_umask())
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # some writers (safetensors) recreate it as 0600
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _USER_WRITE_ERRORS:
            raise write_error(path, exc, size_bytes) from exc
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot), to tell a reused pid; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        return stat.rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None = None) -> bool:
    """True if ``pid`` runs on this machine (not a zombie) and, when ``start`` is given and known, started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    except (OSError, OverflowError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return start is None or process_start(pid) in (None, start)


def is_stale_temporary(path: Path) -> bool:
    """True for a temporary file of :func:`atomic_path` whose process is gone (killed mid-write)."""
    name = path.name
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    parts = name[1:-4].rsplit(".", 2)  # "<target>.<pid>.<random>"
    return len(parts) == 3 and parts[1].isdigit() and not process_alive(int(parts[1]))


def remove_stale_temporaries(directory: Path, target: str = "") -> None:
    """Remove the temporaries that killed processes left in ``directory`` (those of ``target`` only, if given)."""
    try:
        found = list(Path(directory).glob(f".{glob.escape(target)}*.tmp"))
    except OSError:
        return
    for path in found:
        if is_stale_temporary(path):
            path.unlink(missing_ok=True)


def user_files(directory: Path) -> list[Path]:
    """The entries of ``directory`` except stale temporaries of killed writes (``[]`` if it is missing)."""
    if not Path(directory).is_dir():
        return []
    return [p for p in Path(directory).iterdir() if not is_stale_temporary(p)]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    data = text.encode("utf-8")
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)


def append_line(path: Path | str, line: str) -> None:
    """Append ``line`` and a newline to a log file; a full disk or a forbidden place is a :func:`write_error`."""
    path = Path(path)
    data = (line + "\n").encode("utf-8")
    try:
        with open(path, "ab") as handle:
            handle.write(data)
    except OSError as exc:
        raise write_error(path, exc, len(data)) from exc


def write_json_atomic(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def ensure_writable_dir(path: Path | str) -> Path:
    """Create ``path`` if needed and check a file can be written there.

    Raises:
        UserError: if the directory cannot be created or written.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(
            f"cannot write to output directory {str(path)!r} ({exc.strerror or exc}). "
            "Choose a directory you can write to with --output."
        ) from exc
    return path


def looks_like_pickle(path: Path | str) -> bool:
    """True if the file starts like a pickle or a ``torch.save`` zip archive and not like safetensors.

    A safetensors file starts with its header length (8 bytes, little endian) and then ``{``; its
    first byte can be ``0x80`` like a pickle's, so the safetensors layout is checked first.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(9)
    header_length = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and 8 + header_length <= path.stat().st_size:
        return False
    return head[:1] == b"\x80" or head[:2] == b"PK"


def write_tensor_file(path: Path | str, tensors: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` (CPU, contiguous) and JSON ``metadata`` as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    ready = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    header = json.dumps(metadata, default=str)
    size = sum(t.numel() * t.element_size() for t in ready.values()) + len(header) + 100 * (len(ready) + 1)
    with atomic_path(path, size) as tmp:
        save_file(ready, str(tmp), metadata={METADATA_KEY: header})
    return path


def read_tensor_file(path: Path | str, what: str, *, tensors: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`write_tensor_file`: its tensors (unless ``tensors=False``) and metadata.

    Args:
        path: The file.
        what: What the file should be ("synthetic set", "checkpoint", ...), for messages.
        tensors: Load the tensors too; False reads the header only.

    Raises:
        UserError: missing file, a pickle (never unpickled), not a readable safetensors file, or
            metadata that is not a JSON object.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist")
    try:
        if looks_like_pickle(path):
            raise UserError(
                f"{str(path)!r} looks like a pickle / torch.save file, not a {what} (safetensors). "
                "dcbench never unpickles files; re-export it as safetensors."
            )
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY, "{}")
            loaded = {name: handle.get_tensor(name) for name in handle.keys()} if tensors else {}
    except UserError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{str(path)!r} is not a readable {what} file (safetensors): {exc}") from exc
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{str(path)!r}: corrupt {what} metadata: {type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, dict):
        raise UserError(f"{str(path)!r}: corrupt {what} metadata (not a JSON object)")
    return loaded, meta


def note(message: str) -> None:
    """A one-line notice on stderr (a safe conversion a reader made, ...)."""
    print(f"note: {message}", file=sys.stderr)


def check_format(meta: dict[str, Any], path: Path, what: str, expected: str, version: int, hint: str = "") -> int:
    """Check a file's ``format`` and ``format_version`` metadata; return the version.

    Args:
        meta: The file's JSON metadata.
        path: The file (for messages).
        what: What the file should be ("dcbench synthetic set", ...).
        expected: The expected ``format`` string.
        version: The newest ``format_version`` this package reads.
        hint: Appended to the message of a foreign file (how to write a right one).

    Raises:
        UserError: another format, a version that is not an integer, or a newer version.
    """
    if meta.get("format") != expected:
        raise UserError(
            f"{str(path)!r} is a safetensors file but not a {what} (format {meta.get('format')!r}, "
            f"expected {expected!r}){'; ' + hint if hint else ''}"
        )
    found = meta.get("format_version", 0)
    if not is_int(found) or found < 0:
        raise UserError(f"{str(path)!r}: field 'format_version' is {found!r}, expected an integer 0..{version}")
    if found > version:
        raise UserError(f"{str(path)!r} has format version {found}; upgrade dcbench-tesla to read it")
    return found


def is_int(value: Any) -> bool:
    """A JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite JSON number (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_REQUIRED = object()


def meta_field(
    meta: dict[str, Any],
    key: str,
    expected: str,
    ok: Callable[[Any], bool],
    where: str,
    default: Any = _REQUIRED,
) -> Any:
    """One metadata field, checked: a missing or wrong value is a UserError naming the field.

    Args:
        meta: The metadata (or a nested object of it).
        key: The field (nested ones written ``"normalisation.mean"`` in messages via ``where``).
        expected: What it must be, in words ("a list of strings").
        ok: True for an acceptable value.
        where: ``"'<file>'"`` or ``"'<file>', normalisation"``: the prefix of the message.
        default: The value when the field is absent or null (absent and no default: an error).

    Raises:
        UserError: ``"<where>: field <key> is <found>, expected <expected>"``.
    """
    if meta.get(key) is None:
        if default is _REQUIRED:
            found = "null" if key in meta else "missing"
            raise UserError(f"{where}: field {key!r} is {found}, expected {expected}")
        return default
    value = meta[key]
    if not ok(value):
        found = repr(value)
        found = found if len(found) <= 60 else found[:57] + "..."
        raise UserError(f"{where}: field {key!r} is {type(value).__name__} {found}, expected {expected}")
    return value


def is_object(value: Any) -> bool:
    """A JSON object."""
    return isinstance(value, dict)


def is_names(value: Any) -> bool:
    """A non-empty JSON list of strings."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def is_numbers(value: Any) -> bool:
    """A non-empty JSON list of finite numbers."""
    return isinstance(value, list) and bool(value) and all(is_number(v) for v in value)


def normalisation_fields(meta: dict[str, Any], where: str) -> tuple[str, list[float], list[float]]:
    """The ``normalisation`` object of a file's metadata, checked: ``(kind, mean, std)``.

    Raises:
        UserError: a missing or wrong field (kind ``meanstd``/``zca``, finite means, positive stds
            of the same length).
    """
    norm = meta_field(meta, "normalisation", "an object with kind, mean and std", is_object, where)
    inner = f"{where}, normalisation"
    kind = meta_field(norm, "kind", "'meanstd' or 'zca'", lambda v: v in ("meanstd", "zca"), inner)
    mean = meta_field(norm, "mean", "a non-empty list of finite numbers", is_numbers, inner)
    std = meta_field(norm, "std", "a list of positive finite numbers", lambda v: is_numbers(v) and min(v) > 0, inner)
    if len(mean) != len(std):
        raise UserError(f"{inner}: {len(mean)} means but {len(std)} standard deviations")
    return kind, [float(m) for m in mean], [float(v) for v in std]
