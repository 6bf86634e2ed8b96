"""Study data and page tables: a hand-made study exported and tabulated, and every committed
page with marked tables rebuilt from its committed data."""

import csv
import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from loopformer.errors import ConfigError
from loopformer.results.__main__ import main
from loopformer.results.export import export
from loopformer.results.findings import FIGURE, confirmatory_rows, findings_errors
from loopformer.results.pages import MARKER, pages_with_tables, rebuild

ROOT = Path(__file__).resolve().parents[1]

# per run: the fixed test set's error at 10 examples at steps 500, 1000, 1500, and the
# evaluation's error at 10 examples (trained loops); the threshold is 0.5
RUNS = {
    ("looped", 42): ([0.9, 0.3, 0.05], 0.03),     # escapes by step 1000
    ("looped", 123): ([0.9, 0.7, 0.1], 0.05),     # by 1500
    ("looped", 1233): ([0.9, 0.4, 0.08], 0.04),   # by 1000
    ("drop_3", 42): ([0.95, 0.9, 0.85], 0.85),    # stays on the plateau
    ("drop_3", 123): ([0.95, 0.9, 0.2], 0.06),    # by 1500
    ("drop_3", 1233): ([0.95, 0.45, 0.9], 0.88),  # dips below and comes back: not escaped
}


def fake_run(run_dir: Path, test_errors: list[float], final: float) -> None:
    """A finished run as training leaves it: config.yaml, metrics.csv, eval/results.json."""
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("test:\n  every_n_steps: 500\n")
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["step", "train/loss", "test/error", "test/error_pos/010"])
        w.writeheader()
        w.writerow({"step": 250, "train/loss": 4.0})  # a training row without the test set
        for i, e in enumerate(test_errors):
            w.writerow({"step": 500 * (i + 1), "train/loss": 3.0, "test/error": e + 0.1,
                        "test/error_pos/010": e})
    curve = [final + 0.01 * (10 - k) for k in range(11)]  # error at k examples, k = 0..10
    (run_dir / "eval" / "results.json").write_text(json.dumps({
        "task": "linear_regression", "active_dims": 5, "n_points": 11, "n_prompts": 1280,
        "parameters": 50112, "trained_loops": 6, "torch": "2.13.0",
        "curves": {name: {"kind": kind, "mean": c, "low": c, "high": c} for name, kind, c in [
            ("model", "model", curve), ("model@30", "model", [v + 0.1 for v in curve]),
            ("least_squares", "baseline", [0.0] * 11)]}}))


@pytest.fixture
def study_dir(tmp_path):
    d = tmp_path / "seed_variants_cpu"
    for (variant, seed), (test, final) in RUNS.items():
        fake_run(d / "runs" / variant / f"seed={seed}", test, final)
    return d


def test_export_reads_runs(study_dir, tmp_path):
    out = export(study_dir, tmp_path / "data" / "s.json", overrides={"commit": "abc1234"})
    data = json.loads(out.read_text())
    runs = {(r["variant"], r["seed"]): r for r in data["runs"]}
    assert len(runs) == 6  # the study's other variants have no runs here: left out
    assert {k: r["escape_step"] for k, r in runs.items()} == {
        ("looped", 42): 1000, ("looped", 123): 1500, ("looped", 1233): 1000,
        ("drop_3", 42): None, ("drop_3", 123): 1500, ("drop_3", 1233): None}
    r = runs[("looped", 123)]
    assert r["test"]["step"] == [500, 1000, 1500] and r["test"]["error_last"] == [0.9, 0.7, 0.1]
    assert r["error"]["trained"][10] == pytest.approx(0.05)
    assert r["error"]["30"][10] == pytest.approx(0.15)
    assert r["torch"] == "2.13.0" and r["test_every_n_steps"] == 500
    assert data["escape"] == {"threshold": 0.5, "metric": "test/error_pos/010"}
    assert data["meta"]["commit"] == "abc1234" and data["meta"]["wall_time_s"] >= 0


def test_aggregating_a_study_writes_its_data(study_dir, tmp_path):
    from loopformer.results.aggregate import aggregate
    from loopformer.study import Study

    study = Study.from_config(OmegaConf.load(ROOT / "conf" / "study" / "seed_variants_cpu.yaml"))
    aggregate(study, study_dir)
    data = json.loads((study_dir / "data.json").read_text())
    assert data["meta"]["command"] == "python sweep.py study=seed_variants_cpu"
    assert data["variants"] == ["looped", "drop_3"] and data["seeds"] == [42, 123, 1233]
    # the export refines the sweep's data: same runs, the sweep's metadata kept
    out = export(study_dir, tmp_path / "s.json", overrides={"wall_time_s": 60.0})
    exported = json.loads(out.read_text())
    assert exported["runs"] == data["runs"]
    assert exported["meta"] == {**data["meta"], "wall_time_s": 60.0,
                                "wall_time_source": "stated at export"}
    out = export(study_dir, tmp_path / "s.json", overrides={
        "wall_time_s": 90.0, "wall_time_source": "two sweeps"})
    assert json.loads(out.read_text())["meta"]["wall_time_source"] == "two sweeps"


def test_the_data_carries_the_studys_comparisons(study_dir, tmp_path):
    from loopformer.results.aggregate import aggregate
    from loopformer.study import Study

    config = {**OmegaConf.to_container(OmegaConf.load(
        ROOT / "conf" / "study" / "seed_variants_cpu.yaml")), "correction": "bonferroni",
        "comparisons": [{"id": "E", "a": "looped", "b": "drop_3", "measure": "escape_rate"}]}
    aggregate(Study.from_config(config), study_dir)
    data = json.loads((study_dir / "data.json").read_text())
    assert data["comparisons"] == [{"id": "E", "a": "looped", "b": "drop_3",
                                    "measure": "escape_rate", "design": "paired",
                                    "side": "two-sided", "k": None, "step": None,
                                    "margin": None, "claim": ""}]
    assert (data["correction"], data["alpha"]) == ("bonferroni", 0.05)
    exported = json.loads(export(study_dir, tmp_path / "data" / "s.json").read_text())
    assert exported["comparisons"] == data["comparisons"]  # kept from the sweep's definition
    page = _page(tmp_path, "<!-- table:confirmatory data=s -->\n<!-- /table:confirmatory -->\n")
    text, _ = rebuild(page)
    # looped escaped with all three seeds, drop_3 with one (123): 2 discordant pairs, p = 1/2,
    # the share of them for looped at least sqrt(0.025) = 0.16 (Clopper-Pearson)
    assert ("| E | - | looped vs drop_3 | escape rate | paired, two-sided | 3 vs 3 | 0.25 "
            "(unpaired: 0.1) | 3/3 vs 1/3; discordant 2:0, share 1.00 [0.16, 1.00] | 0.5 | 0.5 | "
            "cannot be resolved with 3 vs 3 seeds (floor 0.25 > threshold 0.05)") in text


def test_an_older_data_file_gets_the_yamls_comparisons_at_export(study_dir, tmp_path):
    from loopformer.results.aggregate import aggregate
    from loopformer.study import Study, load_study

    config = {**OmegaConf.to_container(OmegaConf.load(
        ROOT / "conf" / "study" / "seed_variants_cpu.yaml")), "name": "plateau_cpu"}
    aggregate(Study.from_config(config), study_dir)
    old = json.loads((study_dir / "data.json").read_text())
    for key in ("comparisons", "correction", "alpha"):  # as a sweep wrote it before them
        del old[key], old["config"][key]
    (study_dir / "data.json").write_text(json.dumps(old))
    data = json.loads(export(study_dir, tmp_path / "p.json").read_text())
    assert [c["id"] for c in data["comparisons"]] == [c.id for c in load_study(
        "plateau_cpu").comparisons] == ["E1", "E2", "E3", "E4"]
    assert data["config"]["comparisons"] == data["comparisons"]


def test_a_study_in_another_studys_directory_writes_its_own_data(study_dir, tmp_path):
    from loopformer.results.aggregate import aggregate
    from loopformer.study import Study

    own = Study.from_config(OmegaConf.load(ROOT / "conf" / "study" / "seed_variants_cpu.yaml"))
    aggregate(own, study_dir)
    before = (study_dir / "data.json").read_bytes()
    other = Study.from_config({**OmegaConf.to_container(OmegaConf.load(
        ROOT / "conf" / "study" / "seed_variants_cpu.yaml")), "name": "other",
        "only": ["looped"]})
    aggregate(other, study_dir)  # shares the finished runs of the directory it is run in
    assert (study_dir / "data.json").read_bytes() == before  # the directory's own: untouched
    theirs = json.loads((study_dir / "data.other.json").read_text())
    assert theirs["study"] == "other" and theirs["variants"] == ["looped"]
    out = export(study_dir, tmp_path / "o.json", name="other")  # export finds it by name
    assert json.loads(out.read_text())["runs"] == theirs["runs"]


def test_a_study_without_test_curves_is_aggregated_without_data(study_dir, caplog):
    from loopformer.results.aggregate import aggregate
    from loopformer.study import Study

    for metrics in study_dir.glob("runs/*/*/metrics.csv"):
        metrics.write_text("step,train/loss\n1,2\n")
    study = Study.from_config(OmegaConf.load(ROOT / "conf" / "study" / "seed_variants_cpu.yaml"))
    aggregate(study, study_dir)
    assert (study_dir / "report.md").is_file() and not (study_dir / "data.json").exists()
    assert "test.every_n_steps > 0" in caplog.text


def _page(tmp_path, body: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(f"# A study\n\n{body}\ntext after\n")
    return page


def test_tables_by_hand(study_dir, tmp_path):
    export(study_dir, tmp_path / "data" / "s.json", overrides={"wall_time_s": 5004.6})
    page = _page(tmp_path, "<!-- table:variants data=s k=10 -->\n<!-- /table:variants -->\n"
                 "<!-- table:comparisons data=s pairs=looped:drop_3 -->\nstale\n"
                 "<!-- /table:comparisons -->\n")
    text, changed = rebuild(page)
    assert changed == ["variants", "comparisons"]
    lines = text.splitlines()
    # escape steps 1000, 1500, 1000; error at k=10 over the escaped seeds 0.03, 0.05, 0.04
    assert "| looped | 3/3 | 1000 | 0.0400 [0.0300, 0.0500] | - |" in lines
    # only seed 123 escaped; the two others are listed apart, not averaged in
    assert "| drop_3 | 1/3 | 1500 | 0.0600 [0.0600, 0.0600] | 42: 0.8500, 1233: 0.8800 |" in lines
    # Fisher, margins 4 escaped of 6: tables x = 1, 2, 3 counted 3, 9, 3 of 15 -> p = 6/15;
    # permutation of [0.03, 0.05, 0.04] vs [0.06]: 2 of the 4 splits reach |diff| = 0.02
    # exploratory: raw p only, no verdict
    assert ("| looped vs drop_3 | 3/3 vs 1/3 | p = 0.40 | 0.0400 vs 0.0600 | p = 0.50 (n = 3 vs "
            "1) |") in lines
    assert any(x.startswith("Exploratory: these comparisons are not in the study's "
                            "pre-registered family") for x in lines)
    assert text.endswith("<!-- /table:comparisons -->\n\ntext after\n")
    page.write_text("<!-- table:comparisons data=s pairs=drop_3:drop_3 -->\n"
                    "<!-- /table:comparisons -->\n"
                    "<!-- table:meta data=s -->\n<!-- /table:meta -->\n")
    text = rebuild(page)[0]
    assert "| 1/3 vs 1/3 | p = 1.00 | 0.0600 vs 0.0600 | p = 1.00 (n = 1 vs 1) |" in text
    assert "| wall time | 1 h 23 min 25 s (stated at export) |" in text
    page.write_text(text)
    assert rebuild(page)[1] == []  # rebuilt tables are stable


def test_check_mode_fails_on_a_changed_page(study_dir, tmp_path):
    export(study_dir, tmp_path / "data" / "s.json")
    page = _page(tmp_path, "<!-- table:runs data=s k=5,10 loops=30 -->\n<!-- /table:runs -->\n")
    assert main(["tables", str(page), "check=true"]) == 1
    assert main(["tables", str(page)]) == 0
    assert "| looped | 42 | 2.13.0 | 1000 | 0.0500 (step 1500) | 0.1800 | 0.1300 |" in \
        page.read_text()  # at 30 loops: 0.03 + 0.05 + 0.1 at k=5, 0.03 + 0.1 at k=10
    assert main(["tables", str(page), "check=true"]) == 0
    page.write_text(page.read_text().replace("0.1800", "0.1799"))
    assert main(["tables", str(page), "check=true"]) == 1


@pytest.mark.parametrize("marker, message", [
    ("<!-- table:plots data=s -->", "unknown table kind 'plots'"),
    ("<!-- table:variants data=s colour=red -->", "unknown options ['colour']"),
    ("<!-- table:variants data=s loops=99 -->", "loops=99 is not among"),
    ("<!-- table:comparisons data=s -->", "needs pairs=A:B"),
    ("<!-- table:comparisons data=s pairs=looped:ssm -->", "no runs of variant 'ssm'"),
    ("<!-- table:comparisons data=s pairs=looped:drop_3 of=speed -->",
     "of=speed is not one of: error, escape_step"),
    ("<!-- table:meta data=missing -->", "does not exist"),
])
def test_bad_markers_are_refused(study_dir, tmp_path, marker, message):
    export(study_dir, tmp_path / "data" / "s.json")
    kind = marker.split(":")[1].split()[0]
    page = _page(tmp_path, f"{marker}\n<!-- /table:{kind} -->\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        rebuild(page)


def test_export_needs_a_test_curve(study_dir, tmp_path):
    (study_dir / "runs" / "looped" / "seed=42" / "metrics.csv").write_text("step,train/loss\n1,2\n")
    with pytest.raises(ConfigError, match="test.every_n_steps > 0"):
        export(study_dir, tmp_path / "s.json")


@pytest.mark.parametrize("page", pages_with_tables(ROOT / "docs" / "results")
                         + pages_with_tables(ROOT / "tests" / "data" / "report"),
                         ids=lambda p: p.name)
def test_committed_pages_match_their_data(page):
    assert rebuild(page)[1] == [], (f"{page}: rebuild with python -m loopformer.results tables "
                                    f"{page.relative_to(ROOT)}")


def test_ood_table_by_hand(study_dir, tmp_path):
    """Each run gets two shifts; the table averages the escaped seeds only, per loop count
    (b = 6 and 5b = 30), at each shift's summary position, with one run's baselines."""
    for (variant, seed), (_, final) in RUNS.items():
        path = study_dir / "runs" / variant / f"seed={seed}" / "eval" / "results.json"
        res = json.loads(path.read_text())
        curve = lambda v, k: [0.0] * k + [v] + [0.0] * (10 - k)  # noqa: E731
        res["ood"] = {
            "standard": {"summary_k": 10, "normalizer": 5.0, "curves": {
                "model": {"kind": "model", "mean": curve(final, 10)},
                "model@30": {"kind": "model", "mean": curve(2 * final, 10)},
                "least_squares": {"kind": "baseline", "mean": curve(0.0, 10)}}},
            "orthogonal_train_test": {"summary_k": 4, "normalizer": 5.0, "curves": {
                "model": {"kind": "model", "mean": curve(10 * final, 4)},
                "model@30": {"kind": "model", "mean": curve(20 * final, 4)},
                "least_squares": {"kind": "baseline", "mean": curve(1.5, 4)}}}}
        path.write_text(json.dumps(res))
    export(study_dir, tmp_path / "data" / "s.json")
    page = _page(tmp_path, "<!-- table:ood data=s loops=1,5 -->\n<!-- /table:ood -->\n")
    lines = rebuild(page)[0].splitlines()
    # looped: all three escaped (0.03, 0.05, 0.04); drop_3: only seed 123 (0.06)
    assert ("| shift | k | looped (3/3) @b | looped (3/3) @5b | drop_3 (1/3) @b | "
            "drop_3 (1/3) @5b | least_squares |") in lines
    assert ("| standard | 10 | 0.0400 [0.0300, 0.0500] | 0.0800 [0.0600, 0.1000] | "
            "0.0600 [0.0600, 0.0600] | 0.1200 [0.1200, 0.1200] | 0.0000 |") in lines
    assert ("| orthogonal_train_test | 4* | 0.4000 [0.3000, 0.5000] | 0.8000 [0.6000, 1.0000] | "
            "0.6000 [0.6000, 0.6000] | 1.2000 [1.2000, 1.2000] | 1.5000 |") in lines
    # the trend table: looped (0.03, 0.05, 0.04) -> drop_3 (0.06); of the 4 ways to set one
    # of the 4 values apart, 2 differ in mean by at least the observed 0.02: p = 2/4
    page.write_text("<!-- table:ood_trend data=s pairs=looped:drop_3 -->\n"
                    "<!-- /table:ood_trend -->\n")
    lines = rebuild(page)[0].splitlines()
    assert "| shift | looped (3) -> drop_3 (1) |" in lines
    assert "| standard | 0.0400 -> 0.0600 (p = 0.50) |" in lines
    assert "| orthogonal_train_test | 0.4000 -> 0.6000 (p = 0.50) |" in lines
    # the trend over looped then drop_3: ranks of (0.03, 0.05, 0.04 | 0.06) give rho =
    # 3 / sqrt(3 * 5) = 0.775; |rho| is as large in the 12 of the 24 orders that put the
    # largest or the smallest value in drop_3's slot: p = 0.5
    page.write_text("<!-- table:ood_trend data=s trend=looped,drop_3 -->\n"
                    "<!-- /table:ood_trend -->\n")
    lines = rebuild(page)[0].splitlines()
    assert "| shift | trend over looped (3), drop_3 (1) |" in lines
    assert "| standard | rho = 0.77 (p = 0.50) |" in lines
    page.write_text("<!-- table:ood data=s loops=x -->\n<!-- /table:ood -->\n")
    with pytest.raises(ConfigError, match="loops=x"):
        rebuild(page)
    out = tmp_path / "ood.png"
    assert main(["plot-ood", str(tmp_path / "data" / "s.json"), str(out)]) == 0
    assert out.stat().st_size > 0


def test_a_missing_page_is_refused_in_one_line(tmp_path, capsys):
    assert main(["tables", str(tmp_path / "nosuch.md")]) == 2
    assert "no such page" in capsys.readouterr().err


def test_escape_step_comparison_by_hand(study_dir, tmp_path):
    export(study_dir, tmp_path / "data" / "s.json")
    page = _page(tmp_path, "<!-- table:comparisons data=s pairs=looped:drop_3 of=escape_step -->"
                 "\n<!-- /table:comparisons -->\n")
    lines = rebuild(page)[0].splitlines()
    assert any("the escape step (test every 500 steps), over escaped seeds only" in x
               for x in lines)
    assert ("| A vs B | escaped | escape rate: raw p | mean escape step (A vs B) | escape step: "
            "raw p |") in lines
    # escape steps 1000, 1500, 1000 vs 1500 (seed 123 only): every one of the 4 ways to pick
    # the single B value gives |difference of means| = 1000/3, so p = 4/4
    row = next(x for x in lines if x.startswith("| looped vs drop_3 |"))
    assert "| 1167 vs 1500 | p = 1.00 (n = 3 vs 1) |" in row


def test_learning_curve_plot(study_dir, tmp_path, capsys):
    data = export(study_dir, tmp_path / "s.json")
    out = tmp_path / "curves.png"
    assert main(["plot-curves", str(data), str(out), "variants=[looped,drop_3]"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot-curves", str(data), str(out), "variants=[ssm]"]) == 2
    assert "no runs of variant 'ssm'" in capsys.readouterr().err


def test_a_comparison_across_two_studies(study_dir, tmp_path):
    out = export(study_dir, tmp_path / "data" / "s.json")
    other = json.loads(out.read_text())
    other["study"] = "longer"
    (tmp_path / "data" / "t.json").write_text(json.dumps(other))
    page = _page(tmp_path, "<!-- table:comparisons data=s with=t pairs=looped:longer/drop_3 -->"
                 "\n<!-- /table:comparisons -->\n")
    text = rebuild(page)[0]
    assert "Variants named STUDY/variant are that study's runs (option with=)" in text
    # the same counts as looped vs drop_3 within one study (test_tables_by_hand): p = 6/15
    assert "| looped vs longer/drop_3 | 3/3 vs 1/3 | p = 0.40 | 0.0400 vs 0.0600 |" in text
    other["n_points"] = 21
    (tmp_path / "data" / "t.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="its n_points 21 differs from seed_variants_cpu's 11"):
        rebuild(page)


def test_meta_names_the_variants_with_other_seeds(study_dir, tmp_path):
    import shutil

    shutil.rmtree(study_dir / "runs" / "drop_3" / "seed=1233")
    export(study_dir, tmp_path / "data" / "s.json")
    page = _page(tmp_path, "<!-- table:meta data=s -->\n<!-- /table:meta -->\n")
    assert "| runs | 5 (2 variants x seeds 42, 123, 1233; except drop_3: 42, 123) |" in \
        rebuild(page)[0]


FINDINGS = re.compile(r"<!-- findings -->\n(.*?)<!-- /findings -->", re.DOTALL)
FINDING_ROW = re.compile(r"\| (\d+)[a-z]? \|")


def test_the_findings_table_is_decided_by_the_confirmatory_families():
    """seed_variants_cpu.md gives each of the seed's ten findings one row per verdict,
    ``| N | claim | decided by | figures | verdict |``. A row decided by confirmatory rows
    (plateau_cpu's E*, findings_cpu's F*) quotes only their figures and states their verdict,
    which their adjusted p supports (:func:`findings_errors`); a row no pre-registered
    comparison decides says "not tested" and quotes only figures of the generated tables."""
    results = ROOT / "docs" / "results"
    block = FINDINGS.search((results / "seed_variants_cpu.md").read_text())
    assert block, "seed_variants_cpu.md has no <!-- findings --> table"
    rows = [r for r in block.group(1).splitlines() if FINDING_ROW.match(r)]
    assert sorted({int(FINDING_ROW.match(r).group(1)) for r in rows}) == list(range(1, 11))
    pages = {name: (results / f"{name}.md").read_text() for name in
             ("seed_variants_cpu", "seed_claims_cpu", "plateau_cpu", "findings_cpu")}
    confirmatory = [r for name in ("plateau_cpu", "findings_cpu")
                    for r in confirmatory_rows(pages[name])]
    assert {r.split(" | ")[0].strip("| ")[0] for r in confirmatory} == {"E", "F"}
    generated = "".join(m.group(3) for text in pages.values() for m in MARKER.finditer(text))
    for row in rows:
        _, decided_by, figures, verdict = [c.strip() for c in row.strip(" |").split(" | ")][1:]
        if decided_by == "-":
            assert verdict.startswith("not tested"), row
            missing = [f for f in FIGURE.findall(figures) if f not in generated]
            assert not missing, f"{row}: {missing} not in any generated table"
        else:
            assert findings_errors([f"| {decided_by} | {figures} | {verdict} |"],
                                   confirmatory) == [], row


def test_seed_42_of_seed_variants_cpu_reproduces():
    """A second, fresh run of the study's seed 42 (committed beside it) gives every curve of
    the committed data again: the same machine and torch reproduce a run exactly."""
    data = ROOT / "docs" / "results" / "data"
    study = json.loads((data / "seed_variants_cpu.json").read_text())
    rerun = json.loads((data / "seed_variants_cpu_seed42.json").read_text())
    first = {r["variant"]: r for r in study["runs"] if r["seed"] == 42}
    again = {r["variant"]: r for r in rerun["runs"]}
    assert set(again) == set(first) and len(first) == 17
    for v, r in again.items():
        assert (r["error"], r["test"], r["escape_step"], r["torch"]) == (
            first[v]["error"], first[v]["test"], first[v]["escape_step"], first[v]["torch"]), v
