"""Training-step speed and memory: the Lightning path against a minimal plain-PyTorch loop.

    python benchmarks/bench_train.py                      # all shapes, both paths
    python benchmarks/bench_train.py --shapes final --steps 10 --threads 2
    python benchmarks/bench_train.py --shapes final --paths lightning --label bf16+compile \
        --extra trainer.precision=bf16-mixed perf.compile=true --jsonl bench.jsonl   # on a GPU

Each (shape, path) runs in its own process so peak memory is its own. Shapes: the seed
curriculum's start (5 dims, 11 points, 15 loops, window 15) and final shape (20 dims, 41 points,
30 loops, window 15), the 12-layer transformer at the final shape, and a tiny looped model where
framework overhead dominates; ``early`` is the seed curriculum at step 4000 (loops already at 30,
prompts still short). Also prints ``predict`` throughput (prompts x loops per second).

``--extra`` overrides (precision, perf.*) apply to the Lightning path; the plain loop is always
eager float32. On a GPU the achieved matmul TFLOP/s is also given as a share of the card's dense
bf16 peak (H100/H200 SXM: 989 TFLOP/s, the vendor's figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # name: (overrides, dims, points, loops, window)
    "start": ([], 5, 11, 15, 15),
    "final": ([], 20, 41, 30, 15),
    "early": ([], 5, 11, 30, 15),
    "transformer": (["model=transformer"], 20, 41, 1, 1),
    "tiny": (["model.n_embd=32", "model.n_head=2", "model.n_dims=5", "model.n_positions=11",
              "data.batch_size=16"], 5, 11, 2, 2),
}


def overrides(shape: str, steps: int, extra: list[str]) -> list[str]:
    ov, d, n, b, t = SHAPES[shape]
    return [*ov, "curriculum=fixed", f"curriculum.dims.start={d}", f"curriculum.dims.end={d}",
            f"curriculum.points.end={n}", f"curriculum.loops.end={b}", f"curriculum.window={t}",
            f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false", "callbacks=none",
            "logger=none", "test.every_n_steps=0", f"checkpoint.every_n_steps={10**9}",
            "checkpoint.keep_every_n_steps=0", "eval.at_end=false", *extra]


def sync() -> None:
    """Wait for the GPU's queued work, if there is a GPU (timing windows start and end here)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_with(ov: list[str], callback) -> None:
    """Train through ``train.py``'s path (``loopformer.training.run``) with the config that
    ``ov`` composes and ``callback`` added to the run's callbacks."""
    from hydra import compose, initialize_config_dir

    import loopformer.training as tr

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=ov)
    orig = tr.build_callbacks
    tr.build_callbacks = lambda *a: [*orig(*a), callback]
    tr.run(cfg)


# dense bf16 tensor-core peak, TFLOP/s (vendor datasheets, SXM parts)
BF16_PEAK = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def bf16_peak(device_name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in device_name), None)


def flops_per_step(spec) -> float:
    """Matmul FLOPs of one training step (forward 2x, backward 4x the MACs)."""
    m, s = spec.model, spec.curriculum.final
    T, C, B = 2 * s.n_points, m.n_embd, spec.data.batch_size
    per_layer = B * T * (12 * C * C) * 2 + B * 2 * T * T * C  # linear layers + attention
    if m.family == "looped":
        layers_grad = spec.curriculum.window * m.n_layer
        layers_nograd = (s.n_loops - spec.curriculum.window) * m.n_layer
    else:
        layers_grad, layers_nograd = m.n_layer, 0
    return per_layer * (3 * layers_grad + layers_nograd)


def measure(shape: str, path: str, steps: int, warmup: int, extra: list[str]) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from loopformer.config import Settings

    ov = overrides(shape, steps + warmup, extra) + ["run_dir=/tmp/_bench"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=ov)
    spec = Settings.from_config(cfg)
    cuda = torch.cuda.is_available()
    times: list[float] = []
    span: list[float] = []  # wall clock at the first timed step and after the last (synchronised)

    def step_start(i: int) -> float:
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            span.append(time.perf_counter())
        return time.perf_counter()

    def step_end(i: int, t0: float) -> None:
        if not cuda:  # on a GPU, a sync per step would stall the queue: the span times it
            times.append(time.perf_counter() - t0)
        if i == warmup + steps - 1:
            if cuda:
                torch.cuda.synchronize()
            span.append(time.perf_counter())

    if path == "lightning":
        import shutil

        import lightning as L

        class Timer(L.Callback):
            def on_train_batch_start(self, trainer, *a):
                self.t0 = step_start(trainer.global_step)

            def on_train_batch_end(self, trainer, *a):
                step_end(trainer.global_step - 1, self.t0)

        shutil.rmtree("/tmp/_bench", ignore_errors=True)
        run_with(ov, Timer())
    else:
        from loopformer.data import generator
        from loopformer.models import build_model

        device = torch.device("cuda" if cuda else "cpu")
        model = build_model(spec.model).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)
        s = spec.curriculum.final
        for i in range(steps + warmup):
            t0 = step_start(i)
            xs, ys = spec.function.sample(spec.data.batch_size, s.n_points, s.n_dims,
                                      generator(device, 0, i, 0))
            preds = model(xs, ys, n_loops=s.n_loops, window=spec.curriculum.window)
            loss = (preds - ys).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_end(i, t0)
    mean = (span[1] - span[0]) / steps
    sec = mean if cuda else statistics.median(times[warmup:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss in KiB)
    out = {"shape": shape, "path": path, "s_per_step": sec, "steps_per_s": 1 / sec,
           "mean_s_per_step": mean,
           "gflops": flops_per_step(spec) / sec / 1e9, "peak_rss_gib": peak,
           "threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu"}
    if cuda:
        name = torch.cuda.get_device_name()
        out.update(device=name, peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30)
        if (p := bf16_peak(name)) is not None:
            out["pct_bf16_peak"] = 100 * out["gflops"] / 1e3 / p
    return out


def predict_throughput(loops: int, prompts: int) -> float:
    import torch

    from loopformer import ModelConfig, build_model, build_task

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(ModelConfig()).to(device).eval()
    task = build_task("linear_regression", 20)
    xs, ys = task.sample(prompts, 41, 20, torch.Generator(device).manual_seed(0))
    model.predict(xs[:8], ys[:8], n_loops=2)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.predict(xs, ys, n_loops=loops)
    if device == "cuda":
        torch.cuda.synchronize()
    return prompts * loops / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--paths", nargs="*", default=["lightning", "plain"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--extra", nargs="*", default=[], help="extra config overrides")
    ap.add_argument("--predict-loops", type=int, default=100)
    ap.add_argument("--label", default="", help="names this configuration in the table")
    ap.add_argument("--jsonl", default=None, help="append each result as a JSON line here")
    ap.add_argument("--one", nargs=2, metavar=("SHAPE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.warmup, args.extra)))
        return
    env = dict(os.environ)
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{gpu}, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}", flush=True)
    print(f"{'shape':<12}{'path':<11}{'label':<22}{'s/step':>9}{'steps/s':>9}{'GFLOP/s':>9}"
          f"{'% bf16':>8}{'RSS GiB':>9}{'GPU GiB':>9}")
    results = {}
    for shape in args.shapes:
        for path in args.paths:
            cmd = [sys.executable, __file__, "--one", shape, path, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--extra", *args.extra]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if out.returncode:
                print(out.stderr[-2000:])
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["label"] = args.label if path == "lightning" else "fp32 eager"
            r["extra"] = args.extra if path == "lightning" else []
            results[(shape, path)] = r
            pct = f"{r['pct_bf16_peak']:.1f}" if "pct_bf16_peak" in r else "-"
            gpu = f"{r['peak_gpu_gib']:.2f}" if "peak_gpu_gib" in r else "-"
            print(f"{shape:<12}{path:<11}{r['label']:<22}{r['s_per_step']:>9.4f}"
                  f"{r['steps_per_s']:>9.2f}{r['gflops']:>9.1f}{pct:>8}"
                  f"{r['peak_rss_gib']:>9.2f}{gpu:>9}", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(r) + "\n")
        if (shape, "lightning") in results and (shape, "plain") in results:
            ratio = results[(shape, "lightning")]["steps_per_s"] / results[(shape, "plain")][
                "steps_per_s"]
            print(f"{shape:<12}Lightning / plain steps/s = {ratio:.3f}")
    if args.predict_loops:
        tp = predict_throughput(args.predict_loops, 256)
        print(f"predict (256 prompts x {args.predict_loops} loops, seed final shape): "
              f"{tp:,.0f} prompt-loops/s")


if __name__ == "__main__":
    main()
