"""One command-line style: options read into a typed schema, ``--help`` from the schema, one
printer for a refused command."""

import dataclasses
from pathlib import Path

import pytest

from loopformer import cli
from loopformer.analyze.__main__ import main as analyze_main
from loopformer.analyze.run import Options as AnalyzeOptions
from loopformer.errors import ConfigError
from loopformer.evaluate import EvaluateOptions
from loopformer.evaluate import main as evaluate_main
from loopformer.results.__main__ import COMMANDS
from loopformer.results.__main__ import main as results_main


@dataclasses.dataclass
class Schema:
    files: list[Path] = cli.option([], "files", positional=True)
    n: int = cli.option(3, "a count")
    name: str | None = cli.option(None, "a name")


def test_options_are_read_into_the_schema():
    o = cli.parse(Schema, ["a.md", "n=5", "b.md", "name=null"], "cmd")
    assert o == Schema([Path("a.md"), Path("b.md")], 5, None)
    assert cli.parse(Schema, [], "cmd") == Schema()
    with pytest.raises(ConfigError, match="cmd: unknown option m; allowed: files, n, name"):
        cli.parse(Schema, ["m=1"], "cmd")
    with pytest.raises(ConfigError, match="n='x' must be an integer"):
        cli.parse(Schema, ["n=x"], "cmd")
    with pytest.raises(ConfigError, match="'n' is not of the form option=value"):
        cli.read_args(EvaluateOptions, ["n"], "cmd")  # a schema without positionals


@pytest.mark.parametrize("main,schema,argv", [
    (evaluate_main, EvaluateOptions, ["--help"]),
    (analyze_main, AnalyzeOptions, ["--help"]),
    (results_main, COMMANDS["tables"][0], ["tables", "--help"]),
    (results_main, COMMANDS["export"][0], ["export", "-h"]),
])
def test_help_lists_every_option_with_the_schemas_default(main, schema, argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(schema):
        line = next(x for x in out.splitlines() if x.split()[:1] == [f.name])
        assert f"({cli._default(f)})" in line and f.metadata["help"] in line
    if schema is AnalyzeOptions:  # the default as the schema holds it, not restated
        assert "(default: 1280)" in out and "(default: last)" in out


@pytest.mark.parametrize("main,argv,fragment", [
    (evaluate_main, ["run=x", "n_prompt=5"], "unknown option n_prompt"),
    (evaluate_main, [], "give run=..."),
    (analyze_main, ["run=.", "seed=x"], "seed='x' must be an integer"),
    (results_main, ["nope"], "unknown command 'nope'; choose one of export, tables"),
    (results_main, ["plot-ood", "a.json"], "give OUT"),
    (results_main, ["tables", "check=maybe"], "check='maybe' must be true or false"),
])
def test_every_tool_refuses_in_one_line_with_exit_2(main, argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_group_choices_are_checked_against_every_config_source(tmp_path):
    conf = Path(__file__).resolve().parents[1] / "conf"
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "mine.yaml").write_text("name: mine\n")
    extra = f"hydra.searchpath=[file://{tmp_path}]"
    cli.check_group_choices([extra, "study=mine"], conf, "sweep")  # found through the path
    with pytest.raises(ConfigError, match="study=mine is not an option of the study group"):
        cli.check_group_choices(["study=mine"], conf, "sweep")
    with pytest.raises(ConfigError, match="task=nope is not an option of the task group"):
        cli.check_group_choices(["-m", "task=linear_regression,nope"], conf, "config")
    cli.check_group_choices(["--cfg", "job", "task=nope"], conf, "config")  # Hydra's own flags


def test_values_read_as_train_py_reads_them():
    # Hydra's grammar, as on train.py's command line: {factor:2,n_prompts:16} is a dict (YAML
    # would read keys "factor:2"); values Hydra does not take (an "=" inside) stay strings
    o = cli.parse(EvaluateOptions, ["run=/runs/looped/seed=1", "ckpt=step=500",
                                    "dial={factor:2,n_prompts:16}", "extra_loops=[24]"], "cmd")
    assert str(o.run) == "/runs/looped/seed=1" and o.ckpt == "step=500"
    assert o.dial == {"factor": 2, "n_prompts": 16} and o.extra_loops == [24]
