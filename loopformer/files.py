"""Files written atomically: a crash at any moment leaves the old file or the new one, never a
torn one (checkpoints, the tabular cache)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object],
                 mode: int | None = None) -> None:
    """``write(f)`` into a temporary file in ``path``'s folder, fsync, then rename it over
    ``path``; ``mode``: the file's permissions (None: ``mkstemp``'s private 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
