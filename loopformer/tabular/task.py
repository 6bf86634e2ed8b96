"""In-context classification on real tables, leave one dataset out (Yang et al.'s OpenML
experiment, ``scripts/train_openml.py``).

A prompt is ``n`` distinct rows of one dataset's training split (their script draws rows
without replacement), features zero-padded in front to ``model.n_dims`` (their layout: the
features fill the last coordinates), labels as int64 class ids. The held-out datasets
(``task.test_datasets``, default: the ``task.test_idx``-th of the cache, their convention)
are never drawn for training; :meth:`TabularTask.held_out` draws prompts from their test
rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loopformer.errors import ConfigError
from loopformer.tabular.cache import Manifest, read_dataset, read_manifest
from loopformer.tabular.sources import build, parse_source
from loopformer.tasks import Batch, Task

log = logging.getLogger(__name__)

ROW_SETS = ("test", "all")
DATASET_PER = ("prompt", "batch")


@dataclass
class RowPool:
    """Rows of several datasets, stacked: ``x`` (rows, n_dims) already padded, ``y`` (rows,),
    dataset ``i`` at rows ``offsets[i] : offsets[i] + counts[i]``."""

    names: list[str]
    x: torch.Tensor  # (R, d) float32
    y: torch.Tensor  # (R,) int64
    offsets: torch.Tensor  # (D,) int64
    counts: torch.Tensor  # (D,) int64

    @classmethod
    def stack(cls, names: list[str], parts: list[tuple[np.ndarray, np.ndarray]], n_dims: int
              ) -> RowPool:
        xs = [pad(torch.from_numpy(x), n_dims) for x, _ in parts]
        counts = torch.tensor([len(y) for _, y in parts], dtype=torch.long)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(names, torch.cat(xs), torch.from_numpy(np.concatenate([y for _, y in parts])),
                   offsets, counts)

    def to(self, device: torch.device) -> RowPool:
        return RowPool(self.names, *(t.to(device) for t in (self.x, self.y, self.offsets,
                                                            self.counts)))

    def gather(self, which: torch.Tensor, local: torch.Tensor, dtype: torch.dtype) -> Batch:
        rows = self.offsets[which].unsqueeze(1) + local  # (B, n)
        return Batch(self.x[rows].to(dtype), self.y[rows])  # (B, n, d), (B, n)

    def draw(self, which: torch.Tensor, n_points: int, g: torch.Generator | None,
             dtype: torch.dtype) -> Batch:
        """Per prompt ``b``, ``n_points`` distinct rows of dataset ``which[b]``, in random
        order: the ``n_points`` smallest of uniform scores over its rows."""
        n_max = int(self.counts.max())
        scores = torch.rand(len(which), n_max, generator=g, device=self.x.device)  # (B, N)
        beyond = torch.arange(n_max, device=self.x.device) >= self.counts[which].unsqueeze(1)
        scores.masked_fill_(beyond, 2.0)  # rows of other datasets are never among the smallest
        local = scores.topk(n_points, dim=1, largest=False).indices  # (B, n)
        return self.gather(which, local, dtype)


def pad(x: torch.Tensor, n_dims: int) -> torch.Tensor:
    """``x`` (rows, f) as (rows, n_dims): ``n_dims - f`` zero columns in front, as
    train_openml.py pads."""
    return torch.cat([x.new_zeros(x.shape[0], n_dims - x.shape[1]), x], dim=1)


class TabularTask(Task):
    """Rows of real tables as in-context classification prompts (``task.name=openml``).

    The data fix the features, so the dims curriculum does not apply (``active_dims`` is
    accepted and ignored, as train_openml.py ignores it); Yang et al. keep the points fixed at
    41 whatever their curriculum says, as ``conf/task/openml.yaml`` does. ``n_classes`` is
    1 + the largest class id in the cache. Sampling is vectorised and draws everything from
    the generator passed in.

    ``task.permute_labels=true`` renames the classes of every training prompt at random (a
    permutation per prompt; not in train_openml.py): with few training tables a model can
    otherwise learn each table's labels by heart instead of reading them in context, and
    a held-out table's class ids are arbitrary. The held-out prompts keep their labels.

    Where it differs from train_openml.py: there, one dataset is drawn per step for the whole
    batch (``task.dataset_per=batch`` here; the default draws one per prompt), rows are
    distinct across the whole batch (here: within each prompt) and the batch shrinks to
    ``rows // 41 - 1`` prompts for a small dataset (here the batch size is the config's).
    """

    name = "openml"

    def __init__(self, n_dims: int, source: str = "openml", data_dir: str = "data/openml",
                 label: str | None = None, test_datasets: list[str] | None = None,
                 test_idx: int | None = None, test_rows: str = "test",
                 dataset_per: str = "prompt", permute_labels: bool = False):
        super().__init__(n_dims)
        parse_source(source, "task.source")  # an unknown source is refused before any work
        if test_rows not in ROW_SETS:
            raise ConfigError(f"task.test_rows={test_rows!r}; choose one of {list(ROW_SETS)}")
        if dataset_per not in DATASET_PER:
            raise ConfigError(f"task.dataset_per={dataset_per!r}; choose one of "
                              f"{list(DATASET_PER)}")
        if test_datasets is not None and test_idx is not None:
            raise ConfigError("task.test_datasets and task.test_idx both name the held-out "
                              "datasets; give one of them")
        self.source, self.data_dir, self.test_rows = str(source), str(data_dir), test_rows
        self.dataset_per, self.permute_labels = dataset_per, bool(permute_labels)
        manifest = self._manifest(label)
        self.manifest = manifest
        self.n_classes = manifest.n_classes
        self.test_datasets = self._held_out_names(manifest, test_datasets, test_idx)
        wide = [e for e in manifest.datasets if e.n_features > n_dims]
        if wide:
            e = max(wide, key=lambda e: e.n_features)
            raise ConfigError(f"task.data_dir={data_dir}: {e.name} has {e.n_features} "
                              f"features, more than model.n_dims={n_dims}; raise "
                              f"model.n_dims to {e.n_features} or drop the dataset")
        train = [e for e in manifest.datasets if e.name not in self.test_datasets]
        if not train:
            raise ConfigError(f"task.test_datasets={self.test_datasets} holds out every "
                              f"dataset of task.data_dir={data_dir}; leave one to train on")
        arrays = {e.name: read_dataset(data_dir, e) for e in manifest.datasets}
        self.train = RowPool.stack([e.name for e in train],
                                   [(arrays[e.name]["x_train"], arrays[e.name]["y_train"])
                                    for e in train], n_dims)
        held_rows = {name: self._held_rows(arrays[name]) for name in self.test_datasets}
        self.held = {name: RowPool.stack([name], [rows], n_dims)
                     for name, rows in held_rows.items()}
        self.held_all = RowPool.stack(self.test_datasets, list(held_rows.values()), n_dims)
        self._on: dict[tuple[int, torch.device], RowPool] = {}  # pools moved to a device

    # ------------------------------------------------------------------ set-up

    def _manifest(self, label: str | None) -> Manifest:
        """The cache's manifest; built from ``task.source`` first when ``task.data_dir``
        holds none. A cache built from another source is refused."""
        if not (Path(self.data_dir) / "manifest.json").is_file():
            log.info("task.data_dir=%s holds no cache: building it from task.source=%s",
                     self.data_dir, self.source)
            build(self.source, self.data_dir, label=label, key="task.source")
        manifest = read_manifest(self.data_dir)
        if manifest.source != self.source:
            raise ConfigError(f"task.data_dir={self.data_dir} was built from source="
                              f"{manifest.source}, not task.source={self.source}; use another "
                              f"task.data_dir or task.source={manifest.source}")
        return manifest

    @staticmethod
    def _held_out_names(manifest: Manifest, names: list[str] | None, idx: int | None
                        ) -> list[str]:
        if names is None:
            idx = 0 if idx is None else idx
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise ConfigError(f"task.test_idx={idx!r} must be an integer")
            if not 0 <= idx < len(manifest.datasets):
                raise ConfigError(f"task.test_idx={idx} is outside 0..{len(manifest.datasets) - 1}"
                                  f" (the cache's datasets: {', '.join(manifest.names)})")
            return [manifest.names[idx]]
        names = [names] if isinstance(names, str) else [str(n) for n in names]
        unknown = [n for n in names if n not in manifest.names]
        if unknown or not names:
            raise ConfigError(f"task.test_datasets={names}: {unknown or 'empty'} not in the "
                              f"cache; choose among {', '.join(manifest.names)}")
        return names

    def _held_rows(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.test_rows == "test":
            return arrays["x_test"], arrays["y_test"]
        # the held-out dataset is never trained on: its training rows are unseen as well
        return (np.concatenate([arrays["x_train"], arrays["x_test"]]),
                np.concatenate([arrays["y_train"], arrays["y_test"]]))

    def _pool(self, pool: RowPool, device: torch.device) -> RowPool:
        if pool.x.device == device:
            return pool
        key = (id(pool), device)
        if key not in self._on:
            self._on[key] = pool.to(device)
        return self._on[key]

    # ---------------------------------------------------------------- prompts

    def normalizer(self, active_dims=None):
        raise ConfigError("task.name=openml is scored by accuracy; a normalised squared error "
                          "applies to regression tasks only")

    def check_points(self, pool: RowPool, n_points: int, key: str, fix: str) -> None:
        small = int(pool.counts.argmin())
        if int(pool.counts[small]) < n_points:
            raise ConfigError(f"{key}: {pool.names[small]} has {int(pool.counts[small])} rows, "
                              f"fewer than the {n_points} points of a prompt; lower "
                              f"curriculum.points or {fix}")

    def sample(self, batch_size, n_points, active_dims=None, generator=None,
               dtype=torch.float32) -> Batch:
        """``batch_size`` prompts of ``n_points`` distinct training rows, each from a dataset
        drawn uniformly among the training ones (``task.dataset_per=batch``: one dataset for
        the whole batch, as train_openml.py draws one per step)."""
        self.check_points(self.train, n_points, "task.data_dir", "hold that dataset out")
        device = generator.device if generator is not None else torch.device("cpu")
        pool = self._pool(self.train, device)
        n_sets = len(pool.names)
        shape = (batch_size,) if self.dataset_per == "prompt" else (1,)
        which = torch.randint(n_sets, shape, generator=generator, device=device)
        xs, ys = pool.draw(which.expand(batch_size), n_points, generator, dtype)
        if self.permute_labels:  # a fresh renaming of the classes per prompt
            perm = torch.rand(batch_size, self.n_classes, generator=generator,
                              device=device).argsort(-1)  # (B, C)
            ys = perm.gather(1, ys)  # (B, n)
        return Batch(xs, ys)

    def sample_test(self, batch_size, shape, generator=None) -> Batch:
        """The fixed test set: prompts of distinct held-out rows, each prompt's dataset drawn
        uniformly among the held-out ones (as training draws among the others)."""
        self.check_points(self.held_all, shape.n_points, f"task.test_rows={self.test_rows}",
                          "use task.test_rows=all" if self.test_rows == "test"
                          else "hold out another dataset")
        device = generator.device if generator is not None else torch.device("cpu")
        pool = self._pool(self.held_all, device)
        which = torch.randint(len(pool.names), (batch_size,), generator=generator, device=device)
        return pool.draw(which, shape.n_points, generator, torch.float32)

    def test_prompts(self) -> str:
        return (f"rows of the held-out {', '.join(self.test_datasets)} (task.test_rows="
                f"{self.test_rows})")

    def eval_sets(self, n_prompts, shape, generator=None) -> dict[str, Batch]:
        """One set per held-out dataset: a prompt per held-out row (at most ``n_prompts`` of
        them, a random subset), that row the query at the last position
        (:meth:`held_out`)."""
        return {name: self.held_out(shape.n_points, generator, dataset=name,
                                    n_queries=n_prompts) for name in self.test_datasets}

    def held_out(self, n_points: int, generator: torch.Generator | None = None,
                 dataset: str | None = None, batch_size: int | None = None,
                 dtype: torch.dtype = torch.float32, n_queries: int | None = None) -> Batch:
        """Prompts from a held-out dataset's rows (``task.test_rows``: its test split, or all
        its rows). With ``batch_size``: that many prompts of ``n_points`` distinct rows.
        Without: one prompt per row, that row the query at the last position and
        ``n_points - 1`` distinct other rows before it (Yang et al.'s evaluation notebook);
        with ``n_queries`` fewer than the rows, one prompt for each of a random subset of that
        many rows, in row order."""
        name = self.test_datasets[0] if dataset is None else dataset
        if name not in self.held:
            raise ConfigError(f"dataset={name!r} is not held out; held out: "
                              f"{', '.join(self.test_datasets)}")
        device = generator.device if generator is not None else torch.device("cpu")
        pool = self._pool(self.held[name], device)
        self.check_points(pool, n_points, f"task.test_rows={self.test_rows}",
                          "use task.test_rows=all" if self.test_rows == "test"
                          else "hold out another dataset")
        if batch_size is not None:
            which = torch.zeros(batch_size, dtype=torch.long, device=device)
            return pool.draw(which, n_points, generator, dtype)
        n_rows = int(pool.counts[0])
        queries = torch.arange(n_rows, device=device)  # (Q,)
        if n_queries is not None and n_queries < n_rows:
            pick = torch.randperm(n_rows, generator=generator, device=device)[:n_queries]
            queries = pick.sort().values
        parts = []
        for start in range(0, len(queries), 1024):  # (chunk, rows) scores stay small
            query = queries[start:start + 1024]  # (c,)
            scores = torch.rand(len(query), n_rows, generator=generator, device=device)
            scores[torch.arange(len(query), device=device), query] = 2.0  # not its own context
            context = scores.topk(n_points - 1, dim=1, largest=False).indices  # (c, n-1)
            parts.append(torch.cat([context, query.unsqueeze(1)], dim=1))  # (c, n)
        local = torch.cat(parts)
        return pool.gather(torch.zeros(len(queries), dtype=torch.long, device=device), local,
                           dtype)

    def __repr__(self) -> str:
        return (f"TabularTask(n_dims={self.n_dims}, data_dir={self.data_dir!r}, "
                f"test_datasets={self.test_datasets}, n_classes={self.n_classes})")
