"""Files the harness writes and reads: atomic writes, and safetensors files with JSON metadata.

Every file goes through a temporary file and a rename, so a crash never leaves a half-written
result behind. Every tensor file (synthetic sets, checkpoints, expert stores, ZCA caches) is
safetensors with one JSON metadata entry ``dcbench``, written by :func:`write_tensor_file` and read
by :func:`read_tensor_file`, which never unpickles.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dcbench_tesla.errors import UserError

METADATA_KEY = "dcbench"


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # some writers (safetensors) recreate it as 0600
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
    with atomic_path(path) as tmp:
        save_file(ready, str(tmp), metadata={METADATA_KEY: json.dumps(metadata, default=str)})
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
    except json.JSONDecodeError as exc:
        raise UserError(f"{str(path)!r}: corrupt {what} metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise UserError(f"{str(path)!r}: corrupt {what} metadata (not a JSON object)")
    return loaded, meta
