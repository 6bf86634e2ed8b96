"""SSMMixer: chunked scan vs. a per-token loop, causality, gradients, shapes and bfloat16."""

import pytest
import torch
import torch.nn.functional as F

from loopformer.ssm import SSMMixer, segsum


def make_mixer(chunk_size=8, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    mixer = SSMMixer(n_embd=16, n_head=4, d_state=6, chunk_size=chunk_size, **kw).to(dtype)
    with torch.no_grad():  # larger dt than the default init, so decays matter across chunks
        mixer.dt_bias.add_(torch.linspace(0.0, 4.0, mixer.n_head, dtype=dtype))
    return mixer


def reference_forward(mixer: SSMMixer, x: torch.Tensor) -> torch.Tensor:
    """Slow per-token loop over S_t = a_t S_{t-1} + dt_t u_t B_t^T, y_t = S_t C_t + D u_t."""
    u, z, B, C, dt = mixer.project(x)  # (b, T, H, P), (b, T, d_inner), (b, T, N) x2, (b, T, H)
    A = -torch.exp(mixer.A_log)  # (H,)
    b, T, H, P = u.shape
    S = torch.zeros(b, H, P, mixer.d_state, dtype=x.dtype)
    ys = []
    for t in range(T):
        a = torch.exp(dt[:, t] * A)  # (b, H)
        S = a[:, :, None, None] * S + dt[:, t, :, None, None] * (
            u[:, t, :, :, None] * B[:, t, None, None, :]
        )
        ys.append((S * C[:, t, None, None, :]).sum(-1))  # (b, H, P)
    y = torch.stack(ys, dim=1)  # (b, T, H, P)
    y = y + mixer.D[:, None] * u
    y = mixer.norm(y.reshape(b, T, -1)) * F.silu(z)
    return mixer.c_proj(y)


def test_segsum_matches_cumsum_differences():
    x = -torch.rand(3, 7, dtype=torch.float64)
    c = x.cumsum(-1)
    out = segsum(x)
    lower = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(out[..., lower], (c[..., :, None] - c[..., None, :])[..., lower])
    assert torch.isneginf(out[..., ~lower]).all()


@pytest.mark.parametrize("T", [1, 5, 8, 21, 37])
def test_matches_per_token_loop(T):
    mixer = make_mixer(chunk_size=8)
    x = torch.randn(3, T, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), reference_forward(mixer, x), rtol=1e-9, atol=1e-9)


def test_matches_per_token_loop_float32_default_chunk():
    torch.manual_seed(1)
    mixer = SSMMixer(n_embd=32, n_head=4)  # chunk_size 64, default init
    x = torch.randn(2, 150, 32)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), reference_forward(mixer, x), rtol=1e-5, atol=1e-5)


def test_strictly_causal():
    mixer = make_mixer(chunk_size=8)
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    with torch.no_grad():
        y = mixer(x)
        for k in (0, 1, 7, 8, 9, 17, 29):
            x2 = x.clone()
            x2[:, k:] = torch.randn_like(x2[:, k:]) * 10
            y2 = mixer(x2)
            torch.testing.assert_close(y2[:, :k], y[:, :k], rtol=0, atol=1e-12)
            assert not torch.allclose(y2[:, k], y[:, k])


def test_gradients_reach_every_parameter():
    mixer = make_mixer(chunk_size=8, dtype=torch.float32)
    x = torch.randn(2, 19, 16, requires_grad=True)
    mixer(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in mixer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_shape_and_bfloat16():
    mixer = SSMMixer(n_embd=32, n_head=4, chunk_size=16).to(torch.bfloat16)
    x = torch.randn(2, 41, 32, dtype=torch.bfloat16, requires_grad=True)
    y = mixer(x)
    assert y.shape == (2, 41, 32) and y.dtype == torch.bfloat16
    assert torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad.float()).all()


def test_ssm_init():
    torch.manual_seed(0)
    mixer = SSMMixer(n_embd=64, n_head=64, expand=1)
    A = torch.exp(mixer.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    dt = F.softplus(mixer.dt_bias)
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 1e-1 * (1 + 1e-5))).all()
    assert torch.equal(mixer.D, torch.ones(64))
