"""Where tables come from, and building the cache from them (one code path for all sources).

- ``openml``: Yang et al.'s selection over the OpenML listing, downloaded with the ``openml``
  package (``pip install openml``; not exercised offline).
- ``dir:PATH``: a folder of ``.csv`` files (a header row; the last column is the label unless
  ``label`` names one) and, where pandas and pyarrow are installed, ``.parquet`` files.
- ``sklearn``: real tables that scikit-learn ships, reduced to binary labels (an offline
  demonstration and the tests). They are smaller than the rule allows, so this source relaxes
  ``min_instances`` to 100 and ``min_numeric_features`` to 4; the manifest records it.

Every source yields :class:`~loopformer.tabular.selection.Table` s; :func:`build` checks them,
applies the rule, prepares them and writes the cache.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loopformer.errors import ConfigError
from loopformer.tabular.cache import Manifest, write_cache
from loopformer.tabular.selection import (
    Prepared,
    Rules,
    Table,
    check_classes,
    metadata,
    prepare,
    rejection,
    select_openml,
)

log = logging.getLogger(__name__)

MISSING = {"", "?", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "null", "NULL", "None", "#N/A",
           "<NA>"}
SOURCES = "openml, sklearn or dir:PATH"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def encode_labels(values: list[str]) -> np.ndarray:
    """Class ids for label cells: -1 where missing; otherwise the rank of the value among the
    distinct ones, ordered as numbers when every value is one, else as text (pandas'
    category codes)."""
    present = sorted({v for v in values if v not in MISSING})
    numeric = all(_number(v) is not None for v in present)
    if numeric:  # "1" and "1.0" are one class
        order = sorted({_number(v) for v in present})
        code = {v: order.index(_number(v)) for v in present}
    else:
        code = {v: i for i, v in enumerate(present)}
    return np.array([code.get(v, -1) for v in values], dtype=np.int64)


def table_from_cells(name: str, header: list[str], rows: list[list[str]], label: str | None,
                     key: str) -> Table:
    """A table from text cells: a column is numeric when every present cell is a number
    (else categorical, dropped later); ``label`` names the label column (None: the last)."""
    if not rows:
        raise ConfigError(f"{key}: {name} is empty (no rows under its header)")
    if label is None:
        col = len(header) - 1
    elif label in header:
        col = header.index(label)
    else:
        raise ConfigError(f"{key}: label={label!r} is not a column of {name}; its columns: "
                          f"{', '.join(header)}")
    if len(header) < 2:
        raise ConfigError(f"{key}: {name} has no feature column besides its label")
    labels = encode_labels([r[col] for r in rows])
    names = [h for i, h in enumerate(header) if i != col]
    cells = [[c for i, c in enumerate(r) if i != col] for r in rows]
    features = np.full((len(rows), len(names)), np.nan)
    categorical = np.zeros(len(names), dtype=bool)
    for j in range(len(names)):
        column = [r[j] for r in cells]
        values = [None if c in MISSING else _number(c) for c in column]
        if any(v is None and c not in MISSING for v, c in zip(values, column, strict=True)):
            categorical[j] = True
        else:
            features[:, j] = [np.nan if v is None else v for v in values]
    if categorical.all():
        raise ConfigError(f"{key}: {name} has no numeric feature column (every column "
                          f"besides the label holds text)")
    return Table(name, name, features, categorical, labels, names)


def read_csv(path: Path, label: str | None, key: str) -> Table:
    with path.open(newline="") as f:
        lines = [row for row in csv.reader(f) if row]
    if not lines:
        raise ConfigError(f"{key}: {path.name} is empty")
    header, rows = [h.strip() for h in lines[0]], [[c.strip() for c in r] for r in lines[1:]]
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ConfigError(f"{key}: {path.name} line {i + 2} has {len(r)} cells, its header "
                              f"{len(header)}")
    return table_from_cells(path.stem, header, rows, label, key)


def read_parquet(path: Path, label: str | None, key: str) -> Table:
    if any(importlib.util.find_spec(m) is None for m in ("pandas", "pyarrow")):
        raise ConfigError(f"{key}: {path.name} is a parquet file; reading parquet needs "
                          f"pandas and pyarrow: pip install pandas pyarrow (or convert it to "
                          f"CSV)")
    import pandas as pd

    frame = pd.read_parquet(path).astype(str)  # the cells as text, as from a CSV
    return table_from_cells(path.stem, [str(c) for c in frame.columns],
                            frame.values.tolist(), label, key)


# ---------------------------------------------------------------------------- the sources


@dataclass
class Source:
    """Where tables come from; ``rules``: the rule it selects by unless told otherwise."""

    spec: str
    rules: Rules
    note: str = ""

    def tables(self, rules: Rules, label: str | None, key: str) -> Iterator[Table]:
        raise NotImplementedError


class DirSource(Source):
    def __init__(self, spec: str, path: Path):
        super().__init__(spec, Rules())
        self.path = path

    def tables(self, rules, label, key):
        files = sorted(p for p in self.path.iterdir() if p.suffix in (".csv", ".parquet"))
        if not files:
            raise ConfigError(f"{key}={self.spec}: the folder holds no .csv or .parquet file")
        for p in files:
            yield (read_csv if p.suffix == ".csv" else read_parquet)(p, label, f"{key}={self.spec}")


def _binary(name: str, x: np.ndarray, positive: np.ndarray, columns: list[str]) -> Table:
    return Table(name, f"sklearn:{name}", x.astype(np.float64),
                 np.zeros(x.shape[1], dtype=bool), positive.astype(np.int64), columns)


def _sklearn_tables() -> list[Table]:
    """scikit-learn's bundled real tables as binary problems (each reduction said here)."""
    from sklearn import datasets as d

    out = []
    b = d.load_breast_cancer()  # malignant (0) / benign (1); the 10 "mean" measurements
    means = [i for i, n in enumerate(b.feature_names) if n.startswith("mean ")]
    out.append(_binary("breast_cancer", b.data[:, means], b.target,
                       [b.feature_names[i] for i in means]))
    w = d.load_wine()  # cultivar 1 against cultivars 0 and 2
    out.append(_binary("wine_class1", w.data, w.target == 1, list(w.feature_names)))
    i = d.load_iris()  # versicolor (0) against virginica (1); setosa left out
    two = i.target > 0
    out.append(_binary("iris_versicolor_virginica", i.data[two], i.target[two] == 2,
                       list(i.feature_names)))
    g = d.load_digits()  # 8x8 images pooled 2x2 to 4x4 (16 features); digit >= 5
    pooled = g.images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)
    out.append(_binary("digits_pooled_ge5", pooled, g.target >= 5,
                       [f"pool_{r}_{c}" for r in range(4) for c in range(4)]))
    db = d.load_diabetes(scaled=False)  # disease progression above its median
    out.append(_binary("diabetes_above_median", db.data, db.target > np.median(db.target),
                       list(db.feature_names)))
    return out


class SklearnSource(Source):
    def __init__(self, spec: str):
        super().__init__(spec, Rules(min_instances=100, min_numeric_features=4),
                         "scikit-learn's bundled tables, reduced to binary labels; "
                         "min_instances and min_numeric_features relaxed (see 'relaxed')")

    def tables(self, rules, label, key):
        if label is not None:
            raise ConfigError(f"{key}={self.spec} has its own labels; drop label={label}")
        yield from _sklearn_tables()


class OpenMLSource(Source):
    def __init__(self, spec: str):
        super().__init__(spec, Rules())

    def tables(self, rules, label, key):
        if label is not None:
            raise ConfigError(f"{key}=openml uses each dataset's default target; drop "
                              f"label={label}")
        if importlib.util.find_spec("openml") is None:
            raise ConfigError(f"{key}=openml needs the openml package: pip install openml")
        import openml
        import pandas as pd

        listing = openml.datasets.list_datasets(output_format="dataframe")
        rows = listing.to_dict("records")
        for row in select_openml(rows, rules):
            did = int(row["did"])
            try:
                ds = openml.datasets.get_dataset(did, download_data=True)
                x, y, categorical, names = ds.get_data(target=ds.default_target_attribute)
            except Exception as e:  # the script skips a dataset it cannot load
                log.warning("OpenML dataset %d (%s) cannot be loaded, skipped: %s", did,
                            row["name"], e)
                continue
            if y is None or y.dtype.name != "category":
                continue  # not a classification target
            categorical = np.asarray(categorical, dtype=bool)
            numeric = np.full(x.shape, np.nan)
            for j, col in enumerate(x.columns):  # '?' and other text read as missing
                if not categorical[j]:
                    numeric[:, j] = pd.to_numeric(x[col].replace("?", np.nan),
                                                  errors="coerce").to_numpy(np.float64)
            labels = y.cat.codes.to_numpy().astype(np.int64)  # -1 where missing
            yield Table(str(row["name"]), str(did), numeric, categorical, labels, list(names))


def parse_source(spec: str, key: str = "source") -> Source:
    """The source ``spec`` names; an unknown one, or a folder that does not exist, is a
    ConfigError naming ``key``."""
    spec = str(spec)
    if spec == "openml":
        return OpenMLSource(spec)
    if spec == "sklearn":
        return SklearnSource(spec)
    if spec.startswith("dir:"):
        path = Path(spec[4:]).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{key}={spec}: {path} is not a folder")
        return DirSource(spec, path)
    raise ConfigError(f"{key}={spec!r} is unknown; use {SOURCES}")


def build(source: str | Source, data_dir: str | Path, rules: Rules | None = None,
          label: str | None = None, key: str = "source",
          progress: Callable[[str], None] = log.info) -> Manifest:
    """Read the source's tables, keep those that pass ``rules`` (default: the source's),
    prepare them and write the cache into ``data_dir``. Nothing is written unless every
    table could be read and one passes."""
    src = parse_source(source, key) if isinstance(source, str) else source
    rules = src.rules if rules is None else rules
    prepared: list[tuple[str, str, Prepared]] = []
    user_tables = isinstance(src, DirSource)
    for table in src.tables(rules, label, key):
        if user_tables:  # a user's table with too many classes is refused, not skipped
            check_classes(table, rules, f"{key}={src.spec}")
        why = rejection(metadata(table), rules)
        if why is not None:
            progress(f"{table.name}: skipped ({why})")
            continue
        p = prepare(table)
        if p is None:
            progress(f"{table.name}: skipped (no row or column left)")
            continue
        prepared.append((table.name, table.source_id, p))
        progress(f"{table.name}: {len(p.y_train)} train / {len(p.y_test)} test rows, "
                 f"{p.x_train.shape[1]} features")
    if not prepared:
        raise ConfigError(f"{key}={src.spec}: no table passes the rule {rules}; relax it "
                          f"(python -m loopformer.tabular build --help)")
    return write_cache(data_dir, src.spec, rules, prepared, src.note)
