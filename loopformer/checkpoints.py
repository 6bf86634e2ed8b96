"""Checkpoint files: atomic writes and safe loads (no code runs from a checkpoint)."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from loopformer.errors import ConfigError
from loopformer.files import write_atomic


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over
    ``path``: a crash at any moment leaves either the old or the new file, never a torn one."""
    write_atomic(path, lambda f: torch.save(obj, f))


def safe_load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, so a
    crafted file cannot execute code. Unreadable files raise a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # keep the one-line error the only output
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # e.g. "Unsupported global: GLOBAL io.open was not an allowed global by default"
        reason = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]
        reason = reason.split(". ")[0]
        if "Unsupported global" not in reason:
            raise _corrupt(path, reason) from e
        raise ConfigError(f"checkpoint {path} was refused: it holds objects other than "
                          f"tensors and plain containers ({reason})") from e
    except Exception as e:  # torn archives and garbage fail in many ways (EOFError, KeyError..)
        raise _corrupt(path, type(e).__name__) from e


def _corrupt(path: Path, reason: str) -> ConfigError:
    return ConfigError(f"checkpoint {path} is truncated or corrupt and was not loaded "
                       f"({reason}); use another checkpoint")


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic saves and ``weights_only`` loads."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return safe_load(path, map_location=map_location or "cpu")
