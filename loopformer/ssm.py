"""Selective state-space sequence mixer (Mamba-2 style), a drop-in for causal self-attention.

For each head h, with state S (head_dim x d_state), scalar decay a_t = exp(dt_t * A_h),
A_h = -exp(A_log_h) < 0, and input-dependent B_t, C_t (d_state) and step size dt_t > 0:

    S_t = a_t * S_{t-1} + dt_t * u_t B_t^T
    y_t = S_t C_t + D_h * u_t

The recurrence is evaluated without a per-token loop by the chunked "SSD" scan: inside a
chunk y = (L o (C B^T)) (dt * u) with L_ij = exp(sum_{k=j+1..i} log a_k) for j <= i (else 0);
the state is carried across chunks by a short loop over chunks. Pure PyTorch, any device.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: out[..., i, j] = sum_{k=j+1..i} x[..., k] for j <= i, -inf above
    the diagonal, so exp(out) is the lower-triangular decay matrix L (no exp of positives,
    no differences of long cumulative sums)."""
    T = x.size(-1)
    ones = torch.ones(T, T, dtype=torch.bool, device=x.device)
    x = x.unsqueeze(-1).expand(*x.shape, T)  # (..., T, T), x[..., i, j] = x_i
    out = torch.cumsum(x.masked_fill(~ones.tril(-1), 0.0), dim=-2)  # (..., T, T), k in (j, i]
    return out.masked_fill(~ones.tril(0), -math.inf)  # (..., T, T), -inf where j > i


def _to_chunks(t: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """(B, T, ...) -> (B, n_chunks, chunk, ...), zero-padding T at the end (padded steps have
    dt = 0, so they neither decay nor feed the state, and they come after every real step)."""
    pad = n_chunks * chunk - t.size(1)
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.reshape(t.size(0), n_chunks, chunk, *t.shape[2:])


def _carry_states(states: torch.Tensor, chunk_decay: torch.Tensor) -> torch.Tensor:
    """Sequential pass over chunks. states: (B, H, nc, P, N) contribution of each chunk's own
    inputs to the state at its end; chunk_decay: (B, H, nc) total log-decay of each chunk.
    Returns the state entering each chunk, (B, H, nc, P, N)."""
    S = torch.zeros_like(states[:, :, 0])  # (B, H, P, N)
    entering = []
    for c in range(states.size(2)):
        entering.append(S)
        S = S * chunk_decay[:, :, c, None, None].exp() + states[:, :, c]
    return torch.stack(entering, dim=2)  # (B, H, nc, P, N)


def ssd_scan(u, dt, A, B, C, chunk_size: int = 64) -> torch.Tensor:
    """Chunked parallel scan of S_t = exp(dt_t A) S_{t-1} + dt_t u_t B_t^T, y_t = S_t C_t.
    u: (B, T, H, P), dt: (B, T, H), A: (H,), B, C: (B, T, N). Returns y: (B, T, H, P).
    Computed in at least float32 and cast back to u.dtype."""
    out_dtype, T = u.dtype, u.size(1)
    cdt = torch.promote_types(u.dtype, torch.float32)
    u, dt, A, B, C = (t.to(cdt) for t in (u, dt, A, B, C))
    n_chunks = math.ceil(T / chunk_size)
    chunk = math.ceil(T / n_chunks)  # balanced chunks: at most n_chunks - 1 padded steps
    xdt = _to_chunks(u * dt.unsqueeze(-1), n_chunks, chunk).permute(0, 3, 1, 2, 4)
    # xdt: (B, H, nc, L, P)
    logA = _to_chunks(dt * A, n_chunks, chunk).permute(0, 3, 1, 2)  # (B, H, nc, L)
    B = _to_chunks(B, n_chunks, chunk).unsqueeze(1)  # (B, 1, nc, L, N)
    C = _to_chunks(C, n_chunks, chunk).unsqueeze(1)  # (B, 1, nc, L, N)
    Lmat = segsum(logA).exp()  # (B, H, nc, L, L)
    y_diag = (Lmat * (C @ B.transpose(-1, -2))) @ xdt  # (B, H, nc, L, P)
    # state at each chunk's end from its own inputs; last row of L is the decay s -> end
    states = xdt.transpose(-1, -2) @ (B * Lmat[..., -1, :, None])  # (B, H, nc, P, N)
    logA_cum = torch.cumsum(logA, dim=-1)  # (B, H, nc, L), all <= 0
    entering = _carry_states(states, logA_cum[..., -1])  # (B, H, nc, P, N)
    y_off = (C * logA_cum.exp().unsqueeze(-1)) @ entering.transpose(-1, -2)  # (B, H, nc, L, P)
    y = (y_diag + y_off).permute(0, 2, 3, 1, 4)  # (B, nc, L, H, P)
    y = y.reshape(y.size(0), n_chunks * chunk, *y.shape[3:])[:, :T]  # (B, T, H, P)
    return y.to(out_dtype)


class SSMMixer(nn.Module):
    """Mamba-2 style selective SSM mixer: (B, T, n_embd) -> (B, T, n_embd), strictly causal."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        chunk_size: int = 64,
    ):
        super().__init__()
        d_inner = expand * n_embd
        assert d_inner % n_head == 0, "expand * n_embd must be divisible by n_head"
        self.n_head, self.head_dim, self.d_inner = n_head, d_inner // n_head, d_inner
        self.d_state, self.d_conv, self.chunk_size = d_state, d_conv, chunk_size
        # in_proj -> [z (gate), u (inner stream), B, C, dt_raw (one per head)]
        self.in_proj = nn.Linear(n_embd, 2 * d_inner + 2 * d_state + n_head, bias=False)
        conv_dim = d_inner + 2 * d_state  # depthwise causal conv over [u, B, C]
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, bias=True)
        self.A_log = nn.Parameter(torch.empty(n_head))
        self.dt_bias = nn.Parameter(torch.empty(n_head))
        self.D = nn.Parameter(torch.empty(n_head))
        self.norm = nn.RMSNorm(d_inner, eps=1e-5)
        self.c_proj = nn.Linear(d_inner, n_embd, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        """Mamba init: A = -uniform[1, 16] per head, softplus(dt_bias) log-uniform in
        [dt_min, dt_max], D = 1, norm weight = 1. Call after any generic weight init."""
        dev = self.A_log.device
        A = torch.empty(self.n_head, device=dev).uniform_(1.0, 16.0)
        self.A_log.copy_(A.log())
        dt = torch.exp(
            torch.rand(self.n_head, device=dev) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        )
        dt = dt.clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)
        for p in (self.A_log, self.dt_bias, self.D):
            p._no_weight_decay = True

    def project(self, x: torch.Tensor):
        """Input-dependent quantities after the causal conv: u (B, T, H, P), z (B, T, d_inner),
        B and C (B, T, d_state), dt (B, T, H) > 0."""
        Bsz, T, _ = x.shape
        z, xBC, dt = self.in_proj(x).split(
            [self.d_inner, self.d_inner + 2 * self.d_state, self.n_head], dim=-1
        )
        xBC = F.pad(xBC.transpose(1, 2), (self.d_conv - 1, 0))  # (B, conv_dim, d_conv-1+T)
        xBC = F.silu(self.conv1d(xBC)).transpose(1, 2)  # (B, T, conv_dim)
        u, B, C = xBC.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        u = u.reshape(Bsz, T, self.n_head, self.head_dim)  # (B, T, H, P)
        dt = dt.to(torch.promote_types(dt.dtype, torch.float32))  # step sizes kept >= fp32
        dt = F.softplus(dt + self.dt_bias)  # (B, T, H)
        return u, z, B, C, dt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bsz, T, _ = x.shape
        u, z, B, C, dt = self.project(x)
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        y = ssd_scan(u, dt, A, B, C, self.chunk_size)  # (B, T, H, P)
        y = y + u * self.D.to(u.dtype)[:, None]  # (B, T, H, P)
        y = y.reshape(Bsz, T, self.d_inner)  # (B, T, d_inner)
        y = self.norm(y) * F.silu(z)  # (B, T, d_inner)
        return self.c_proj(y)  # (B, T, n_embd)
