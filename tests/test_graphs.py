"""perf.cuda_graph: the step graph (forward + backward replayed as one CUDA graph) and the
manual-optimization path it runs on. On a CPU the same path runs without capture, so the
plumbing (step count, schedule, logging, checkpoints, resume) is checked here against the
ordinary path; the capture itself is checked by the `gpu` tests."""

import pytest
import torch
from conftest import TINY, compose_cfg

import loopformer.config as config
from loopformer import ConfigError, ModelConfig, build_model, build_task
from loopformer.checkpoints import safe_load
from loopformer.config import PerfConfig, Settings, check_cuda_graph
from loopformer.csvlog import read_metrics
from loopformer.graphs import StepGraph
from loopformer.training import run

CUDA = torch.cuda.is_available()


def _model_and_batches(device, n=3):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_dims=5, n_positions=11, n_embd=32, n_head=4)).to(device)
    task = build_task("linear_regression", 5)
    g = torch.Generator(device=device).manual_seed(1)
    return model, [task.sample(8, 11, 5, g) for _ in range(n)]


def _loss_fn(model):
    def loss(xs, ys, n_loops, window):
        sq = (model(xs, ys, n_loops=n_loops, window=window) - ys).square()
        return sq.mean(), sq.detach().mean(dim=(0, 1))
    return loss


def _reference_grads(model, xs, ys, n_loops=6, window=3):
    model.zero_grad(set_to_none=True)
    loss, _ = _loss_fn(model)(xs, ys, n_loops, window)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _check_step_graph(device, capture):
    model, batches = _model_and_batches(device, n=4)
    graph = StepGraph(model.parameters(), _loss_fn(model), capture=capture, warmup=1)
    for xs, ys in batches:  # eager warm-up, capture, then replays with new prompts copied in
        loss, per_pos = graph(xs, ys, 6, 3)
        got = [p.grad.clone() for p in model.parameters()]
        ref_loss, ref = _reference_grads(model, xs, ys)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        assert per_pos.shape == (11,)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    return graph


def test_step_graph_without_capture_gives_the_reference_gradients():
    graph = _check_step_graph("cpu", capture=False)
    assert graph.captures == 0 and graph.replays == 0


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_captured_step_graph_replays_the_reference_gradients():
    graph = _check_step_graph("cuda", capture=True)
    assert graph.captures == 1 and graph.replays == 3
    # a new loop count is a new graph, after its own eager warm-up step
    model_xs, model_ys = torch.zeros(8, 11, 5, device="cuda"), torch.zeros(8, 11, device="cuda")
    graph(model_xs, model_ys, 7, 3)
    assert graph.eager_steps == 1 and graph.graph is None
    graph(model_xs, model_ys, 7, 3)
    assert graph.captures == 2


def _train(tmp_path, name, *overrides, steps=8):
    return run(compose_cfg(*TINY, f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1",
                           *overrides, run_dir=tmp_path / name))


def _weights(run_dir):
    return safe_load(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.fixture
def graph_path_on_cpu(monkeypatch):
    """Let perf.cuda_graph=true through on a CPU: the step graph then runs without capture."""
    monkeypatch.setattr(config, "check_cuda_graph", lambda settings, acc: None)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_graph_path_trains_like_the_ordinary_path(graph_path_on_cpu, tmp_path, precision):
    # TINY's curriculum changes the prompt length and the loop count within these 8 steps
    args = ["optimizer.schedule=cosine", "optimizer.warmup_steps=2",
            f"trainer.precision={precision}"]
    ref = _train(tmp_path, "auto", *args)
    new = _train(tmp_path, "graph", *args, "perf.cuda_graph=true")
    assert ref.global_step == new.global_step == 8
    a, b = _weights(ref.run_dir), _weights(new.run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    ma, mb = read_metrics(ref.run_dir / "metrics.csv"), read_metrics(new.run_dir / "metrics.csv")
    for key in ("train/loss", "train/lr", "train/grad_norm", "curriculum/n_points"):
        va = [r[key] for r in ma if r.get(key) is not None]
        vb = [r[key] for r in mb if r.get(key) is not None]
        assert len(va) == len(vb) == 8, key
        torch.testing.assert_close(torch.tensor(va), torch.tensor(vb), rtol=1e-5, atol=1e-7)


def test_graph_path_resume_equals_uninterrupted(graph_path_on_cpu, tmp_path):
    full = _train(tmp_path, "full", "perf.cuda_graph=true", steps=8)
    _train(tmp_path, "cut", "perf.cuda_graph=true", steps=4)
    resumed = _train(tmp_path, "cut", "perf.cuda_graph=true", "ckpt_path=last", steps=8)
    assert resumed.global_step == 8
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("overrides,message", [
    (["trainer.accelerator=gpu"], None),  # refused on a CPU machine by the device check
    ([], "perf.cuda_graph=true needs a CUDA device"),
])
def test_cuda_graph_on_cpu_is_refused_before_anything_is_written(overrides, message, tmp_path):
    if overrides and CUDA:
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match=message or "no CUDA device"):
        run(compose_cfg(*TINY, *overrides, "perf.cuda_graph=true", run_dir=tmp_path / "r"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override,key", [
    ("trainer.devices=2", "trainer.devices=2"),
    ("trainer.precision=16-mixed", "trainer.precision=16-mixed"),
    ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=1"),
    ("trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val=null"),
])
def test_cuda_graph_refuses_what_it_cannot_honour(override, key):
    cfg = compose_cfg(*TINY, "trainer.accelerator=gpu", "perf.cuda_graph=true", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_cuda_graph(Settings.from_config(cfg), "gpu")


def test_cuda_graph_conflicting_perf_switches_are_refused():
    with pytest.raises(ConfigError, match="perf.compile_mode=default"):
        PerfConfig(cuda_graph=True, compile=True, compile_mode="reduce-overhead")
    with pytest.raises(ConfigError, match="perf.activation_checkpointing"):
        PerfConfig(cuda_graph=True, activation_checkpointing=True)
    PerfConfig(cuda_graph=True, compile=True)  # default-mode compiled blocks can be captured


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision,tol,compiled", [("32-true", 1e-4, False),
                                                    ("bf16-mixed", 5e-2, False),
                                                    ("bf16-mixed", 5e-2, True)],
                         ids=["32-true", "bf16-mixed", "bf16-mixed-compiled"])
def test_gpu_graph_training_matches_eager_training(tmp_path, monkeypatch, precision, tol,
                                                   compiled):
    """The step graph (of the compiled blocks too: their kernels are captured with the rest)
    trains as the eager step does."""
    import loopformer.module

    graphs = []

    class Recorded(StepGraph):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            graphs.append(self)

    monkeypatch.setattr(loopformer.module, "StepGraph", Recorded)
    gpu = [o for o in TINY if not o.startswith("trainer.accelerator")]
    args = [*gpu, "trainer.accelerator=gpu", f"trainer.precision={precision}",
            "trainer.max_steps=12", "test.every_n_steps=6"]
    ref = run(compose_cfg(*args, run_dir=tmp_path / "eager"))
    new = run(compose_cfg(*args, "perf.cuda_graph=true", f"perf.compile={str(compiled).lower()}",
                          run_dir=tmp_path / "graph"))
    assert ref.global_step == new.global_step == 12
    # TINY's shape is fixed from step 6 (9 points, 3 loops): two eager steps, then replays;
    # steps 3-5 (7 points, 3 loops) capture one graph too
    (graph,) = graphs
    assert graph.captures >= 2 and graph.replays >= 5, (graph.captures, graph.replays)
    a, b = _weights(ref.run_dir), _weights(new.run_dir)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=tol, atol=tol * 1e-2)
    assert abs(ref.test_metrics["test/loss"] - new.test_metrics["test/loss"]) <= tol * max(
        1.0, ref.test_metrics["test/loss"])
