"""The config groups rest on typed schemas: a wrong type or an unknown key is one ConfigError
naming the full key, OmegaConf's conversions still apply, and the schema's defaults are
conf/'s values."""

import sys

import pytest
from conftest import ROOT, TINY, compose_cfg, run_cmd
from omegaconf import OmegaConf, open_dict

from loopformer import ConfigError, ModelConfig, config
from loopformer.baselines import build_baselines
from loopformer.config import OptimConfig, PerfConfig, Settings
from loopformer.errors import typed
from loopformer.module import LoopformerModule
from loopformer.rundir import RunDir


def _refused(*overrides, cfg=None) -> str:
    with pytest.raises(ConfigError) as err:
        Settings.from_config(cfg if cfg is not None else compose_cfg(*TINY, *overrides))
    message = str(err.value)
    assert "\n" not in message, message
    return message


# one key of each schema'd group, a value of the wrong type, what the message says
WRONG_TYPES = [
    ("seed=abc", "seed='abc' must be an integer"),
    ("model.n_embd=1.5", "model.n_embd=1.5 must be an integer"),
    ("model.n_layer=null", "model.n_layer=null must be an integer"),
    ("model.inject_every_layer=maybe", "model.inject_every_layer='maybe' must be true or false"),
    ("curriculum.dims.start=abc", "curriculum.dims.start='abc' must be an integer"),
    ("curriculum.window=abc", "curriculum.window='abc' must be an integer"),
    ("curriculum.loops_jitter=1.5", "curriculum.loops_jitter=1.5 must be an integer"),
    ("data.batch_size=abc", "data.batch_size='abc' must be an integer"),
    ("optimizer.weight_decay=abc", "optimizer.weight_decay='abc' must be a number"),
    ("optimizer.betas=[0.9,abc]", "optimizer.betas[1]"),
    ("test.size=abc", "test.size='abc' must be an integer"),
    ("checkpoint.every_n_steps=abc", "checkpoint.every_n_steps='abc' must be an integer"),
    ("trainer.max_steps=abc", "trainer.max_steps='abc' must be an integer"),
    ("perf.threads=abc", "perf.threads='abc' must be an integer"),
    ("perf.compile=maybe", "perf.compile='maybe' must be true or false"),
    ("eval.n_prompts=abc", "eval.n_prompts='abc' must be an integer"),
    ("eval.at_end=maybe", "eval.at_end='maybe' must be true or false"),
    ("eval.extra_loops=[abc]", "eval.extra_loops[0]"),
]


@pytest.mark.parametrize("override,message", WRONG_TYPES, ids=[o for o, _ in WRONG_TYPES])
def test_a_wrong_type_names_the_full_key(override, message):
    assert message in _refused(override)


@pytest.mark.parametrize("key,allowed", [
    ("optimizer.lrr", "lr, weight_decay, betas, schedule, warmup_steps, min_lr_ratio, "
                      "decay_fraction"),
    ("model.foo", "family, n_dims, n_positions, n_embd, n_layer, n_head, mixer"),
    ("curriculum.dims.step", "start, end, inc, interval"),
    ("curriculum.stride", "dims, points, loops, window"),
    ("data.size", "batch_size"),
    ("test.n", "every_n_steps, size, batch_size, seed"),
    ("checkpoint.every", "every_n_steps, keep_every_n_steps"),
    ("perf.cmopile", "compile, compile_mode, cuda_graph"),
    ("eval.n", "at_end, n_prompts, seed, extra_loops, baselines"),
])
def test_an_unknown_key_is_refused_with_the_allowed_ones(key, allowed):
    cfg = compose_cfg(*TINY)
    with open_dict(cfg):
        OmegaConf.update(cfg, key, 1)
    assert _refused(cfg=cfg).startswith(f"unknown key {key}; allowed: {allowed}")
    assert _refused(f"+{key}=1").startswith(f"unknown key {key}; allowed:")  # the CLI's way


def test_omegaconf_conversions_still_apply():
    cfg = compose_cfg(*TINY, "optimizer.weight_decay=1", "perf.threads=2", "eval.extra_loops=7")
    cfg.optimizer.lr = "1e-3"  # YAML 1.1 reads 1e-3 (no dot) as a string
    spec = Settings.from_config(cfg)
    assert spec.optimizer.lr == 1e-3 and spec.optimizer.weight_decay == 1.0
    assert isinstance(spec.optimizer.weight_decay, float) and spec.optimizer.betas == (0.9, 0.999)
    assert spec.perf.threads == 2 and spec.eval.extra_loops == (7,)  # one count: a list of one
    assert Settings.from_config(compose_cfg(*TINY, "eval.extra_loops=null")).eval.extra_loops == ()
    assert Settings.from_config(compose_cfg(*TINY, "model.keep_tokens=3")).model.keep_tokens == 3


def test_keys_a_config_leaves_out_take_the_schema_defaults():
    # a run saved before perf and the optimizer's schedule existed still builds
    cfg = compose_cfg(*TINY)
    with open_dict(cfg):
        del cfg["perf"], cfg.optimizer["schedule"], cfg.optimizer["warmup_steps"]
    spec = Settings.from_config(cfg)
    assert spec.perf == PerfConfig() and spec.optimizer == OptimConfig()
    with open_dict(cfg):
        del cfg.data["batch_size"]  # no default: conf/config.yaml holds it
    assert _refused(cfg=cfg) == "data.batch_size is missing"


def test_schema_defaults_are_the_values_in_conf():
    cfg = compose_cfg()  # conf/config.yaml with model=looped
    assert typed(OptimConfig, cfg.optimizer) == OptimConfig()
    assert typed(config.TestSetConfig, cfg.test) == config.TestSetConfig()
    assert typed(PerfConfig, cfg.perf) == PerfConfig()
    assert typed(ModelConfig, cfg.model) == ModelConfig()
    trainer = OmegaConf.to_container(cfg.trainer)
    assert typed(config.TrainerConfig, config.TrainerConfig.split(trainer)) == \
        config.TrainerConfig()


def test_the_module_takes_the_spec_and_keeps_the_config_for_the_checkpoint(monkeypatch):
    config = OmegaConf.to_container(compose_cfg(*TINY), resolve=True)
    spec = Settings.from_config(OmegaConf.create(config))
    import loopformer.module

    monkeypatch.setattr(loopformer.module, "Settings", None)  # the module must not re-parse
    module = LoopformerModule(spec, config)
    assert module.spec is spec and dict(module.hparams) == {"config": config}


def test_loops_jitter_is_checked_and_kept():
    assert "curriculum.loops_jitter=-1 must be >= 0" in _refused("curriculum.loops_jitter=-1")
    cfg = compose_cfg(*TINY, "curriculum.loops_jitter=2")
    assert Settings.from_config(cfg).curriculum.loops_jitter == 2
    # like the loop schedule, it has no effect on a model without loops, and is no error there
    assert Settings.from_config(compose_cfg(*TINY, "model=transformer",
                                            "curriculum.loops_jitter=2"))


# ----------------------------------------------------------------------------- the parse

QUICKSTART = ["experiment=quickstart", "trainer.max_steps=2"]


@pytest.mark.parametrize("overrides,message", [
    (["+foo=1"], "unknown key foo; allowed: seed, model, task"),
    (["optimizer.lr=nan"], "optimizer.lr=nan must be a finite number"),
    (["seed=-1"], "seed=-1 is outside the seeds the generators take; use 0..4294967295"),
    (["curriculum.loops_jitter=100"], "curriculum.loops_jitter=100 must be below the trained "
                                      "loop count curriculum.loops.end=12; use 0..11"),
    (["eval.device=gpu"], "eval.device='gpu' is not a torch device"),
    (["model.keep_tokens=inf"], "model.keep_tokens=inf must be a finite number"),
    (["trainer.gradient_clip_val=nan"], "trainer.gradient_clip_val=nan must be a finite"),
    (["task=noisy_linear_regression", "task.noise_std=nan"], "task.noise_std=nan must be"),
    (["optimizer.betas=[0.9,1.5]"], "optimizer.betas[1]=1.5 must be in [0, 1)"),
    (["test.seed=4294967296"], "test.seed=4294967296 is outside the seeds"),
    (["+trainer.logger=true"], "trainer.logger is set by loopformer itself"),
    (["trainer.max_time=1:30"], "trainer.max_time='1:30' is not a positive duration"),
    (["+logger.foo=1"], "unknown key logger.foo; allowed: csv, wandb"),
    (["name=${nosuch}"], "name: Interpolation key 'nosuch' not found"),
])
def test_the_issues_examples_are_refused_before_anything_is_written(overrides, message,
                                                                   tmp_path):
    from loopformer.training import run

    with pytest.raises(ConfigError) as err:
        run(compose_cfg(*QUICKSTART, *overrides, run_dir=tmp_path / "run"))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_jitter_below_the_trained_loop_count_is_kept():
    # the quickstart's: b = 12, each step at b runs 8..16 loops
    assert Settings.from_config(compose_cfg(*QUICKSTART)).curriculum.loops_jitter == 4
    assert Settings.from_config(compose_cfg(*QUICKSTART, "curriculum.loops_jitter=11"))


def test_no_gpu_eval_device_is_refused_at_parse_time():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert "eval.device=cuda but no CUDA device is visible" in _refused("eval.device=cuda")


def test_settings_round_trip_through_their_dict():
    # config.yaml and the checkpoint hold Settings.to_dict(); reading it back gives the same
    s = Settings.from_config(compose_cfg(*QUICKSTART))
    again = Settings.from_config(OmegaConf.create(s.to_dict()))
    assert again == s
    assert [p.name for p in again.eval.predictors] == [p.name for p in s.eval.predictors]


# code run before train.py: each injects a bug (a TypeError, as OmegaConf converts those) into
# a constructor the parse reaches
BUGS = {
    "task": "import loopformer.tasks as t\n"
            "init = t.LinearRegression.__init__\n"
            "def broken(self, *a, **k):\n"
            "    len(None)\n"
            "t.LinearRegression.__init__ = broken\n",
    "baseline": "import loopformer.baselines as b\n"
                "def broken(self, *a, **k):\n"
                "    len(None)\n"
                "b.LeastSquares.__init__ = broken\n",
    "schema": "import loopformer.config as c\n"
              "def broken(self):\n"
              "    len(None)\n"
              "c.OptimConfig.__post_init__ = broken\n",
    "not a config error": "import loopformer.config as c\n"
                          "def broken(*a, **k):\n"
                          "    raise RuntimeError('injected bug')\n"
                          "c.build_task = broken\n",
}


@pytest.mark.parametrize("where", BUGS)
def test_a_bug_in_the_parse_shows_its_traceback(where, tmp_path):
    # an exception that is not a ConfigError is a bug in our code: train.py lets Hydra print
    # its traceback and exit 1, instead of a one-line "error:" as for a refused config
    inject = (BUGS[where] + "import runpy, sys\n"
              f"sys.argv = ['train.py', *{TINY!r}, 'run_dir={tmp_path / 'run'}']\n"
              f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n")
    proc = run_cmd([sys.executable, "-c", inject], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "in broken" in proc.stderr, proc.stderr
    assert ("RuntimeError: injected bug" if where == "not a config error" else
            "TypeError: object of type 'NoneType' has no len()") in proc.stderr
    assert "error: " not in proc.stderr and "Could not create instance" not in proc.stderr


def test_a_baseline_module_that_fails_to_run_shows_its_traceback(tmp_path):
    (tmp_path / "mybaselines.py").write_text("raise RuntimeError('broken module')\n")
    spec = [{"_target_": "mybaselines.Mine"}]
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(RuntimeError, match="broken module"):
            build_baselines(spec)
        with pytest.raises(ConfigError, match="cannot be imported"):  # no such module: refused
            build_baselines([{"_target_": "nosuchpackage.Mine"}])
        with pytest.raises(ConfigError, match="cannot be imported"):  # no such name
            build_baselines([{"_target_": "loopformer.baselines.Nope"}])
    finally:
        sys.path.remove(str(tmp_path))


def test_other_trainer_keys_reach_lightning_and_its_own_are_refused(tmp_path):
    from loopformer.training import build_trainer

    s = Settings.from_config(compose_cfg(*TINY, "+trainer.limit_train_batches=5",
                                         "trainer.gradient_clip_val=0.5"))
    assert s.trainer.others == {"limit_train_batches": 5} and s.trainer.gradient_clip_val == 0.5
    assert s.to_dict()["trainer"]["limit_train_batches"] == 5  # config.yaml: the flat block
    trainer = build_trainer(s, RunDir(tmp_path), [], [])
    assert trainer.limit_train_batches == 5 and trainer.gradient_clip_val == 0.5
    assert _refused("+trainer.logger=true").startswith("trainer.logger is set by loopformer")


def test_a_bug_in_evaluate_shows_its_traceback(monkeypatch):
    from loopformer import evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("injected bug")

    monkeypatch.setattr(evaluate, "load_settings", broken)
    with pytest.raises(RuntimeError, match="injected bug"):
        evaluate.main(["run=somewhere"])
