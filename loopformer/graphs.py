"""Whole-step CUDA graphs for training (``perf.cuda_graph=true``).

A looped model's training step issues the block's kernels for every loop iteration, forward
and backward: about a thousand small launches at the seed's shape, so on a GPU the host, not
the device, sets the pace. :class:`StepGraph` records the step's forward pass (all loop
iterations), loss and backward pass once as a CUDA graph and replays it every step with the
new prompts copied into its input buffers: one launch instead of a thousand. The optimizer
update (fused Adam: a few launches) stays outside the graph, so Lightning still counts steps,
calls its hooks and steps the learning-rate schedule as usual.

A graph is valid for one input shape and loop count; when the curriculum changes either, the
old graph is dropped and the first ``warmup`` steps at the new shape run eagerly (they are real
training steps, on a side stream as CUDA graph capture requires) before the next one is
captured. Each captured step is replayed at once, so capture changes no step's result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class StepGraph:
    """Forward + loss + backward of ``loss_fn(xs, ys, *args)``, replayed as a CUDA graph.

    ``loss_fn`` returns ``(loss, extra)``: the scalar to differentiate and a tensor of
    statistics (both are returned detached). After a call, the parameters' ``.grad`` hold this
    step's gradients. With ``capture=False`` every step runs eagerly (the same code path,
    used where no CUDA device exists)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], loss_fn: LossFn,
                 capture: bool = True, warmup: int = 2):
        if warmup < 1:
            raise ValueError("warmup must be >= 1: a graph is captured after eager steps")
        self.params = [p for p in params if p.requires_grad]
        self.loss_fn = loss_fn
        self.capture = capture
        self.warmup = warmup
        self.key = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_xs = self.static_ys = self.static_out = self.static_grads = None
        self.eager_steps = 0   # eager steps at the current key
        self.captures = 0      # graphs captured so far (one per shape / loop count)
        self.replays = 0

    def _autocast(self, device_type: str):
        """The caller's autocast, re-entered with its cache off: a cached cast would be
        made during capture and never refreshed when the weights change."""
        if not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        dtype = torch.get_autocast_dtype(device_type)
        return torch.autocast(device_type, dtype=dtype, cache_enabled=False)

    def _run(self, xs, ys, *args) -> tuple[torch.Tensor, torch.Tensor]:
        for p in self.params:
            p.grad = None  # the backward pass writes fresh gradients (in the graph: its own)
        device_type = xs.device.type
        with self._autocast(device_type):
            loss, extra = self.loss_fn(xs, ys, *args)
        with torch.autocast(device_type, enabled=False):
            loss.backward()
        return loss.detach(), extra.detach()

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor, *args):
        device_type = xs.device.type
        key = (tuple(xs.shape), tuple(ys.shape), xs.dtype, args,
               torch.is_autocast_enabled(device_type))
        if key != self.key:  # drop the old graph and its buffers: its memory pool is freed
            self.key, self.graph, self.eager_steps = key, None, 0
            self.static_xs = self.static_ys = self.static_out = self.static_grads = None
        if not self.capture or self.eager_steps < self.warmup:
            self.eager_steps += 1
            if not self.capture:
                return self._run(xs, ys, *args)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._run(xs, ys, *args)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.static_xs, self.static_ys = xs.clone(), ys.clone()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_out = self._run(self.static_xs, self.static_ys, *args)
            self.graph = graph
            self.static_grads = [p.grad for p in self.params]  # the graph writes these
            self.captures += 1
        else:
            self.static_xs.copy_(xs)
            self.static_ys.copy_(ys)
        self.graph.replay()
        for p, g in zip(self.params, self.static_grads, strict=True):
            p.grad = g  # in case anything replaced .grad since the last replay (zero_grad)
        self.replays += 1
        return self.static_out
