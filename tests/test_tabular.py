"""Real tables as in-context classification (task.name=openml): Yang et al.'s dataset rule on a
hand-made listing, the preprocessing and split by hand, the cache's atomicity and version, the
folder source, prompts and held-out prompts, the per-prompt classifiers against
scikit-learn fitted directly; training, the fixed test set and the evaluation on the held-out
tables (accuracy by hand, the baselines as fitted directly), a bitwise resume, and the
refusals on the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg, resume_is_bitwise, run_cmd, train_cmd

from loopformer import baselines as B
from loopformer import build_model
from loopformer.analyze.run import Options, analyze, summary
from loopformer.config import Settings
from loopformer.curriculum import CurriculumState
from loopformer.data import generator
from loopformer.errors import ConfigError
from loopformer.evaluate import evaluate, format_table
from loopformer.evaluate import main as evaluate_main
from loopformer.tabular import Rules, TabularTask, build, read_manifest, rejection, select_openml
from loopformer.tabular import cache as cache_mod
from loopformer.tabular.__main__ import main as tabular_main
from loopformer.tabular.selection import FILTER_VERSION, Table, metadata, prepare
from loopformer.tasks import TASKS, build_task
from loopformer.training import run

# ------------------------------------------------------------------ the rule, on a listing

GOOD = {"did": 1, "name": "good", "NumberOfInstances": 1000, "NumberOfFeatures": 20,
        "NumberOfNumericFeatures": 5, "NumberOfClasses": 2, "NumberOfMissingValues": 0,
        "NumberOfInstancesWithMissingValues": 0, "MinorityClassSize": 500,
        "MajorityClassSize": 1000, "status": "active"}


def row(did, name, **changes):
    return {**GOOD, "did": did, "name": name, **changes}


def test_rule_thresholds_at_their_boundaries():
    assert rejection(GOOD) is None  # every threshold met with equality
    assert rejection(row(2, "x", NumberOfInstances=10000, MajorityClassSize=9000,
                         MinorityClassSize=1000)) is not None  # 1000 < 9000 / 2
    fails = {
        "NumberOfInstances": [999, 10001],
        "NumberOfFeatures": [21],
        "NumberOfNumericFeatures": [4, 0],
        "NumberOfClasses": [3],
        "NumberOfMissingValues": [1],
        "NumberOfInstancesWithMissingValues": [1],
        "MinorityClassSize": [499],
        "MajorityClassSize": [None],
    }
    for key, values in fails.items():
        for v in values:
            assert rejection({**GOOD, key: v}) is not None, (key, v)
    assert rejection({**GOOD, "NumberOfInstances": 10000}) is None
    assert rejection({**GOOD, "NumberOfInstances": 999}, Rules(min_instances=900)) is None


def test_select_openml_follows_the_listing_rules_in_did_order():
    listing = [
        row(7, "dup"),                          # a later version of "dup": skipped
        row(3, "dup"),                          # first "dup" by did: kept
        row(5, "friedman1"),                    # the synthetic Friedman sets: skipped
        row(6, "africa"),                       # 'fri' anywhere in the name: skipped as theirs
        row(4, "three_class", NumberOfClasses=3),
        row(2, "small", NumberOfInstances=500),
        row(8, "holes", uploader=float("nan")),  # any missing listing field: dropped
        row(9, "kept"),
        row(1, "unbalanced", MinorityClassSize=100),
    ]
    assert [r["did"] for r in select_openml(listing)] == [3, 9]
    # a failing row does not claim its name: the later "dup" would be kept if did 3 failed
    listing[1] = row(3, "dup", NumberOfInstances=10)
    assert [r["did"] for r in select_openml(listing)] == [7, 9]


# ------------------------------------------------------------------ preprocessing by hand


def raw_table(n=40, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 5.0, -2.0, 1.0]
    feats[3, 2] = np.nan  # column 2 has a missing value: dropped
    feats[:, 1] = 0  # column 1 is categorical here: dropped
    labels = (rng.random(n) > 0.5).astype(np.int64)
    labels[5] = -1  # row 5 has no label: dropped
    return Table("t", "t", feats, np.array([False, True, False, False]), labels,
                 ["a", "cat", "holey", "d"])


def test_prepare_drops_categorical_then_unlabelled_rows_then_holey_columns_and_standardises():
    t = raw_table()
    p = prepare(t)
    assert p.kept_columns == ["a", "d"]
    rows = np.arange(40) != 5
    x = t.features[rows][:, [0, 3]]
    z = (x - x.mean(0)) / x.std(0)  # by hand: population std over all rows, before the split
    # the split is scikit-learn's ShuffleSplit with seed 2021: ceil(5%) test rows first
    n = len(z)
    n_test = math.ceil(0.05 * n)
    perm = np.random.RandomState(2021).permutation(n)
    np.testing.assert_allclose(p.x_test, z[perm[:n_test]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p.x_train, z[perm[n_test:]], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(p.y_test, t.labels[rows][perm[:n_test]])
    np.testing.assert_array_equal(p.y_train, t.labels[rows][perm[n_test:]])
    assert p.x_train.dtype == np.float32 and p.y_train.dtype == np.int64


def test_metadata_counts_the_label_among_features_as_openml_does():
    m = metadata(raw_table())
    assert m["NumberOfFeatures"] == 5 and m["NumberOfNumericFeatures"] == 3
    assert m["NumberOfMissingValues"] == 2 and m["NumberOfInstancesWithMissingValues"] == 2
    assert m["MinorityClassSize"] + m["MajorityClassSize"] == 39


def test_prepare_skips_a_table_with_no_column_left():
    t = raw_table()
    t = t._replace(categorical=np.array([True, True, False, True]))  # only the holey column
    assert prepare(t) is None


# ------------------------------------------------------------------ the folder source


RELAXED = ["min_instances=10", "min_numeric_features=1"]


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")


def tiny_folder(root, sizes=(("a", 3, 60), ("b", 5, 80), ("c", 7, 70)), seed=0):
    """CSV tables with distinct random features, a text column and a balanced 'yes'/'no'
    label in the middle of the columns (named by label=target)."""
    rng = np.random.default_rng(seed)
    root.mkdir(exist_ok=True)
    for name, f, n in sizes:
        x = rng.normal(size=(n, f)).round(6)
        y = np.where(np.arange(n) % 2 == 0, "yes", "no")
        rng.shuffle(y)
        header = [f"f{j}" for j in range(f)] + ["target", "colour"]
        rows = [list(x[i]) + [y[i], "red" if i % 3 else "blue"] for i in range(n)]
        write_csv(root / f"{name}.csv", header, rows)
    return root


def build_dir(folder, data_dir, *extra):
    return tabular_main(["build", f"source=dir:{folder}", f"data_dir={data_dir}",
                         "label=target", *RELAXED, *extra])


def test_dir_source_builds_the_cache_through_the_same_path(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "tables")
    assert build_dir(folder, tmp_path / "cache") == 0
    m = read_manifest(tmp_path / "cache")
    assert m.source == f"dir:{folder}" and m.filter_version == FILTER_VERSION
    assert m.names == ["a", "b", "c"] and m.n_classes == 2
    assert [(e.n_train + e.n_test, e.n_features) for e in m.datasets] == [(60, 3), (80, 5),
                                                                         (70, 7)]
    assert m.datasets[0].columns == ["f0", "f1", "f2"]  # the text column dropped
    assert m.relaxed == {"min_instances": [1000, 10], "min_numeric_features": [5, 1]}
    assert m.datasets[0].class_counts == [30, 30]  # "no" -> 0, "yes" -> 1 (sorted, as pandas)
    listed = tabular_main(["list", f"data_dir={tmp_path / 'cache'}"])
    assert listed == 0 and "       2  c" in capsys.readouterr().out


def test_dir_source_skips_tables_the_rule_rejects(tmp_path):
    folder = tiny_folder(tmp_path / "tables")
    assert build_dir(folder, tmp_path / "cache", "min_instances=65") == 0
    assert read_manifest(tmp_path / "cache").names == ["b", "c"]  # a has 60 rows


@pytest.mark.parametrize("content,needle", [
    ("f0,target\n", "is empty"),
    ("", "is empty"),
    ("f0,f1,target\nx,y,1\nz,w,0\n", "no numeric feature column"),
    ("f0,target\n1,0\n2\n", "line 3 has 1 cells"),
    ("f0,f1,target\n" + "".join(f"{i},{i * 2},{i % 3}\n" for i in range(30)),
     "has 3 classes, more than max_classes=2"),
])
def test_bad_tables_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys,
                                                                       content, needle):
    folder = tiny_folder(tmp_path / "tables")
    (folder / "zz_bad.csv").write_text(content)
    status = tabular_main(["build", f"source=dir:{folder}", f"data_dir={tmp_path / 'cache'}",
                           *RELAXED])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: source=dir:") and needle in err
    assert err.count("\n") == 1
    assert not (tmp_path / "cache").exists()


def test_bad_build_options_are_refused_in_one_line(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "tables")
    for argv, needle in [
        (["source=nope"], "source='nope' is unknown"),
        ([f"source=dir:{tmp_path / 'missing'}"], "is not a folder"),
        ([f"source=dir:{folder}", "label=nope"], "label='nope' is not a column of a"),
        (["source=sklearn", "label=x"], "has its own labels"),
    ]:
        status = tabular_main(["build", *argv, f"data_dir={tmp_path / 'cache'}"])
        err = capsys.readouterr().err
        assert status == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "cache").exists()


def test_parquet_without_pandas_is_refused_with_the_install_line(tmp_path, capsys):
    import importlib.util

    if all(importlib.util.find_spec(m) for m in ("pandas", "pyarrow")):
        pytest.skip("pandas and pyarrow are installed: parquet is read")
    folder = tiny_folder(tmp_path / "tables")
    (folder / "more.parquet").write_bytes(b"PAR1")
    assert build_dir(folder, tmp_path / "cache") == 2
    assert "pip install pandas pyarrow" in capsys.readouterr().err


def test_the_command_lists_its_options(capsys):
    assert tabular_main(["build", "--help"]) == 0
    out = capsys.readouterr().out
    assert "source" in out and "min_instances" in out and "dir:PATH" in out


def test_more_classes_are_allowed_when_max_classes_says_so(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    rng = np.random.default_rng(1)
    write_csv(folder / "three.csv", ["u", "v", "label"],
              [[*rng.normal(size=2).round(6), i % 3] for i in range(60)])
    build(f"dir:{folder}", tmp_path / "cache", Rules(min_instances=10, min_numeric_features=1,
                                                     max_classes=3, min_minority_ratio=0))
    assert read_manifest(tmp_path / "cache").n_classes == 3


# ------------------------------------------------------------------ the cache


def test_a_leftover_temporary_file_is_never_read(tmp_path):
    folder = tiny_folder(tmp_path / "tables")
    build_dir(folder, tmp_path / "cache")
    before = read_manifest(tmp_path / "cache")
    (tmp_path / "cache" / ".manifest.json.x1.tmp").write_text("{not json")
    (tmp_path / "cache" / ".a-0000.npz.x2.tmp").write_bytes(b"half")
    assert read_manifest(tmp_path / "cache") == before
    t = TabularTask(8, f"dir:{folder}", str(tmp_path / "cache"))
    assert t.train.names == ["b", "c"]
    only_tmp = tmp_path / "half"
    only_tmp.mkdir()
    (only_tmp / ".manifest.json.x3.tmp").write_text("{}")
    with pytest.raises(ConfigError, match=r"task.data_dir=.*half holds no dataset cache"):
        read_manifest(only_tmp)


def test_a_rebuild_that_stops_midway_leaves_the_old_cache_readable(tmp_path, monkeypatch):
    folder = tiny_folder(tmp_path / "tables")
    build_dir(folder, tmp_path / "cache")
    old = read_manifest(tmp_path / "cache")
    old_x = cache_mod.read_dataset(tmp_path / "cache", old.datasets[1])["x_train"].copy()
    tiny_folder(tmp_path / "tables", seed=1)  # new content for the rebuild
    calls = []

    def dies_on_the_second(file, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(file, **arrays)

    real = np.savez
    monkeypatch.setattr(cache_mod.np, "savez", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        build_dir(folder, tmp_path / "cache")
    monkeypatch.undo()
    assert read_manifest(tmp_path / "cache") == old
    now = cache_mod.read_dataset(tmp_path / "cache", old.datasets[1])["x_train"]
    np.testing.assert_array_equal(now, old_x)
    assert not list((tmp_path / "cache").glob(".*.tmp"))
    build_dir(folder, tmp_path / "cache")  # a complete rebuild replaces it, old files removed
    new = read_manifest(tmp_path / "cache")
    assert new != old
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.npz")) == sorted(
        e.file for e in new.datasets)


def test_a_cache_of_another_filter_version_is_refused(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "tables")
    build_dir(folder, tmp_path / "cache")
    path = tmp_path / "cache" / "manifest.json"
    body = json.loads(path.read_text())
    body["filter_version"] = "yang2024-openml-0"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError, match="task.data_dir=.* filter version 'yang2024-openml-0'"):
        TabularTask(8, f"dir:{folder}", str(tmp_path / "cache"))
    assert tabular_main(["list", f"data_dir={tmp_path / 'cache'}"]) == 2
    assert capsys.readouterr().err.startswith("error: data_dir=")


def test_a_file_that_does_not_match_its_digest_is_refused(tmp_path):
    folder = tiny_folder(tmp_path / "tables")
    build_dir(folder, tmp_path / "cache")
    entry = read_manifest(tmp_path / "cache").datasets[0]
    other = read_manifest(tmp_path / "cache").datasets[1]
    (tmp_path / "cache" / other.file).replace(tmp_path / "cache" / entry.file)
    with pytest.raises(ConfigError, match="does not match its digest"):
        cache_mod.read_dataset(tmp_path / "cache", entry)


# ------------------------------------------------------------------ the task and its prompts


@pytest.fixture
def tiny_task(tmp_path):
    folder = tiny_folder(tmp_path / "tables")
    build_dir(folder, tmp_path / "cache")

    def make(n_dims=8, **kw):
        kw = {"source": f"dir:{folder}", "data_dir": str(tmp_path / "cache"), **kw}
        return build_task("openml", n_dims, **kw)

    make.cache = tmp_path / "cache"
    return make


def rows_of(cache_dir):
    m = read_manifest(cache_dir)
    return {e.name: cache_mod.read_dataset(cache_dir, e) for e in m.datasets}


def test_prompts_are_distinct_padded_training_rows_of_one_dataset(tiny_task):
    t = tiny_task()
    assert "openml" in TASKS and t.n_classes == 2 and t.test_datasets == ["a"]  # test_idx 0
    data = rows_of(tiny_task.cache)
    g = torch.Generator().manual_seed(3)
    xs, ys = t.sample(32, 11, active_dims=2, generator=g)  # active_dims: the data's own
    assert xs.shape == (32, 11, 8) and xs.dtype == torch.float32 and ys.dtype == torch.int64
    seen = set()
    for b in range(32):
        f = int((xs[b].abs().sum(0) > 0).sum())  # the dataset's features: non-zero columns
        name = {5: "b", 7: "c"}[f]
        seen.add(name)
        assert xs[b, :, : 8 - f].eq(0).all()  # zeros in front, as train_openml.py pads
        x_tr, y_tr = data[name]["x_train"], data[name]["y_train"]
        idx = [int(np.argmin(np.abs(x_tr - xs[b, i, 8 - f:].numpy()).sum(1))) for i in range(11)]
        np.testing.assert_array_equal(x_tr[idx], xs[b, :, 8 - f:].numpy())
        np.testing.assert_array_equal(y_tr[idx], ys[b].numpy())
        assert len(set(idx)) == 11  # without replacement
    assert seen == {"b", "c"}  # never "a", the held-out dataset


def test_prompts_are_a_function_of_the_generator(tiny_task):
    t = tiny_task()
    a = t.sample(16, 11, generator=torch.Generator().manual_seed(5))
    b = t.sample(16, 11, generator=torch.Generator().manual_seed(5))
    c = t.sample(16, 11, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys)
    assert not torch.equal(a.xs, c.xs)
    t2 = tiny_task()  # a second task from the same cache draws the same prompts
    d = t2.sample(16, 11, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.xs, d.xs)
    h1 = t.held_out(3, torch.Generator().manual_seed(1), batch_size=4)
    h2 = t.held_out(3, torch.Generator().manual_seed(1), batch_size=4)
    assert torch.equal(h1.xs, h2.xs) and torch.equal(h1.ys, h2.ys)


def test_one_dataset_per_batch_draws_every_prompt_from_it(tiny_task):
    t = tiny_task(dataset_per="batch")
    for seed in range(4):
        xs, _ = t.sample(8, 5, generator=torch.Generator().manual_seed(seed))
        width = (xs.abs().sum(1) > 0).sum(-1)  # (B,) non-zero coordinates per prompt
        assert (width == width[0]).all()


def test_permuted_labels_rename_the_classes_of_each_training_prompt(tiny_task):
    t, plain = tiny_task(permute_labels=True), tiny_task()
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    xs, ys = t.sample(64, 11, generator=g())
    xs_plain, ys_plain = plain.sample(64, 11, generator=g())
    assert torch.equal(xs, xs_plain)  # the same rows; the renaming is drawn after them
    flipped = (ys != ys_plain).all(1)  # two classes: a prompt keeps its labels or swaps them
    assert torch.equal(flipped | (ys == ys_plain).all(1), torch.ones(64, dtype=torch.bool))
    assert 16 < int(flipped.sum()) < 48  # each prompt flips with probability 1/2
    h, h_plain = (task.held_out(3, torch.Generator().manual_seed(0), batch_size=8)
                  for task in (t, plain))
    assert torch.equal(h.ys, h_plain.ys)  # the held-out prompts keep their labels


def test_held_out_prompts_come_from_the_held_out_test_rows(tiny_task):
    t = tiny_task(test_datasets=["b"], test_rows="all")
    data = rows_of(tiny_task.cache)["b"]
    every = np.concatenate([data["x_train"], data["x_test"]])
    labels = np.concatenate([data["y_train"], data["y_test"]])
    h = t.held_out(11, torch.Generator().manual_seed(0))  # one prompt per row, row last
    assert h.xs.shape == (80, 11, 8)
    np.testing.assert_array_equal(h.xs[:, -1, 3:].numpy(), every)
    np.testing.assert_array_equal(h.ys[:, -1].numpy(), labels)
    for b in range(80):
        rows = {tuple(r) for r in h.xs[b, :, 3:].numpy().tolist()}
        assert len(rows) == 11  # distinct, the query not among its context
    assert t.train.names == ["a", "c"]
    test_only = tiny_task(test_datasets=["b"])
    with pytest.raises(ConfigError, match="task.test_rows=test: b has 4 rows, fewer than the "
                                          "5 points.*task.test_rows=all"):
        test_only.held_out(5, torch.Generator())
    h = test_only.held_out(4, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(np.sort(h.xs[:, -1, 3].numpy()), np.sort(data["x_test"][:, 0]))


def test_task_settings_are_checked_before_any_work(tiny_task, tmp_path):
    with pytest.raises(ConfigError, match=r"task.test_datasets=\['zz'\]: \['zz'\] not in the "
                                          r"cache; choose among a, b, c"):
        tiny_task(test_datasets=["zz"])
    with pytest.raises(ConfigError, match=r"task.test_idx=3 is outside 0..2"):
        tiny_task(test_idx=3)
    assert tiny_task(test_idx=2).test_datasets == ["c"]
    with pytest.raises(ConfigError, match="c has 7 features, more than model.n_dims=6"):
        tiny_task(n_dims=6)
    with pytest.raises(ConfigError, match="task.source='web' is unknown"):
        tiny_task(source="web")
    with pytest.raises(ConfigError, match="built from source=dir:.*not task.source=sklearn"):
        tiny_task(source="sklearn")
    with pytest.raises(ConfigError, match="holds out every dataset"):
        tiny_task(test_datasets=["a", "b", "c"])
    with pytest.raises(ConfigError, match="task.test_rows='dev'"):
        tiny_task(test_rows="dev")
    with pytest.raises(ConfigError, match="task.data_dir: c has 66 rows, fewer than the 67"):
        tiny_task().sample(2, 67, generator=torch.Generator())


def test_the_bundled_tables_build_offline_and_say_what_they_relax(tmp_path):
    t = TabularTask(20, "sklearn", str(tmp_path / "sk"), test_rows="all")  # builds the cache
    m = t.manifest
    assert m.names == ["breast_cancer", "wine_class1", "iris_versicolor_virginica",
                       "digits_pooled_ge5", "diabetes_above_median"]
    assert m.relaxed == {"min_instances": [1000, 100], "min_numeric_features": [5, 4]}
    assert "relaxed" in m.note
    counts = {e.name: (e.n_train + e.n_test, e.n_features, e.class_counts) for e in m.datasets}
    assert counts["breast_cancer"] == (569, 10, [212, 357])
    assert counts["wine_class1"] == (178, 13, [107, 71])
    assert counts["digits_pooled_ge5"] == (1797, 16, [901, 896])
    assert t.n_classes == 2 and t.test_datasets == ["breast_cancer"]


# ------------------------------------------------------------------ per-prompt classifiers


@pytest.fixture(scope="module")
def bundled_prompts(tmp_path_factory):
    t = TabularTask(20, "sklearn", str(tmp_path_factory.mktemp("sk")))
    return t.sample(3, 25, generator=torch.Generator().manual_seed(0))


def by_hand(xs, ys, fit_predict):
    """Each prompt, each k: fit on the first k examples, predict example k (k = 0: class 0;
    one class among them: that class)."""
    x, y = xs.double().numpy(), ys.numpy()
    out = np.zeros(y.shape, dtype=np.int64)
    for b in range(x.shape[0]):
        for k in range(1, x.shape[1]):
            classes = np.unique(y[b, :k])
            out[b, k] = classes[0] if len(classes) == 1 else fit_predict(x[b, :k], y[b, :k],
                                                                         x[b, k:k + 1], k)
    return out


def test_classifiers_match_scikit_learn_fitted_on_the_same_rows(bundled_prompts):
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    xs, ys = bundled_prompts
    cases = [
        (B.LogisticRegression(n_jobs=1),
         lambda x, y, q, k: LogisticRegression(C=1.0, max_iter=1000).fit(x, y).predict(q)[0]),
        (B.KNNClassifier(3),
         lambda x, y, q, k: KNeighborsClassifier(min(3, k)).fit(x, y).predict(q)[0]),
    ]
    for baseline, fit_predict in cases:
        got = baseline(xs, ys)
        assert got.dtype == torch.int64 and got.shape == ys.shape
        np.testing.assert_array_equal(got.numpy(), by_hand(xs, ys, fit_predict), baseline.name)
    majority = B.MajorityClass()(xs, ys).numpy()
    for b in range(3):  # DummyClassifier also for a single class; class 0 before any example
        assert majority[b, 0] == 0
        for k in range(1, 25):
            dummy = DummyClassifier(strategy="most_frequent").fit(xs[b, :k].numpy(), ys[b, :k])
            assert majority[b, k] == dummy.predict(xs[b, k:k + 1].numpy())[0], (b, k)


def test_xgboost_classifier_matches_xgboost_fitted_on_the_same_rows(bundled_prompts):
    xgb = pytest.importorskip("xgboost")
    xs, ys = bundled_prompts
    xs, ys = xs[:2, :12], ys[:2, :12]

    def fit_predict(x, y, q, k):
        classes = np.unique(y)
        est = xgb.XGBClassifier(n_estimators=10, max_depth=3, learning_rate=0.3, n_jobs=1,
                                random_state=0, verbosity=0)
        est.fit(x.astype(np.float32), np.searchsorted(classes, y))
        return classes[est.predict(q.astype(np.float32))[0]]

    got = B.XGBoostClassifier(n_estimators=10, max_depth=3, n_jobs=1)(xs, ys)
    np.testing.assert_array_equal(got.numpy(), by_hand(xs, ys, fit_predict))


def test_classifier_facts_on_handmade_prompts():
    # two well-separated clusters: 1-NN and logistic regression are right once both classes
    # have been seen; the majority class ties go to the smallest id
    xs = torch.tensor([[[0.0, 0.0], [10.0, 10.0], [0.1, 0.0], [10.0, 9.9], [0.0, 0.2]]])
    ys = torch.tensor([[0, 1, 0, 1, 0]])
    assert B.KNNClassifier(1)(xs, ys).tolist() == [[0, 0, 0, 1, 0]]
    assert B.MajorityClass()(xs, ys).tolist() == [[0, 0, 0, 0, 0]]  # 1:1 after two: class 0
    assert B.MajorityClass()(xs, 1 - ys).tolist() == [[0, 1, 0, 1, 0]]  # ties at 2 and 4
    assert B.LogisticRegression(n_jobs=1)(xs, ys)[0, 2:].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="class ids"):
        B.MajorityClass()(xs, ys.float())


def test_classifiers_are_named_by_their_shorthands():
    built = B.build_baselines(["majority_class", "knn_5", "logistic_regression_0.5",
                               "xgboost_classifier"])
    assert [b.name for b in built] == ["majority_class", "knn_5", "logistic_regression_C0.5",
                                       "xgboost_classifier_n100_depth6_lr0.3"]


# ------------------------------------------------------------------ test set and evaluation


def test_the_fixed_test_set_draws_distinct_rows_of_the_held_out_tables(tiny_task):
    t = tiny_task(test_datasets=["a", "b"], test_rows="all")
    data = rows_of(tiny_task.cache)
    shape = CurriculumState(n_dims=8, n_points=7, n_loops=1)
    xs, ys = t.sample_test(40, shape, torch.Generator().manual_seed(0))
    seen = set()
    for b in range(40):
        f = int((xs[b].abs().sum(0) > 0).sum())
        name = {3: "a", 5: "b"}[f]  # never "c", a training table
        seen.add(name)
        every = np.concatenate([data[name]["x_train"], data[name]["x_test"]])
        labels = np.concatenate([data[name]["y_train"], data[name]["y_test"]])
        idx = [int(np.argmin(np.abs(every - xs[b, i, 8 - f:].numpy()).sum(1))) for i in range(7)]
        np.testing.assert_array_equal(every[idx], xs[b, :, 8 - f:].numpy())
        np.testing.assert_array_equal(labels[idx], ys[b].numpy())
        assert len(set(idx)) == 7
    assert seen == {"a", "b"}


@pytest.fixture(scope="module")
def sk_cache(tmp_path_factory):
    """scikit-learn's bundled tables, cached once (breast_cancer: 569 rows, 357 of class 1;
    wine_class1: 178 rows, 71 of class 1)."""
    path = tmp_path_factory.mktemp("sk_cache")
    TabularTask(16, "sklearn", str(path))
    return path


def tiny_openml(cache, *more):
    """TINY (9-point prompts, b = 3) on the bundled tables, breast_cancer held out."""
    return [*TINY, "task=openml", "task.source=sklearn", f"task.data_dir={cache}",
            "task.test_rows=all", "model.n_dims=16", *more]


def test_evaluate_scores_each_held_out_table_accuracy_by_hand(sk_cache):
    # a model whose logits favour class 1 whatever it reads: its accuracy is the share of class
    # 1 among the answers; with a prompt per held-out row (n_prompts above the rows), that
    # share at the last position is the table's own (357 / 569 and 71 / 178)
    cfg = compose_cfg(*tiny_openml(sk_cache, "task.test_datasets=[breast_cancer,wine_class1]",
                                   "eval.n_prompts=1000", "eval.n_resamples=20",
                                   "eval.baselines=[majority_class]", "eval.extra_loops=[5]"))
    spec = Settings.from_config(cfg)
    model = build_model(spec.model)
    with torch.no_grad():
        model.read_out.weight.zero_()
        model.read_out.bias.copy_(torch.tensor([0.0, 1.0]))
    res = evaluate(model, spec, device="cpu")
    blocks = res["datasets"]
    assert list(blocks) == ["breast_cancer", "wine_class1"]
    assert blocks["breast_cancer"]["n_prompts"] == 569 and blocks["wine_class1"]["n_prompts"] == 178
    assert blocks["breast_cancer"]["curves"]["model"]["mean"][-1] == pytest.approx(357 / 569)
    assert blocks["wine_class1"]["curves"]["model"]["mean"][-1] == pytest.approx(71 / 178)
    assert res["curves"]["model"]["mean"][-1] == pytest.approx((357 + 71) / (569 + 178))
    sets = spec.function.eval_sets(1000, spec.curriculum.final,
                                   generator(torch.device("cpu"), spec.eval.seed, 0))
    for name, (_, ys) in sets.items():
        block = blocks[name]
        assert block["accuracy"]["model"] == pytest.approx(float((ys == 1).float().mean()))
        np.testing.assert_allclose(block["curves"]["model"]["mean"],
                                   (ys == 1).double().mean(0).numpy(), rtol=1e-6)
        np.testing.assert_allclose(block["curves"]["model@5"]["mean"],
                                   block["curves"]["model"]["mean"])
        assert block["curves"]["majority_class"]["kind"] == "baseline"
    assert res["position"] == "in-context examples" and res["chance"] == 0.5
    table = format_table(res)
    assert "breast_cancer, 9 points, 569 prompts" in table and "all held-out datasets" in table


def test_the_baselines_through_evaluate_are_the_classifiers_fitted_directly(sk_cache, tmp_path,
                                                                           capsys):
    xgb = "{name:xgboost_classifier,n_estimators:5,max_depth:2}"
    cfg = compose_cfg(*tiny_openml(sk_cache, "trainer.max_steps=2", "eval.at_end=true",
                                   "eval.n_prompts=24", "eval.n_resamples=20",
                                   f"eval.baselines=[majority_class,knn_3,logistic_regression,"
                                   f"{xgb}]"), run_dir=tmp_path / "run")
    res = run(cfg).eval_results
    spec = Settings.from_config(cfg)
    (xs, ys), = spec.function.eval_sets(24, spec.curriculum.final,
                                        generator(torch.device("cpu"), spec.eval.seed, 0)).values()
    assert xs.shape == (24, 9, 16)  # 24 of the 569 rows as queries, each with 8 others before it
    direct = [B.MajorityClass(), B.KNNClassifier(3), B.LogisticRegression(n_jobs=1),
              B.XGBoostClassifier(n_estimators=5, max_depth=2, n_jobs=1)]
    curves = res["datasets"]["breast_cancer"]["curves"]
    for baseline in direct:
        right = (baseline(xs, ys) == ys).double()
        np.testing.assert_allclose(curves[baseline.name]["mean"], right.mean(0).numpy(),
                                   err_msg=baseline.name)
        assert res["accuracy"][baseline.name] == pytest.approx(float(right.mean()))
    assert (tmp_path / "run" / "eval" / "accuracy_vs_position.png").is_file()
    # a regression baseline asked of the run: one line naming the key and the allowed names
    assert evaluate_main([f"run={tmp_path / 'run'}", "baselines=[knn_3,averaging]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: eval.baselines=['knn_3', 'averaging'] asks for averaging, but task.name=openml "
        "takes classifiers; allowed: ['default', 'majority_class', 'knn[_<n_neighbors>]', "
        "'logistic_regression[_<C>]', 'xgboost_classifier']"), err


def test_resume_equals_uninterrupted_for_real_tables(sk_cache, tmp_path):
    tiny = tiny_openml(sk_cache, "checkpoint.every_n_steps=4", "test.every_n_steps=4")
    logged = resume_is_bitwise(tmp_path, *tiny)
    assert {"train/accuracy", "test/accuracy", "test/accuracy_pos/000",
            "test/accuracy_pos/008"} <= logged


@pytest.mark.parametrize("overrides,message", [
    (["eval.baselines=[least_squares]"], "error: eval.baselines=['least_squares'] asks for "
                                         "least_squares, but task.name=openml takes "
                                         "classifiers"),
    (["task.test_datasets=[iris]"], "error: task.test_datasets=['iris']: ['iris'] not in the "
                                    "cache; choose among breast_cancer, wine_class1"),
    (["model.n_classes=3"], "error: model.n_classes=3 does not fit task.name=openml, whose "
                            "read-out is 2 classes"),
])
def test_the_command_line_refuses_bad_input_in_one_line(sk_cache, tmp_path, overrides, message):
    proc = run_cmd(train_cmd(*tiny_openml(sk_cache)[len(TINY):], *overrides,
                             f"run_dir={tmp_path / 'run'}"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "run").exists()


def test_classifiers_are_refused_for_a_regression_task():
    with pytest.raises(ConfigError, match=r"eval.baselines=\['knn_3'\] asks for knn_3, but "
                                          r"task.name=linear_regression takes regressors; "
                                          r"allowed: \['default', 'least_squares'"):
        Settings.from_config(compose_cfg("eval.baselines=[knn_3]"))


def test_the_analysis_reads_the_held_out_tables_prompts(sk_cache, tmp_path, caplog):
    # a model whose logits favour class 1 whatever it reads answers class 1 at every loop: its
    # accuracy at the last position is the share of class 1 among the queries, which on the
    # held-out breast-cancer rows is near the table's 357 / 569 (training prompts, their
    # classes renamed at random, would give about 0.5)
    cfg = compose_cfg(*tiny_openml(sk_cache, "task.permute_labels=true"))
    spec = Settings.from_config(cfg)
    model = build_model(spec.model)
    with torch.no_grad():
        model.read_out.weight.zero_()
        model.read_out.bias.copy_(torch.tensor([0.0, 1.0]))
    r = analyze(model, spec, Options(run=tmp_path, n_prompts=400, max_loops=4),
                ("dynamics",), "cpu")
    _, ys = spec.function.sample_test(400, spec.curriculum.final,
                                      generator(torch.device("cpu"), 0, 0))
    last = r["dynamics"]["accuracy"]["last"]["mean"]
    assert last == pytest.approx([float((ys[:, -1] == 1).float().mean())] * 4)
    assert abs(last[-1] - 357 / 569) < 0.08
    assert r["prompts"] == "rows of the held-out breast_cancer (task.test_rows=all)"
    assert "400 prompts (rows of the held-out breast_cancer" in summary(r)
