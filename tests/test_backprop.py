"""curriculum.backprop: which loop iterations a looped model's training step backpropagates
through, checked against loops written out by hand with the model's own step."""

import re

import pytest
import torch
from conftest import compose_cfg

from loopformer.config import Settings
from loopformer.errors import ConfigError
from loopformer.models import build_model


def _model():
    torch.manual_seed(0)
    return build_model(dict(n_dims=3, n_positions=6, n_embd=16, n_head=2)).double()


def _hand_grads(model, xs, ys, n_loops, detach_before):
    """The gradient of the last iteration's summed predictions, the state detached before
    iteration ``detach_before`` (0: never)."""
    model.zero_grad()
    p = model.layout(xs, ys, None)
    z, s, pos = model.start(p)
    for t in range(n_loops):
        if t == detach_before and t > 0:
            z = z.detach()
        z = model.step(z, p.e, s, pos, p.mask)
    model.read(z, p.read_at).sum().backward()
    return [q.grad.clone() for q in model.parameters()]


def _forward_grads(model, xs, ys, n_loops, backprop):
    model.zero_grad()
    model(xs, ys, n_loops=n_loops, window=1, backprop=backprop).sum().backward()
    return [q.grad.clone() for q in model.parameters()]


def test_backprop_all_is_the_gradient_through_every_iteration_and_window_through_the_last():
    model = _model()
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(4, 6, 3, generator=g).double(), torch.randn(4, 6, generator=g).double()
    b = 4
    full, last = _hand_grads(model, xs, ys, b, 0), _hand_grads(model, xs, ys, b, b - 1)
    for got, want in zip(_forward_grads(model, xs, ys, b, "all"), full, strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(_forward_grads(model, xs, ys, b, "window"), last, strict=True):
        torch.testing.assert_close(got, want)
    # the two differ: the earlier iterations carry gradient only with backprop="all"
    assert any(not torch.allclose(a, w) for a, w in zip(full, last, strict=True))


def test_an_unknown_backprop_is_refused_with_its_choices():
    with pytest.raises(ConfigError, match=re.escape(
            "curriculum.backprop='every' is unknown; choose one of window, all")):
        Settings.from_config(compose_cfg("curriculum.backprop=every"))
