"""A new task is one class and one YAML file; a new baseline one class and one YAML line
(README, "Extending"): both are defined here, and a run trains and evaluates with them."""

import json

import torch
from conftest import TINY, compose_cfg

from loopformer.baselines import Baseline
from loopformer.tasks import Task
from loopformer.training import run


class ConstantFunction(Task):
    """``f(x) = c`` with ``c ~ N(0, scale^2)`` per prompt."""

    name = "constant_function"

    def __init__(self, n_dims: int, scale: float = 1.0):
        super().__init__(n_dims)
        self.scale = float(scale)

    def normalizer(self, active_dims=None):
        return self.scale**2

    def _targets(self, xs, active_dims, g):
        c = self.scale * torch.randn(xs.shape[0], 1, generator=g, device=xs.device)  # (B, 1)
        return c.expand(-1, xs.shape[1])  # (B, n)


class ShrunkMean(Baseline):
    """Predicts ``(1 - shrink)`` times the mean of the previous ``y`` (0 with none)."""

    def __init__(self, shrink: float = 0.0):
        self.shrink = float(shrink)

    @property
    def name(self) -> str:
        return f"shrunk_mean_{self.shrink:g}"

    def predict(self, xs, ys):
        n = ys.shape[1]
        before = torch.cumsum(ys, 1) - ys  # (B, n): sum of the previous y
        return (1 - self.shrink) * before / torch.arange(n).clamp_min(1)  # (B, n)


TASK_YAML = f"""# @package _global_
task:
  name: constant_function
  scale: 2.0
curriculum:
  points: {{start: 5, end: 9, inc: 2, interval: 3}}
eval:
  extra_loops: [5]
  suite:
    - {{_target_: loopformer.baselines.LeastSquares}}
    - {{_target_: {__name__}.ShrunkMean, shrink: 0.5}}
"""


def test_a_task_and_a_baseline_added_by_a_class_and_yaml_train_and_evaluate(tmp_path):
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "constant_function.yaml").write_text(TASK_YAML)
    cfg = compose_cfg(*TINY, f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                      "task=constant_function", "trainer.max_steps=2", "eval.at_end=true",
                      "eval.n_prompts=64", "eval.n_resamples=20", run_dir=tmp_path / "run")
    run(cfg)
    res = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert res["task"] == "constant_function" and res["task_params"] == {"scale": 2.0}
    curves = res["curves"]
    assert {k: c["kind"] for k, c in curves.items()} == {
        "model": "model", "model@5": "model",  # the task's extra loop count
        "least_squares": "baseline", "shrunk_mean_0.5": "baseline"}
    # the constant is known from one example: then the baseline misses by half of it, a
    # quarter of the squared error of predicting 0 (its error at k = 0), prompt by prompt
    mean = curves["shrunk_mean_0.5"]["mean"]
    assert all(abs(m - 0.25 * mean[0]) < 1e-6 * mean[0] for m in mean[1:])
