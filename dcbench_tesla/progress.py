"""The one progress bar: tqdm on stderr, only when asked for and stderr is a terminal.

A log file or a pipe gets no bar and no escape sequences; every phase that takes long shows one
bar counting its real unit (iterations, epochs), so its ETA is honest from the first unit on.
"""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it", initial: int = 0) -> Any:
    """A tqdm bar (disabled unless ``enabled`` and stderr is a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, initial=initial, leave=False, disable=None if enabled and total else True
    )
