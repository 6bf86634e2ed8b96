"""Hand-built "models" whose answer after loop t is known exactly: the p-hop answer for
``hops(t)`` hops (``t``: linear hopping; ``2**t``: pointer doubling). They speak the looped
model's interface (``forward`` with ``n_loops`` and ``window``, ``iterate``, ``read``), so
the depth dial's scoring and the analysis read them as they read a trained model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopformer.readout import IGNORE
from loopformer.tasks import hop_targets


class HopOracle(nn.Module):
    """After loop t the state is the one-hot of the ``hops(t)``-hop answer at every position
    (zero where it is undefined), and the read-out is the identity: logits = state."""

    def __init__(self, vocab: int, hops, n_layer: int = 1):
        super().__init__()
        self.vocab, self.hops = vocab, hops
        self.cfg = type("Cfg", (), {"n_classes": vocab, "vocab": vocab, "family": "looped",
                                    "n_layer": n_layer})()
        self.dummy = nn.Parameter(torch.zeros(()))  # a device to be on

    def state(self, xs: torch.Tensor, t: int) -> torch.Tensor:
        j = hop_targets(xs, self.hops(t), self.vocab)  # (B, n), IGNORE where undefined
        z = F.one_hot(j.clamp_min(0), self.vocab).float()  # (B, n, V)
        return torch.where((j == IGNORE).unsqueeze(-1), 0.0, z)

    def iterate(self, xs, ys, n_loops=None, settle_tol=None):
        for t in range(1, (n_loops or 1) + 1):
            yield t, self.state(xs, t), None

    def read(self, z, at=None):
        return z

    def unit_map(self, xs, ys):
        return None

    def forward(self, xs, ys, n_loops=None, window=None, **kw):
        b = n_loops or 1
        window = b if window is None else min(window, b)
        return torch.stack([self.state(xs, t) for t in range(b - window + 1, b + 1)])
