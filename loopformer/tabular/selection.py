"""Which tables enter the cache, and how a table becomes a dataset: Yang et al.'s rule
(Leiay/looped_transformer, ``scripts/gen_openml_data.py``), as pure functions.

Selection works on a dataset's metadata, named as OpenML's qualities
(``NumberOfInstances``, ...): :func:`rejection` says why one dataset fails the thresholds of
:class:`Rules`, :func:`select_openml` applies them to an OpenML listing together with the
listing's own rules (any missing metadata, repeated names, the synthetic ``fri`` datasets).
:func:`prepare` turns one table into standardised features and class ids split 95/5:
categorical columns dropped, ``?`` read as missing, rows without a label dropped, then every
column with a missing value, features standardised over all rows, then
``train_test_split(test_size=0.05, random_state=2021)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from loopformer.errors import ConfigError

# bump when the meaning of a rule or of the preprocessing changes: a cache written under
# another version is refused
FILTER_VERSION = "yang2024-openml-1"
TEST_SIZE = 0.05  # the held-out share of every dataset's rows
SPLIT_SEED = 2021  # train_test_split's random_state in gen_openml_data.py
EXCLUDED_NAME_PART = "fri"  # OpenML's synthetic Friedman datasets (substring, case-sensitive)

QUALITIES = ("NumberOfInstances", "NumberOfFeatures", "NumberOfNumericFeatures",
             "NumberOfClasses", "NumberOfMissingValues", "NumberOfInstancesWithMissingValues",
             "MinorityClassSize", "MajorityClassSize")


@dataclass(frozen=True)
class Rules:
    """The thresholds of gen_openml_data.py; each field one comparison on the metadata."""

    min_instances: int = 1000  # NumberOfInstances >= 1000
    max_instances: int = 10000  # NumberOfInstances <= 10000
    max_features: int = 20  # NumberOfFeatures <= 20 (OpenML counts the target among them)
    min_numeric_features: int = 5  # NumberOfNumericFeatures >= 5 (and > 0)
    max_classes: int = 2  # NumberOfClasses <= 2
    min_minority_ratio: float = 0.5  # MinorityClassSize >= MajorityClassSize * 0.5

    def relaxed(self) -> dict[str, list]:
        """``{rule: [Yang et al.'s value, this value]}`` for every rule that differs."""
        ref = Rules()
        return {f.name: [getattr(ref, f.name), getattr(self, f.name)]
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(ref, f.name)}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def rejection(meta: Mapping[str, Any], rules: Rules = Rules()) -> str | None:
    """Why the dataset described by ``meta`` fails ``rules`` (the first failed rule, in
    gen_openml_data.py's order), or None if it passes. Missing values are never allowed."""
    absent = [q for q in QUALITIES if _missing(meta.get(q))]
    if absent:
        return f"no {absent[0]}"
    m = {q: meta[q] for q in QUALITIES}
    checks = [
        (m["NumberOfNumericFeatures"] > 0, "no numeric feature"),
        (m["NumberOfInstancesWithMissingValues"] == 0, "instances with missing values"),
        (m["NumberOfMissingValues"] == 0, "missing values"),
        (m["NumberOfFeatures"] <= rules.max_features,
         f"NumberOfFeatures={m['NumberOfFeatures']} > {rules.max_features}"),
        (m["NumberOfClasses"] <= rules.max_classes,
         f"NumberOfClasses={m['NumberOfClasses']} > {rules.max_classes}"),
        (m["NumberOfInstances"] <= rules.max_instances,
         f"NumberOfInstances={m['NumberOfInstances']} > {rules.max_instances}"),
        (m["NumberOfInstances"] >= rules.min_instances,
         f"NumberOfInstances={m['NumberOfInstances']} < {rules.min_instances}"),
        (m["NumberOfNumericFeatures"] >= rules.min_numeric_features,
         f"NumberOfNumericFeatures={m['NumberOfNumericFeatures']} < "
         f"{rules.min_numeric_features}"),
        (m["MinorityClassSize"] >= m["MajorityClassSize"] * rules.min_minority_ratio,
         f"MinorityClassSize={m['MinorityClassSize']} < {rules.min_minority_ratio:g} * "
         f"MajorityClassSize={m['MajorityClassSize']}"),
    ]
    return next((why for ok, why in checks if not ok), None)


def select_openml(listing: Iterable[Mapping[str, Any]], rules: Rules = Rules()
                  ) -> list[Mapping[str, Any]]:
    """The rows of an OpenML dataset listing (``did``, ``name`` and the qualities) that
    gen_openml_data.py downloads, in its order (ascending ``did``): a row with any missing
    field is dropped (the listing's ``dropna``), then the thresholds; then, in order, a
    name already taken by an earlier row, or containing ``fri``, is skipped. (Whether the
    target is categorical is only known from the data: :func:`prepare`'s caller checks it.)"""
    kept, names = [], set()
    for row in sorted(listing, key=lambda r: int(r["did"])):
        if any(_missing(v) for v in row.values()) or rejection(row, rules) is not None:
            continue
        if row["name"] in names or EXCLUDED_NAME_PART in row["name"]:
            continue
        names.add(row["name"])
        kept.append(row)
    return kept


class Table(NamedTuple):
    """A raw table: ``features`` (rows, columns) float with NaN where a value is missing
    (non-numeric cells of a categorical column may be anything), which columns are
    categorical, and the label as class ids (-1: missing)."""

    name: str
    source_id: str  # the source's own id (an OpenML did, a file name, a loader)
    features: np.ndarray
    categorical: np.ndarray  # (columns,) bool
    labels: np.ndarray  # (rows,) int64 class ids, -1 where missing
    feature_names: list[str]


def metadata(table: Table) -> dict[str, Any]:
    """OpenML's qualities of ``table``, computed from it, so that one rule selects OpenML
    datasets and a user's tables alike. ``NumberOfFeatures`` counts the label, as OpenML
    does; missing values are counted over the features and the label."""
    numeric = table.features[:, ~table.categorical].astype(np.float64)
    feat_missing = np.isnan(numeric)  # a categorical column's cells are never missing here
    label_missing = table.labels < 0
    row_missing = feat_missing.any(axis=1) | label_missing
    counts = np.bincount(table.labels[~label_missing]) if (~label_missing).any() else []
    counts = [int(c) for c in counts if c > 0]
    return {
        "NumberOfInstances": int(table.features.shape[0]),
        "NumberOfFeatures": int(table.features.shape[1]) + 1,
        "NumberOfNumericFeatures": int((~table.categorical).sum()),
        "NumberOfClasses": len(counts),
        "NumberOfMissingValues": int(feat_missing.sum() + label_missing.sum()),
        "NumberOfInstancesWithMissingValues": int(row_missing.sum()),
        "MinorityClassSize": min(counts, default=0),
        "MajorityClassSize": max(counts, default=0),
    }


class Prepared(NamedTuple):
    x_train: np.ndarray  # (rows, features) float32, standardised
    y_train: np.ndarray  # (rows,) int64 class ids
    x_test: np.ndarray
    y_test: np.ndarray
    kept_columns: list[str]  # the feature columns kept, in order


def standardize(x: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance per column over all rows (scikit-learn's StandardScaler:
    population std; a constant column becomes 0)."""
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(x)


def prepare(table: Table) -> Prepared | None:
    """gen_openml_data.py's preprocessing of one table; None when no row or no column is
    left (that script skips such a dataset)."""
    from sklearn.model_selection import train_test_split

    keep = ~table.categorical
    x = table.features[:, keep].astype(np.float64)  # '?' already read as NaN by the source
    rows = table.labels >= 0  # rows whose label is missing go first
    x, y = x[rows], table.labels[rows]
    cols = ~np.isnan(x).any(axis=0)  # then every column with a missing value
    x = x[:, cols]
    names = [n for n, k in zip(table.feature_names, keep, strict=True) if k]
    names = [n for n, c in zip(names, cols, strict=True) if c]
    if x.shape[0] == 0 or x.shape[1] == 0:
        return None
    x = standardize(x)  # over all rows, before the split, as the script does
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE,
                                              random_state=SPLIT_SEED)
    return Prepared(x_tr.astype(np.float32), y_tr.astype(np.int64), x_te.astype(np.float32),
                    y_te.astype(np.int64), names)


def check_classes(table: Table, rules: Rules, key: str) -> None:
    """A table whose label has more classes than ``rules.max_classes`` is refused (a user's
    own table is refused, not skipped: the read-out could not represent it)."""
    n = len(np.unique(table.labels[table.labels >= 0]))
    if n > rules.max_classes:
        raise ConfigError(f"{key}: {table.name}'s label has {n} classes, more than "
                          f"max_classes={rules.max_classes}; raise max_classes or pick "
                          f"another label")
