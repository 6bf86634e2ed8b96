"""The local cache of prepared datasets (``task.data_dir``): one ``.npz`` per dataset
(``x_train``, ``y_train``, ``x_test``, ``y_test``) and ``manifest.json`` (the filter's version
and thresholds, the source, and per dataset its name, id, shapes, classes and file).

Every file is written under a temporary name and renamed into place, the manifest last; a
dataset's file is named by the digest of its arrays, so a rebuild never overwrites a file an
older manifest still names, and reading checks the digest. A reader only opens what the
manifest names: a leftover temporary file, or a build that stopped before its manifest, is
never read.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loopformer.errors import ConfigError
from loopformer.files import write_atomic
from loopformer.tabular.selection import FILTER_VERSION, SPLIT_SEED, TEST_SIZE, Prepared, Rules

MANIFEST = "manifest.json"
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Entry:
    """One dataset of the manifest."""

    name: str
    source_id: str
    file: str
    n_train: int
    n_test: int
    n_features: int
    n_classes: int  # 1 + the largest class id (the read-out's classes, as Yang et al. count)
    class_counts: list[int]  # rows per class id, train and test together
    columns: list[str]  # the feature columns kept

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Manifest:
    filter_version: str
    source: str
    rules: dict[str, Any]
    relaxed: dict[str, list]  # rules that differ from Yang et al.'s: {rule: [theirs, ours]}
    datasets: list[Entry]
    note: str = ""

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.datasets]

    @property
    def n_classes(self) -> int:
        return max((e.n_classes for e in self.datasets), default=0)


def digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in ARRAYS:
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a temporary file in the same folder and a rename; readable
    by all, as any data (``mkstemp`` makes it private)."""
    write_atomic(path, lambda f: f.write(data), mode=0o644)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_cache(data_dir: str | Path, source: str, rules: Rules,
                datasets: Sequence[tuple[str, str, Prepared]], note: str = "") -> Manifest:
    """Write ``datasets`` (name, source id, prepared arrays) and then the manifest into
    ``data_dir``; files of an earlier cache there that the new manifest does not name are
    removed once it is in place."""
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, source_id, p in datasets:
        arrays = {"x_train": p.x_train, "y_train": p.y_train, "x_test": p.x_test,
                  "y_test": p.y_test}
        file = f"{_safe(name)}-{digest(arrays)[:16]}.npz"
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        _write_atomic(root / file, buf.getvalue())
        y = np.concatenate([p.y_train, p.y_test])
        entries.append(Entry(name, str(source_id), file, len(p.y_train), len(p.y_test),
                             p.x_train.shape[1], int(y.max()) + 1,
                             np.bincount(y).tolist(), list(p.kept_columns)))
    manifest = Manifest(FILTER_VERSION, source, dict(rules.__dict__), rules.relaxed(), entries,
                        note)
    body = {"filter_version": manifest.filter_version, "source": source,
            "rules": manifest.rules, "relaxed": manifest.relaxed,
            "test_size": TEST_SIZE, "split_seed": SPLIT_SEED, "note": note,
            "datasets": [e.as_dict() for e in entries]}
    _write_atomic(root / MANIFEST, (json.dumps(body, indent=1) + "\n").encode())
    named = {e.file for e in entries}
    for old in root.glob("*.npz"):
        if old.name not in named:
            old.unlink()
    return manifest


def read_manifest(data_dir: str | Path, key: str = "task.data_dir") -> Manifest:
    """The manifest of the cache in ``data_dir``; a missing cache or one written under
    another filter version is a ConfigError naming ``key``."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{key}={data_dir} holds no dataset cache ({MANIFEST} is missing); "
                          f"build one: python -m loopformer.tabular build source=... "
                          f"data_dir={data_dir}")
    try:
        body = json.loads(path.read_text())
        version = body.get("filter_version")
    except (ValueError, AttributeError) as e:
        raise ConfigError(f"{key}={data_dir}: {MANIFEST} cannot be read ({e}); rebuild the "
                          f"cache") from e
    if version != FILTER_VERSION:
        raise ConfigError(f"{key}={data_dir} was written by filter version {version!r}, not "
                          f"{FILTER_VERSION!r}; rebuild it: python -m loopformer.tabular build "
                          f"source={body.get('source')} data_dir={data_dir}")
    try:
        entries = [Entry(**e) for e in body["datasets"]]
        return Manifest(version, body["source"], body["rules"], body["relaxed"], entries,
                        body.get("note", ""))
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{key}={data_dir}: {MANIFEST} cannot be read ({e!r}); rebuild the "
                          f"cache") from e


def read_dataset(data_dir: str | Path, entry: Entry, key: str = "task.data_dir"
                 ) -> dict[str, np.ndarray]:
    """The arrays of ``entry``, checked against the digest in its file name."""
    path = Path(data_dir) / entry.file
    if not path.is_file():
        raise ConfigError(f"{key}={data_dir}: {entry.file} ({entry.name}) named by the "
                          f"manifest is missing; rebuild the cache")
    with np.load(path) as f:
        arrays = {k: f[k] for k in ARRAYS}
    if not entry.file.endswith(f"-{digest(arrays)[:16]}.npz"):
        raise ConfigError(f"{key}={data_dir}: {entry.file} ({entry.name}) does not match its "
                          f"digest; rebuild the cache")
    return arrays
