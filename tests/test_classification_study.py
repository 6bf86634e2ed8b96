"""A classification study end to end without training (issues 33, 34): hand-made runs shaped as
``evaluate`` writes a task=openml run (two held-out tables, a per-prompt classifier) are
aggregated as ``sweep.py`` does, exported, and every table a results page uses is rendered,
each figure worked out by hand; and the study's overrides reach its runs as Hydra reads them."""

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from loopformer import study as study_mod
from loopformer.errors import ConfigError
from loopformer.results.aggregate import aggregate
from loopformer.results.export import export
from loopformer.results.pages import rebuild
from loopformer.results.study_plots import plot_data_file
from loopformer.rundir import RunDir
from loopformer.study import Comparison, Job, Study, job_config, launch

# per dataset, the model's accuracy at positions 0..4 (the seed adds 0.02 s at each); the two
# tables draw as many prompts, so the pooled curve is their mean
CURVES = {"breast_cancer": [0.5, 0.6, 0.7, 0.8, 0.9], "wine": [0.5, 0.5, 0.6, 0.6, 0.7]}
TRANSFORMER_SHIFT = -0.1
KNN = {"breast_cancer": [0.5, 0.7, 0.8, 0.9, 1.0], "wine": [0.5, 0.6, 0.7, 0.8, 0.9]}
# the fixed test set's accuracy at the last position at steps 100, 200, 300
TEST = {("looped", 1): [0.5, 0.8, 0.9],      # above 0.75 from step 200
        ("looped", 2): [0.5, 0.7, 0.74],     # never above 0.75 (above the default 0.5)
        ("transformer", 1): [0.8, 0.7, 0.8],  # from step 300
        ("transformer", 2): [0.6, 0.76, 0.9]}  # from step 200


def _band(c):
    return {"mean": c, "low": c, "high": c}


def _block(curves: dict) -> dict:
    return {"n_prompts": 16, "loss": 0.5,
            "accuracy": {k: sum(c) / len(c) for k, c in curves.items()},
            "curves": {k: {"kind": "baseline" if k == "knn_3" else "model", **_band(c)}
                       for k, c in curves.items()}}


def _write_run(root: Path, variant: str, seed: int) -> None:
    shift = 0.02 * seed + (TRANSFORMER_SHIFT if variant == "transformer" else 0.0)
    per = {name: {"model": [round(a + shift, 6) for a in c], "knn_3": KNN[name]}
           for name, c in CURVES.items()}
    pooled = {k: [(a + b) / 2 for a, b in zip(per["breast_cancer"][k], per["wine"][k],
                                                strict=True)] for k in ("model", "knn_3")}
    run = RunDir(root)
    run.eval.mkdir(parents=True)
    run.results.write_text(json.dumps({
        "task": "openml", "metric": "accuracy", "chance": 0.5, "n_classes": 2, "n_points": 5,
        "n_prompts": 32, "torch": "2.x", "parameters": 1000,
        "trained_loops": 8 if variant == "looped" else None, **_block(pooled),
        "datasets": {name: _block(c) for name, c in per.items()}}))
    rows = ["step,test/accuracy,test/accuracy_pos/004"]
    rows += [f"{100 * (i + 1)},{a / 2},{a}" for i, a in enumerate(TEST[variant, seed])]
    run.metrics.write_text("\n".join(rows) + "\n")
    run.config.write_text("test: {every_n_steps: 100}\n")


def _study() -> Study:
    h1 = Comparison(id="H1", a="looped", b="transformer", measure="final_accuracy", k=4,
                    margin=0.05, claim="as accurate after 4 examples")
    return Study("tab", ("experiment=openml_cpu",), {"looped": (), "transformer": ()}, (1, 2),
                 (2, 4), comparisons=(h1,), escape_threshold=0.75)


PAGE = """# tab
<!-- table:meta data=tab -->
<!-- /table:meta -->
<!-- table:variants data=tab -->
<!-- /table:variants -->
<!-- table:variants data=tab dataset=wine -->
<!-- /table:variants -->
<!-- table:runs data=tab dataset=breast_cancer -->
<!-- /table:runs -->
<!-- table:comparisons data=tab pairs=looped:transformer -->
<!-- /table:comparisons -->
<!-- table:confirmatory data=tab -->
<!-- /table:confirmatory -->
"""


def test_a_classification_study_aggregates_exports_and_renders_its_tables(tmp_path):
    study_dir = tmp_path / "tab"
    for (variant, seed) in TEST:
        _write_run(study_dir / "runs" / variant / f"seed={seed}", variant, seed)
    aggregate(_study(), study_dir)
    report = (study_dir / "report.md").read_text()
    # the figures the report links are the ones written beside it
    for png in re.findall(r"\]\((\S+\.png)\)", report):
        assert (study_dir / png).is_file(), png
    # looped pooled: k=2 (0.7 + 0.6) / 2 + 0.02 s -> 0.67, 0.69; k=4 0.82, 0.84
    assert "| looped | 1,000 | 2 | 0.6800 [0.6700, 0.6900] | 0.8300 [0.8200, 0.8400] |" in report
    assert "| knn_3 (baseline) |" in report

    pages = tmp_path / "pages"
    out = export(study_dir, pages / "data" / "tab.json", overrides={"commit": "abc1234"})
    data = json.loads(out.read_text())
    assert data["escape"]["threshold"] == 0.75  # the study's own, carried by its data
    assert data["config"]["escape_threshold"] == 0.75
    rec = next(r for r in data["runs"] if (r["variant"], r["seed"]) == ("looped", 1))
    assert rec["accuracy"] == {"trained": [0.52, 0.57, 0.67, 0.72, 0.82]}
    assert rec["baselines"] == {"knn_3": [0.5, 0.65, 0.75, 0.85, 0.95]}
    assert rec["datasets"]["wine"]["accuracy"] == {"trained": [0.52, 0.52, 0.62, 0.62, 0.72]}
    assert [r["escape_step"] for r in data["runs"]] == [200, None, 300, 200]

    page = pages / "tab.md"
    page.write_text(PAGE)
    text, changed = rebuild(page)
    assert len(changed) == 6
    assert "| commit | `abc1234` |" in text and "| runs | 4 (2 variants x seeds 1, 2) |" in text
    tables = text.split("<!-- table:")
    pooled, wine, runs, comparisons, confirmatory = tables[2:7]
    # escaped at 0.75: looped seed 1 only (seed 2 listed apart at k=4), transformer both
    assert "| looped | 1/2 | 200 | 0.6700 [0.6700, 0.6700] | 0.8200 [0.8200, 0.8200] | 2: " \
           "0.8400 |" in pooled
    assert "| transformer | 2/2 | 250 | 0.5800 [0.5700, 0.5900] | 0.7300 [0.7200, 0.7400] |" \
        in pooled
    # the wine table's own curves: looped seed 1 at k=4 is 0.7 + 0.02, knn 0.9 at every run
    assert "| looped | 1/2 | 200 | 0.6200 [0.6200, 0.6200] | 0.7200 [0.7200, 0.7200] | 2: " \
           "0.7400 |" in wine
    assert "| knn_3 (baseline) | - | - | 0.7000 | 0.9000 | - |" in wine
    assert "| looped | 2 | 2.x | not escaped | 0.7400 (step 300) | 0.7400 | 0.9400 |" in runs
    assert "accuracy at k=4" in comparisons and "error" not in comparisons.split("|")[0]
    # paired differences at k=4: 0.1 and 0.1 -> TOST cannot reject +0.05 with 2 seeds
    assert "| H1 | as accurate after 4 examples | looped vs transformer | accuracy at position " \
           "k=4 | paired, TOST +-0.05 | 2 vs 2 |" in confirmatory
    assert "cannot be resolved with 2 vs 2 seeds" in confirmatory

    page.write_text("<!-- table:variants data=tab dataset=iris -->\n<!-- /table:variants -->\n")
    with pytest.raises(ConfigError, match=re.escape(
            "dataset=iris is not a held-out dataset of every run of tab; held out: "
            "['breast_cancer', 'wine']")):
        rebuild(page)


def _exported(tmp_path: Path) -> Path:
    study_dir = tmp_path / "tab"
    for (variant, seed) in TEST:
        _write_run(study_dir / "runs" / variant / f"seed={seed}", variant, seed)
    aggregate(_study(), study_dir)
    return export(study_dir, tmp_path / "data" / "tab.json")


def test_plot_examples_draws_each_held_out_table_and_refuses_what_it_cannot_draw(tmp_path):
    data = _exported(tmp_path)
    for dataset in (None, "wine"):
        png = tmp_path / f"examples_{dataset}.png"
        assert plot_data_file("examples", data, png, dataset=dataset) == [png]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="dataset=iris is not a held-out dataset"):
        plot_data_file("examples", data, tmp_path / "x.png", dataset="iris")
    with pytest.raises(ConfigError, match="applies to plot-examples only"):
        plot_data_file("curves", data, tmp_path / "x.png", dataset="wine")
    # the classifiers are drawn once: runs whose evaluations scored other prompts are refused
    d = json.loads(data.read_text())
    d["runs"][1]["baselines"]["knn_3"][2] += 0.1
    data.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="the baseline knn_3 differs between runs"):
        plot_data_file("examples", data, tmp_path / "x.png")
    d["metric"] = "error"
    data.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="this study regresses"):
        plot_data_file("examples", data, tmp_path / "x.png")


def test_a_job_config_reads_overrides_by_hydras_grammar(tmp_path):
    job = Job("j000", "v", 7, tmp_path / "run")
    cfg = OmegaConf.create(job_config(job, (
        "experiment=p_hop_cpu", "curriculum.loops_rule={kind:linear,of:hops,a:2,c:0}",
        "eval.extra_loops=[]", "task.source=dir:/data/x", "model=transformer",
        "curriculum.loops_rule={kind:fixed,of:hops,a:1,c:0}", "model=tied")))
    assert OmegaConf.to_container(cfg.curriculum.loops_rule) == {"kind": "fixed", "of": "hops",
                                                                 "a": 1, "c": 0}
    assert cfg.eval.extra_loops == [] and cfg.task.source == "dir:/data/x"
    # a later group choice replaces an earlier one: one override per group
    assert OmegaConf.to_container(cfg.defaults) == [{"override /experiment": "p_hop_cpu"},
                                                    {"override /model": "tied"}]
    for bad, message in (("a.b=1,2", "must set one value"), ("~a.b", "not of the form"),
                         ("a.b=[1", "does not parse")):
        with pytest.raises(ConfigError, match=re.escape(f"study override {bad!r} ")
                           + ".*" + message):
            job_config(job, (bad,))


def test_a_sweeps_extra_overrides_go_into_each_jobs_config(tmp_path, monkeypatch):
    # Hydra applies a multirun's command-line values to the config composed without the job,
    # where the study's experiment (task.hops of p_hop) is not yet: they belong in the jobs
    commands = []
    monkeypatch.setattr(study_mod, "_run_multirun", lambda cmd: commands.append(cmd) or 0)
    s = Study("s", ("experiment=p_hop_cpu",), {"a": ("task.hops=2",)}, (1,), ())
    launch(s, tmp_path / "s", extra=("task.hops=3", "hydra.launcher.timeout_min=5"))
    job = OmegaConf.load(tmp_path / "s" / ".jobs" / "job" / "j000.yaml")
    assert job.task.hops == 3  # after the variant's own
    (cmd,) = commands
    assert "hydra.launcher.timeout_min=5" in cmd and "task.hops=3" not in cmd
