"""Speed switches (perf.*, precision) change speed or memory, never the result beyond a
stated tolerance."""

import pytest
import torch
from conftest import TINY, compose_cfg

from loopformer import ConfigError, ModelConfig, build_model, build_task
from loopformer.config import PerfConfig, Settings
from loopformer.module import LoopformerModule
from loopformer.training import run

CUDA = torch.cuda.is_available()


def _model_and_batch(dtype=torch.float32, device="cpu", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(n_dims=5, n_positions=11, n_embd=32, n_head=4, **kw)
    model = build_model(cfg).to(device=device, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(1)
    xs, ys = build_task("linear_regression", 5).sample(8, 11, 5, g, dtype=dtype)
    return model, xs, ys


def _grads(model, xs, ys, n_loops=6, window=3):
    model.zero_grad()
    preds = model(xs, ys, n_loops=n_loops, window=window)
    loss = (preds - ys).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("skip", [False, True])
def test_activation_checkpointing_gives_the_same_gradients(skip):
    model, xs, ys = _model_and_batch(torch.float64, skip_connection=skip)
    loss_a, grads_a = _grads(model, xs, ys)
    model.checkpoint_window = True
    loss_b, grads_b = _grads(model, xs, ys)
    assert torch.equal(loss_a, loss_b)
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-12, atol=1e-14)


def test_perf_config_is_applied_and_validated(tiny, tmp_path):
    before = torch.get_num_threads()
    try:
        cfg = compose_cfg(*tiny, "trainer.max_steps=1", "perf.threads=1",
                          "perf.activation_checkpointing=true", run_dir=tmp_path / "r")
        run(cfg)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="perf.matmul_precision"):
        PerfConfig(matmul_precision="fastest")
    with pytest.raises(ConfigError, match="perf.threads"):
        PerfConfig(threads=0)
    with pytest.raises(ConfigError, match="unknown key perf.cmopile; allowed: compile, "):
        Settings.from_config(compose_cfg(*tiny, "+perf.cmopile=true"))


def test_evaluation_gets_an_uncompiled_copy_of_a_compiled_model():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_cfg(*TINY), resolve=True)
    plain = LoopformerModule.from_config(cfg)
    assert plain.eager_model() is plain.model
    cfg["perf"]["compile"] = True
    module = LoopformerModule.from_config(cfg)
    module.configure_model()  # compiles every block in place (lazily: nothing runs yet)
    assert all(b._compiled_call_impl is not None for b in module.model.blocks)
    eager = module.eager_model()
    assert eager is not module.model
    assert all(b._compiled_call_impl is None for b in eager.blocks)
    for (k, a), (k2, b) in zip(module.model.state_dict().items(), eager.state_dict().items(),
                               strict=True):
        assert k == k2 and torch.equal(a, b)


def test_module_turns_on_window_checkpointing():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_cfg(*TINY, "perf.activation_checkpointing=true"),
                                 resolve=True)
    assert LoopformerModule.from_config(cfg).model.checkpoint_window


def _bf16_agrees(device):
    model, xs, ys = _model_and_batch(device=device)
    with torch.no_grad():
        ref = model(xs, ys, n_loops=6, window=3)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            low = model(xs, ys, n_loops=6, window=3).float()
    # bf16 keeps 8 bits of mantissa: a few 1e-2 relative after 6 loop iterations
    err = (low - ref).norm() / ref.norm()
    assert err < 5e-2, err


def test_bf16_autocast_agrees_with_fp32_on_cpu():
    _bf16_agrees("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_bf16_autocast_agrees_with_fp32_on_gpu():
    _bf16_agrees("cuda")


def _compiled_agrees(device, mode="default"):
    model, xs, ys = _model_and_batch(device=device)
    loss_a, grads_a = _grads(model, xs, ys)
    for block in model.blocks:
        block.compile(mode=mode)
    # three passes: the first compiles, the next ones replay (CUDA graphs record, then replay)
    for _ in range(3):
        loss_b, grads_b = _grads(model, xs, ys)
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-4, atol=1e-6)
        for k in grads_a:
            torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_compiled_block_agrees_with_eager_on_cpu():
    _compiled_agrees("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_block_agrees_with_eager_on_gpu(mode):
    _compiled_agrees("cuda", mode)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_gpu_smoke_training(tmp_path, mode):
    overrides = [o for o in TINY if not o.startswith("trainer.accelerator")]
    result = run(compose_cfg(*overrides, "trainer.accelerator=gpu", "trainer.precision=bf16-mixed",
                             "perf.compile=true", f"perf.compile_mode={mode}",
                             "trainer.max_steps=20",
                             "test.every_n_steps=10", run_dir=tmp_path / "gpu"))
    assert result.global_step == 20
    assert 0 < result.test_metrics["test/loss"] < float("inf")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("graph", [False, True])
def test_gpu_training_steps_never_wait_for_the_device(tmp_path, monkeypatch, graph):
    """Between logging steps the host only queues work: any device-to-host read or blocking
    copy (data loading, sampling, forward, backward, optimizer, callbacks) raises here."""
    import lightning as L

    import loopformer.training as tr

    class SyncGuard(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            # TINY's shape is fixed from step 6; the step graph is captured at step 8 (capture
            # synchronises once per shape, by design), so watch steps 9-13
            if trainer.global_step == 9:
                torch.cuda.set_sync_debug_mode("error")
            elif trainer.global_step == 14:
                torch.cuda.set_sync_debug_mode("default")

    orig = tr.build_callbacks
    monkeypatch.setattr(tr, "build_callbacks", lambda *a: [*orig(*a), SyncGuard()])
    overrides = [o for o in TINY if not o.startswith(("trainer.accelerator",
                                                      "trainer.log_every_n_steps",
                                                      "checkpoint.every_n_steps"))]
    try:
        result = run(compose_cfg(*overrides, "trainer.accelerator=gpu", "trainer.max_steps=16",
                                 "trainer.log_every_n_steps=50", "checkpoint.every_n_steps=50",
                                 f"perf.cuda_graph={str(graph).lower()}",
                                 run_dir=tmp_path / "sync"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.global_step == 16


def test_end_of_run_evaluation_uses_the_eager_model(tmp_path, monkeypatch):
    import loopformer.evaluate

    seen = {}

    def eager_model(self):
        seen["eager"] = object.__new__(type(self.model))  # a stand-in no other path returns
        return seen["eager"]

    monkeypatch.setattr(LoopformerModule, "eager_model", eager_model)
    monkeypatch.setattr(loopformer.training, "evaluate_run",
                        lambda run_dir, settings=None, model=None: seen.setdefault("model", model))
    run(compose_cfg(*TINY, "trainer.max_steps=1", "eval.at_end=true", run_dir=tmp_path / "r"))
    assert seen["model"] is seen["eager"]
