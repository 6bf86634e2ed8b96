"""Transformer, weight-tied and looped transformer models for in-context learning.

All families share the prompt encoding, the pre-LayerNorm GPT-2 block, the final LayerNorm
and the read-out. The task chooses the read-in and the read-out (``model.vocab``,
``model.n_classes``, set by its YAML):

- vectors (``vocab=0``): ``x1, (y1,0..0), x2, ...`` -> a linear read-in; predictions are read
  at the ``x`` tokens, so the prediction at index ``k`` has seen ``k`` examples. ``ys`` may be
  class ids: the y token carries the label as its first coordinate, as a float.
- tokens (``vocab=V``): a sequence of token ids ``(B, T)`` -> an embedding table of ``V``
  symbols; predictions are read at every token (``ys`` are targets, never read in).

The read-out gives one number per token (``n_classes=0``: ``forward`` returns ``(K, B, n)``) or
``C`` class logits (``forward`` returns ``(K, B, n, C)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from loopformer.errors import ConfigError, typed

FAMILIES = ("looped", "transformer", "tied")
MIXERS = ("attention", "ssm")
INJECTIONS = ("add", "mul")


@dataclass
class ModelConfig:
    family: str = "looped"  # looped | transformer | tied
    n_dims: int = 20  # input dimension d of x
    n_positions: int = 101  # longest prompt, in points (the embedding table holds 2n+1)
    n_embd: int = 256  # width
    n_layer: int = 1  # layers of the block (looped), stack depth (transformer),
    #                    applications of the one-block backbone (tied)
    n_head: int = 8  # attention heads (also SSM heads)
    mixer: str = "attention"  # attention | ssm: the token mixer inside each block
    injection: str = "add"  # add: z = f(z + e), mul: z = f(z * e)   (looped only)
    keep_tokens: float = 0  # state tokens fed back: 0 all, N>=1 last N, N<0 drop first |N|,
    #                         0<N<1 last round(N * sequence length)   (looped only)
    inject_every_layer: bool = False  # inject the prompt before every layer of the block
    skip_connection: bool = False  # also inject the state of two iterations back
    dropout: float = 0.0  # GPT-2 dropout (0 in all reference runs)
    vocab: int = 0  # read-in: 0 vectors (x, y pairs), V tokens of a V-symbol vocabulary
    n_classes: int = 0  # read-out: 0 one number per token (regression), C class logits
    ssm_d_state: int = 16  # state size of the SSM mixer
    ssm_d_conv: int = 4  # causal convolution width of the SSM mixer

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def choice(key, value, allowed):
            if value not in allowed:
                raise ConfigError(f"model.{key}={value!r} is unknown; choose one of "
                                  f"{', '.join(allowed)}")

        choice("family", self.family, FAMILIES)
        choice("mixer", self.mixer, MIXERS)
        choice("injection", self.injection, INJECTIONS)
        for key in ("n_dims", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be >= 1")
        if self.n_embd % self.n_head:
            divisors = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0]
            raise ConfigError(f"model.n_head={self.n_head} does not divide model.n_embd="
                              f"{self.n_embd}; use model.n_head in {divisors[:12]}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        # the task's own values are checked by the task (a p-hop vocabulary below 2, ...)
        if self.vocab < 0:
            raise ConfigError(f"model.vocab={self.vocab} must be 0 (vector prompts) or the "
                              f"number of token symbols")
        if self.n_classes < 0:
            raise ConfigError(f"model.n_classes={self.n_classes} must be 0 (regression) or "
                              f"the number of classes")
        keep_mask_len(self.keep_tokens, self.seq_len(self.n_positions), self.n_positions)

    def seq_len(self, n_points: int) -> int:
        """Tokens of an ``n_points`` prompt: ``2n`` (x, y pairs) or ``n`` (token prompts)."""
        return n_points if self.vocab else 2 * n_points

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return typed(cls, d, "model")


def keep_mask_len(keep: float, seq_len: int, n_points: int | None = None,
                  strict: bool = True) -> int:
    """Number of leading state tokens replaced by the neutral element for ``keep_tokens``.

    Raises ConfigError when the value is malformed or (``strict``) keeps no token of a prompt
    of ``seq_len`` tokens (``n_points`` only improves the message). Non-strict (a prompt
    shorter than the longest one) a value that keeps no token masks them all."""
    what = f"a {n_points}-point prompt" if n_points else f"a {seq_len}-token sequence"
    hint = f"use -{seq_len - 1}..{seq_len} or a fraction in (0,1)"
    if keep >= 1 and keep != int(keep):
        raise ConfigError(f"model.keep_tokens={keep:g} is not an integer; {hint}")
    if keep == 0:
        return 0
    if keep >= 1:
        return max(0, seq_len - int(keep))
    if keep < 0:
        drop = int(-keep)
        if keep != -drop:
            raise ConfigError(f"model.keep_tokens={keep:g} is not an integer; {hint}")
        if drop >= seq_len:
            if not strict:
                return seq_len
            raise ConfigError(f"model.keep_tokens={keep:g} drops all {seq_len} tokens of {what}; "
                              f"{hint}")
        return drop
    kept = round(keep * seq_len)
    if kept < 1:
        if not strict:
            return seq_len
        raise ConfigError(f"model.keep_tokens={keep:g} keeps no token of {what}; {hint}")
    return seq_len - kept


# ----------------------------------------------------------------------------- blocks


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, mask=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        # mask (T, T), True where attention is allowed; None: causal
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=mask is None)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        # tanh approximation, as GPT-2's "gelu_new"
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


def build_mixer(cfg: ModelConfig) -> nn.Module:
    if cfg.mixer == "ssm":
        from loopformer.ssm import SSMMixer

        return SSMMixer(cfg.n_embd, cfg.n_head, d_state=cfg.ssm_d_state, d_conv=cfg.ssm_d_conv)
    return CausalSelfAttention(cfg)


class Block(nn.Module):
    """Pre-LayerNorm GPT-2 block: ``x + mix(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = build_mixer(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask=None):
        mixed = self.attn(self.ln_1(x)) if mask is None else self.attn(self.ln_1(x), mask)
        x = x + self.drop(mixed)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------- stopping rules


class StopRule:
    """An early-exit rule: a per-prompt change between consecutive loops; a prompt stops at the
    first loop whose change is below the threshold ``tol``. ``model.predict(tol=, rule=)`` and
    ``python -m loopformer.analyze`` (part ``exit``) use the same rules."""

    name: str = ""
    default_tol: float = 0.0

    def change(self, z_prev, z, pred_prev, pred) -> torch.Tensor:
        """Per-prompt change ``(B,)`` from loop t-1 (state ``z_prev``, predictions
        ``pred_prev``) to loop t; states are (B, T, C), predictions (B, n) or logits
        (B, n, C)."""
        raise NotImplementedError


class PredictionChange(StopRule):
    """Largest absolute change of the prompt's predictions (any position)."""

    name = "prediction"
    default_tol = 1e-3

    def change(self, z_prev, z, pred_prev, pred):
        # (B, n) numbers or (B, n, C) logits -> (B,)
        return (pred - pred_prev).abs().flatten(1).amax(dim=1)


class StateChange(StopRule):
    """Relative change of the state the read-out sees, ``||z_t - z_{t-1}|| / ||z_t||`` over all
    tokens of the prompt; 0.03 is the default of recurrent-depth language models."""

    name = "state"
    default_tol = 0.03

    def change(self, z_prev, z, pred_prev, pred):
        diff = (z - z_prev).flatten(1).norm(dim=1)  # (B,)
        return diff / z.flatten(1).norm(dim=1).clamp_min(torch.finfo(z.dtype).tiny)


STOP_RULES: dict[str, StopRule] = {r.name: r for r in (PredictionChange(), StateChange())}

# ----------------------------------------------------------------------------- settled prompts

SETTLE_PATIENCE = 3  # consecutive loops below settle_tol before a prompt stops being computed


def relative_change(z_prev: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``||z - z_prev|| / ||z||`` per prompt ``(B,)`` (the ``state`` rule's change)."""
    return STOP_RULES["state"].change(z_prev, z, None, None)


def settled_loop(step, z: torch.Tensor, s: torch.Tensor | None, n_loops: int,
                 settle_tol: float | None = None, patience: int = SETTLE_PATIENCE):
    """Yield ``(t, z_t, s_t)`` for ``t = 1..n_loops`` of the map ``step(idx, z, s) -> z'``
    (``idx``: the prompts whose states ``z`` (A, ...) and ``s`` are given; None: all), with
    ``s_t = z_{t-1}`` where ``s`` is not None.

    With ``settle_tol``, a prompt whose relative state change stayed below it for
    ``patience`` consecutive loops is settled: it is no longer computed and its last state
    is carried forward, exact where the map has reached its fixed point; the others, in a
    cycle or still moving, keep computing. Yielded tensors are new at every loop."""
    active = torch.arange(z.shape[0], device=z.device) if settle_tol is not None else None
    calm = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    for t in range(n_loops):
        if active is None:
            z, s = step(None, z, s), (z if s is not None else None)
        elif len(active):
            z_a = step(active, z[active], None if s is None else s[active])  # (A, ...)
            change = relative_change(z[active], z_a)  # (A,)
            calm_a = torch.where(change < settle_tol, calm[active] + 1, 0)
            calm = calm.index_copy(0, active, calm_a)
            if s is not None:
                s = s.index_copy(0, active, z[active])
            z = z.index_copy(0, active, z_a)
            active = active[calm_a < patience]
        yield t + 1, z, s


def stop_rule(rule: str | StopRule) -> StopRule:
    if isinstance(rule, StopRule):
        return rule
    if rule not in STOP_RULES:
        raise ConfigError(f"rule={rule!r} is unknown; choose one of {', '.join(STOP_RULES)}")
    return STOP_RULES[rule]


# ----------------------------------------------------------------------------- models


class Layout(NamedTuple):
    """A prompt's tokens as the backbone sees them."""

    e: torch.Tensor  # (B, T, C) read-in embeddings
    slots: torch.Tensor  # (T,) each token's index in the plain 2n-token prompt
    mask: torch.Tensor | None  # (T, T) True where attention is allowed; None: causal
    read_at: slice  # the tokens predictions are read at


class InContextModel(nn.Module):
    """Shared prompt encoding, blocks, final LayerNorm and read-out. Subclasses define how
    the blocks are applied; ``forward`` returns stacked predictions ``(K, B, n)`` (or logits
    ``(K, B, n, C)`` with ``n_classes=C``)."""

    def __init__(self, cfg: ModelConfig, n_blocks: int):
        super().__init__()
        self.cfg = cfg
        # token prompts: an embedding table; vector prompts: a linear map of x and y tokens
        self.read_in = (nn.Embedding(cfg.vocab, cfg.n_embd) if cfg.vocab
                        else nn.Linear(cfg.n_dims, cfg.n_embd))
        self.wpe = nn.Embedding(cfg.seq_len(cfg.n_positions) + (0 if cfg.vocab else 1),
                                cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.read_out = nn.Linear(cfg.n_embd, cfg.n_classes or 1)
        # where predictions are read: the x tokens of a pair prompt, every token of a sequence
        self.read_at = slice(None) if cfg.vocab else slice(None, None, 2)
        self._init_weights(n_blocks)

    def _init_weights(self, n_blocks: int) -> None:
        # GPT-2 init inside the backbone and for a token embedding (GPT-2's wte); the linear
        # read-in/read-out keep PyTorch's default, as the reference's linear heads do
        for name, m in self.named_modules():
            if name in ("read_in", "read_out") and isinstance(m, nn.Linear):
                continue
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_blocks))
        for m in self.modules():
            if hasattr(m, "reset_ssm_parameters"):
                m.reset_ssm_parameters()

    def embed(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Interleave ``x1, (y1,0,..), x2, ...`` and read in: (B,n,d), (B,n) -> (B, 2n, C);
        token prompts: (B, n) ids -> (B, n, C) (``ys``, the targets, are not read)."""
        if self.cfg.vocab:
            if xs.dim() != 2 or xs.dtype != torch.long:
                raise ValueError(f"a token prompt is (B, n) int64 ids; got {tuple(xs.shape)} "
                                 f"{xs.dtype}")
            if xs.shape[1] > self.cfg.n_positions:
                raise ConfigError(f"a prompt of {xs.shape[1]} tokens exceeds model.n_positions="
                                  f"{self.cfg.n_positions}")
            return self.read_in(xs)  # (B, n, C)
        B, n, d = xs.shape
        if n > self.cfg.n_positions:
            raise ConfigError(f"a prompt of {n} points exceeds model.n_positions="
                              f"{self.cfg.n_positions}")
        if d != self.cfg.n_dims:
            raise ConfigError(f"inputs have {d} dims but model.n_dims={self.cfg.n_dims}")
        # class ids travel as floats in the first coordinate, as a regression target does
        ys_wide = F.pad(ys.to(xs.dtype).unsqueeze(-1), (0, d - 1))  # (B, n, d)
        tokens = torch.stack((xs, ys_wide), dim=2).view(B, 2 * n, d)  # (B, 2n, d)
        return self.read_in(tokens)  # (B, 2n, C)

    def layout(self, xs, ys, queries: torch.Tensor | None = None) -> Layout:
        """The prompt ``x1, (y1,0..), x2, ...``; with ``queries`` (B, m, d), ``m <= n`` side
        tokens appended: query ``i`` sits at ``x_i``'s position, sees the examples before
        ``i`` and itself, and no token sees it. The prediction read at query ``i`` is then the
        one the plain prompt with ``queries_i`` as its point ``i`` gives at ``i``, for all
        ``i`` in one pass (``m`` per-position prompts for one prompt up to 1.5x longer)."""
        e = self.embed(xs, ys)  # (B, 2n, C) or (B, n, C)
        n = xs.shape[1]
        slots = torch.arange(e.shape[1], device=e.device)
        if queries is None:
            return Layout(e, slots, None, slice(0, e.shape[1], 1 if self.cfg.vocab else 2))
        if self.cfg.vocab:
            raise ValueError("side queries are points of a pair prompt; a token prompt has none")
        if self.cfg.mixer != "attention":
            raise ValueError("side queries need an attention mixer (a mask); use "
                             "per-position prompts for model.mixer=" + self.cfg.mixer)
        m = queries.shape[1]
        e = torch.cat((e, self.read_in(queries)), dim=1)  # (B, T = 2n + m, C)
        slots = torch.cat((slots, 2 * torch.arange(m, device=e.device)))  # (T,)
        plain = torch.arange(2 * n + m, device=e.device) < 2 * n  # (T,)
        mask = (slots[None, :] < slots[:, None]) & plain[None, :]  # strictly earlier, plain
        mask |= torch.eye(2 * n + m, dtype=torch.bool, device=e.device)  # (T, T)
        return Layout(e, slots, mask, slice(2 * n, 2 * n + m))

    def position(self, T: int, device) -> torch.Tensor:
        return self.wpe(torch.arange(T, device=device))  # (T, C)

    def read(self, h: torch.Tensor, at: slice | None = None) -> torch.Tensor:
        """Predictions at the x tokens of a pair prompt, at every token of a token prompt (or
        at ``at``): (B, T, C) -> (B, n) numbers, or (B, n, n_classes) logits."""
        out = self.read_out(h[:, self.read_at if at is None else at])
        return out if self.cfg.n_classes else out.squeeze(-1)

    def backbone(self, h: torch.Tensor, blocks=None, pos=None, mask=None) -> torch.Tensor:
        pos = self.position(h.shape[1], h.device) if pos is None else pos
        h = self.drop(h + pos)
        for block in self.blocks if blocks is None else blocks:
            h = block(h, mask)
        return self.ln_f(h)

    @torch.no_grad()
    def predict(self, xs, ys, n_loops: int | None = None, **kw) -> torch.Tensor:
        """Predictions ``(B, n)`` without gradient. Looped models take ``tol`` and ``rule``
        (early exit per prompt, see :class:`StopRule`)."""
        return self(xs, ys, n_loops=n_loops, window=1, **kw)[-1]

    def iterate(self, xs, ys, n_loops: int | None = None, settle_tol: float | None = None):
        """Yield ``(t, z_t, s_t)`` after each unit of depth ``t = 1, 2, ...``: ``z_t`` is the
        state in the read-out's space (after the final LayerNorm, ``read(z_t)`` are the
        predictions) and ``(z_t, s_t)`` all that the next unit reads (``s_t`` is None unless
        a skip connection carries a second state). Only the current state is held. With
        ``settle_tol``, units of one map skip settled prompts (:func:`settled_loop`)."""
        raise NotImplementedError

    def unit_map(self, xs, ys):
        """The map ``(z_{t-1}, s_{t-1}) -> (z_t, s_t)`` of one unit of depth for these prompts,
        as a function of a tuple of tensors; None where the units are distinct maps."""
        return None


def _no_early_exit(model, tol) -> None:
    """Early exit stops a loop; a model with a fixed depth has none to stop."""
    if tol is not None:
        raise ConfigError(f"tol={tol} (early exit) applies to looped models; model.family="
                          f"{model.cfg.family} has a fixed depth")


class Transformer(InContextModel):
    """The Garg et al. baseline: a plain stack of ``n_layer`` blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, cfg.n_layer)

    def forward(self, xs, ys, n_loops=None, window=None, tol=None, rule=None, queries=None,
                backprop=None):
        _no_early_exit(self, tol)
        p = self.layout(xs, ys, queries)
        h = self.backbone(p.e, pos=self.wpe(p.slots), mask=p.mask)
        return self.read(h, p.read_at).unsqueeze(0)  # (1, B, n)

    def iterate(self, xs, ys, n_loops=None, settle_tol=None):
        """Per layer ``l = 1..n_layer``: ``ln_f`` of the residual stream after block ``l`` (the
        last one is the model's output state; earlier ones have no trained read-out). Its
        layers are distinct maps: ``settle_tol`` skips nothing."""
        h = self.embed(xs, ys)  # (B, 2n, C)
        h = self.drop(h + self.position(h.shape[1], h.device))
        for i, block in enumerate(self.blocks):
            h = block(h)
            yield i + 1, self.ln_f(h), None


class TiedTransformer(InContextModel):
    """Yang et al.'s weight-tied model: the whole one-block backbone applied ``n_layer`` times.

    ``h_0 = e`` (the read-in embedding), ``h_{i+1} = ln_f(block(h_i + p))`` for
    ``i < n_layer``, predictions read from ``h_{n_layer}``: every application re-adds the
    position embedding ``p`` and applies the final LayerNorm, and the prompt enters once, at
    the start. In terms of the looped family it is the looped backbone iterated without
    re-injection: its first application is one loop of the looped model (``z_0 = 0``, add
    injection), and each later one is the looped step with the injected embedding set to 0."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, 1)

    def forward(self, xs, ys, n_loops=None, window=None, tol=None, rule=None, queries=None,
                backprop=None):
        _no_early_exit(self, tol)
        p = self.layout(xs, ys, queries)
        h, pos = p.e, self.wpe(p.slots)  # (B, T, C), (T, C)
        for _ in range(self.cfg.n_layer):
            h = self.backbone(h, pos=pos, mask=p.mask)
        return self.read(h, p.read_at).unsqueeze(0)  # (1, B, n)

    def iterate(self, xs, ys, n_loops=None, settle_tol=None):
        """Per application ``t = 1..n_loops`` (default ``n_layer``; beyond it the model runs
        past its trained depth)."""
        h = self.embed(xs, ys)  # (B, 2n, C)
        pos = self.position(h.shape[1], h.device)
        yield from settled_loop(lambda idx, z, s: self.backbone(z, pos=pos), h, None,
                                n_loops or self.cfg.n_layer, settle_tol)

    def unit_map(self, xs, ys):
        pos = self.position(self.cfg.seq_len(xs.shape[1]), xs.device)
        return lambda z, s: (self.backbone(z, pos=pos), None)


class LoopedTransformer(InContextModel):
    """``z_{t+1} = Backbone(inject(keep(z_t), e, s_t))``, with a prediction per iteration.

    ``e`` is the read-in embedding, ``s_t = z_{t-1}`` with skip connections, ``inject`` is
    ``+`` (``z0 = 0``) or ``*`` (``z0 = 1``); the backbone re-adds the position embedding
    and applies the final LayerNorm every iteration."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, cfg.n_layer)
        self.neutral = 0.0 if cfg.injection == "add" else 1.0
        # recompute each window iteration in backward instead of storing its activations
        self.checkpoint_window = False

    def inject(self, z, e, s):
        if self.cfg.injection == "add":
            return z + e if s is None else z + e + s
        return z * e if s is None else z * e * s

    def keep(self, z, masked=None):
        """``z`` with the state tokens ``keep_tokens`` drops set to the neutral element
        (``masked`` (T,): those tokens, where the layout is not the plain prompt)."""
        if masked is not None:
            return z.masked_fill(masked[:, None], self.neutral)
        n_masked = (keep_mask_len(self.cfg.keep_tokens, z.shape[1], strict=False)
                    if self.cfg.keep_tokens else 0)
        if n_masked == 0:
            return z
        if n_masked >= z.shape[1]:
            return torch.full_like(z, self.neutral)
        neutral = torch.full_like(z[:, :n_masked], self.neutral)
        return torch.cat((neutral, z[:, n_masked:]), dim=1)  # (B, T, C)

    def step(self, z, e, s, pos=None, mask=None, masked=None):
        """One loop iteration: (B, T, C) -> (B, T, C)."""
        z = self.keep(z, masked)
        if not self.cfg.inject_every_layer:
            return self.backbone(self.inject(z, e, s), pos=pos, mask=mask)
        pos = self.position(z.shape[1], z.device) if pos is None else pos
        h = z
        for i, block in enumerate(self.blocks):
            h = self.inject(h, e, s)
            if i == 0:
                h = self.drop(h + pos)
            h = block(h, mask)
        return self.ln_f(h)

    def forward(self, xs, ys, n_loops: int | None = None, window: int | None = None,
                tol: float | None = None, rule: str | StopRule = "prediction",
                queries: torch.Tensor | None = None, settle_tol: float | None = None,
                backprop: str = "window"):
        """Run ``n_loops`` iterations; return the predictions of the last ``window`` ones,
        ``(window, B, n)``. Iterations before them run without gradient and store nothing
        (``backprop="all"``: every iteration runs with gradient).
        With ``tol`` (inference, ``window=1``), each prompt stops at the first iteration whose
        ``rule`` change (default: the largest change of its predictions) is below ``tol``.
        With ``queries``, the predictions at the side queries (:meth:`InContextModel.layout`).
        With ``settle_tol`` (inference), settled prompts are not computed further and keep
        their last predictions (:func:`settled_loop`)."""
        b = n_loops if n_loops is not None else 1
        window = b if window is None else min(window, b)
        if b < 1 or window < 1:
            raise ConfigError(f"n_loops={b} and window={window} must be >= 1")
        if tol is not None:
            if window != 1:
                raise ConfigError(f"tol={tol} (early exit) returns one prediction per prompt; "
                                  f"use window=1, not {window}")
            if queries is not None:
                raise ConfigError("tol (early exit) reads the plain prompt; it takes no queries")
            return self.predict_until(xs, ys, b, tol, rule)[0].unsqueeze(0)  # (1, B, n)
        p = self.layout(xs, ys, queries)
        e, mask, masked = p.e, p.mask, None  # (B, T, C)
        if queries is not None and self.cfg.keep_tokens:  # as in the plain 2n-token prompt
            masked = p.slots < keep_mask_len(self.cfg.keep_tokens, 2 * xs.shape[1],
                                             strict=False)
        z, s, pos = self.start(p)
        if settle_tol is not None:
            if torch.is_grad_enabled():
                raise ConfigError("settle_tol skips settled prompts at inference; run the "
                                  "model under torch.no_grad()")
            steps = settled_loop(self._step_of(p.e, pos, mask, masked), z, s, b, settle_tol)
            return torch.stack([self.read(z, p.read_at) for t, z, _ in steps
                                if t > b - window])  # (window, B, n)
        preds = []
        first_grad = 0 if backprop == "all" else b - window
        for t in range(b):
            grad = t >= first_grad and torch.is_grad_enabled()
            with torch.set_grad_enabled(grad):
                if grad and self.checkpoint_window:
                    z_new = checkpoint(self.step, z, e, s, pos, mask, masked,
                                       use_reentrant=False)
                else:
                    z_new = self.step(z, e, s, pos, mask, masked)
                z, s = z_new, (z if s is not None else None)
            if t >= b - window:
                preds.append(self.read(z, p.read_at))
        return torch.stack(preds)  # (window, B, n)

    def start(self, p: Layout):
        """The loop's initial state ``z_0``, skip state ``s_0`` (None without skip
        connections) and position embedding (T, C), looked up once for all iterations."""
        z = torch.full_like(p.e, self.neutral)  # (B, T, C)
        s = torch.full_like(p.e, self.neutral) if self.cfg.skip_connection else None
        return z, s, self.wpe(p.slots)

    def iterate(self, xs, ys, n_loops=None, settle_tol=None):
        """Per loop ``t = 1..n_loops`` (default 1), with ``forward``'s set-up and step."""
        p = self.layout(xs, ys)
        z, s, pos = self.start(p)
        yield from settled_loop(self._step_of(p.e, pos), z, s, n_loops or 1, settle_tol)

    def _step_of(self, e, pos, mask=None, masked=None):
        """``step(idx, z, s)`` of :func:`settled_loop` for the prompts embedded as ``e``."""
        return lambda idx, z, s: self.step(z, e if idx is None else e[idx], s, pos, mask,
                                           masked)

    def unit_map(self, xs, ys):
        e = self.embed(xs, ys)
        pos = self.position(e.shape[1], e.device)
        if self.cfg.skip_connection:
            return lambda z, s: (self.step(z, e, s, pos), z)
        return lambda z, s: (self.step(z, e, None, pos), None)

    @torch.no_grad()
    def predict_until(self, xs, ys, n_loops: int, tol: float, rule: str | StopRule = "prediction"):
        """Early exit per prompt: predictions ``(B, n)`` (logits ``(B, n, C)``) at each
        prompt's exit and the exit
        loops ``(B,)``. A prompt exits at the first loop ``t >= 2`` whose ``rule`` change from
        loop ``t-1`` is below ``tol``, else at ``n_loops``; the batch stops once all exited."""
        rule = stop_rule(rule)
        out = exits = None
        prev_z = prev_pred = None
        for t, z, _ in self.iterate(xs, ys, n_loops):
            pred = self.read(z)  # (B, n)
            if out is None:
                out = pred.clone()
                exits = torch.full(pred.shape[:1], n_loops, dtype=torch.long, device=pred.device)
                done = torch.zeros_like(exits, dtype=torch.bool)
            else:
                stop = ~done & (rule.change(prev_z, z, prev_pred, pred) < tol)  # (B,)
                out[~done] = pred[~done]
                exits[stop] = t
                done |= stop
                if done.all():
                    break
            prev_z, prev_pred = z, pred
        return out, exits


MODELS = {"looped": LoopedTransformer, "transformer": Transformer, "tied": TiedTransformer}


def build_model(cfg: ModelConfig | dict) -> InContextModel:
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return MODELS[cfg.family](cfg)


def count_parameters(model: InContextModel) -> int:
    """Parameters comparable with the reference: blocks and final LayerNorm, excluding the
    position embedding, read-in and read-out."""
    excluded = {id(p) for m in (model.wpe, model.read_in, model.read_out)
                for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)
