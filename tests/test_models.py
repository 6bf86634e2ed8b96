"""Models (DESIGN.md section 3): parameter counts, causality, shapes, the loop window, keep
tokens, skip connections, per-layer injection, config validation and inference memory.

Reference computations are written out by hand from the spec (prompt encoding, pre-LN GPT-2
block, the loop); only module weights are taken from the model. Tiny models, float64.
"""

import math
import re

import pytest
import torch

from loopformer import ConfigError, ModelConfig, build_model, count_parameters

TINY = dict(n_embd=32, n_head=4, n_dims=5, n_positions=12)


def make(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig(**{**TINY, **kw})).to(dtype).eval()


def prompt(B=3, n=6, d=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, n, d, generator=g, dtype=dtype)
    ys = torch.randn(B, n, generator=g, dtype=dtype)
    return xs, ys


def need_mixer(mixer):
    if mixer == "ssm":
        pytest.importorskip("loopformer.ssm")


def grads_of(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]


def count_saved_tensors(fn):
    """Number of tensors autograd saves for backward while ``fn`` runs."""
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return len(saved), out


# ----------------------------------------------------------------------------- by hand


def ln_by_hand(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def linear_by_hand(x, lin):
    return x @ lin.weight.T + lin.bias


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def attention_by_hand(attn, x, n_head):
    B, T, C = x.shape
    q, k, v = linear_by_hand(x, attn.c_attn).split(C, dim=-1)
    q, k, v = (t.reshape(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-1, -2) / math.sqrt(C // n_head)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    att = att.masked_fill(~causal, float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    return linear_by_hand(y, attn.c_proj)


def block_by_hand(block, x, cfg):
    """Pre-LN GPT-2 block from its modules: x + mix(ln_1(x)), then + mlp(ln_2(x))."""
    h = ln_by_hand(x, block.ln_1)
    if cfg.mixer == "attention":
        x = x + attention_by_hand(block.attn, h, cfg.n_head)
    else:
        x = x + block.attn(h)
    h = ln_by_hand(x, block.ln_2)
    return x + linear_by_hand(gelu_tanh(linear_by_hand(h, block.mlp.c_fc)), block.mlp.c_proj)


def embed_by_hand(model, xs, ys):
    """Tokens x1, (y1,0,..,0), x2, ... read in: (B, 2n, C)."""
    B, n, d = xs.shape
    tokens = torch.zeros(B, 2 * n, d, dtype=xs.dtype)
    for i in range(n):
        tokens[:, 2 * i] = xs[:, i]
        tokens[:, 2 * i + 1, 0] = ys[:, i]
    return linear_by_hand(tokens, model.read_in)


def read_by_hand(model, h):
    return linear_by_hand(h[:, 0::2], model.read_out).squeeze(-1)  # predictions at x tokens


def masked_by_spec(keep, L):
    """Number of leading state tokens replaced by the neutral element (DESIGN.md section 3)."""
    if keep == 0:
        return 0
    if keep >= 1:
        return max(0, L - int(keep))
    if keep < 0:
        return min(L, int(-keep))
    return L - round(keep * L)


def looped_by_hand(model, xs, ys, n_loops):
    """z_{t+1} = Backbone(inject(keep(z_t), e, z_{t-1})), z_{-1} = z_0 = neutral, with the
    injection before the first layer only or before every layer."""
    cfg = model.cfg
    add = cfg.injection == "add"
    neutral = 0.0 if add else 1.0

    def inject(h, e, s):
        h = h + e if add else h * e
        if cfg.skip_connection:
            h = h + s if add else h * s
        return h

    e = embed_by_hand(model, xs, ys)
    L = e.shape[1]
    pos = model.wpe.weight[:L]
    z = torch.full_like(e, neutral)
    s = torch.full_like(e, neutral)
    n_masked = masked_by_spec(cfg.keep_tokens, L)
    preds = []
    for _ in range(n_loops):
        kept = z.clone()
        kept[:, :n_masked] = neutral
        h = inject(kept, e, s) + pos
        for i, block in enumerate(model.blocks):
            if i > 0 and cfg.inject_every_layer:
                h = inject(h, e, s)
            h = block_by_hand(block, h, cfg)
        z, s = ln_by_hand(h, model.ln_f), z
        preds.append(read_by_hand(model, z))
    return torch.stack(preds)


def stack_by_hand(model, xs, ys, blocks):
    e = embed_by_hand(model, xs, ys)
    h = e + model.wpe.weight[: e.shape[1]]
    for block in blocks:
        h = block_by_hand(block, h, model.cfg)
    return read_by_hand(model, ln_by_hand(h, model.ln_f)).unsqueeze(0)


# ----------------------------------------------------------------------------- parameters


def test_parameter_count_looped_matches_reference():
    model = build_model(ModelConfig(family="looped", n_embd=256, n_layer=1, n_head=8,
                                    n_dims=20, n_positions=101))
    assert count_parameters(model) == 789_760 + 512 == 790_272


def test_parameter_count_transformer_is_9_48m():
    model = build_model(ModelConfig(family="transformer", n_embd=256, n_layer=12, n_head=8,
                                    n_dims=20, n_positions=101))
    n = count_parameters(model)
    assert n == 12 * 789_760 + 512
    assert f"{n / 1e6:.3g}" == "9.48"


def test_parameter_count_tied_is_one_block():
    model = build_model(ModelConfig(family="tied", n_embd=256, n_layer=12, n_head=8,
                                    n_dims=20, n_positions=101))
    assert count_parameters(model) == 790_272


# ----------------------------------------------------------------------------- causality

CAUSAL_CASES = [
    dict(family="looped"),
    dict(family="transformer", n_layer=2),
    dict(family="tied", n_layer=2),
    dict(family="looped", skip_connection=True),
    dict(family="looped", inject_every_layer=True, n_layer=2),
    dict(family="looped", keep_tokens=3),
    dict(family="looped", keep_tokens=-2),
    dict(family="looped", keep_tokens=0.5),
    dict(family="looped", injection="mul"),
    dict(family="looped", injection="mul", skip_connection=True, inject_every_layer=True,
         n_layer=2, keep_tokens=5),
]


def _case_id(kw):
    return "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("mixer", ["attention", "ssm"])
@pytest.mark.parametrize("kw", CAUSAL_CASES, ids=_case_id)
def test_causal(kw, mixer):
    """The prediction at index k depends on x_0..x_k and y_0..y_{k-1} only. All perturbed
    prompts go through the model as one batch (prompts do not interact)."""
    need_mixer(mixer)
    model = make(mixer=mixer, **kw)
    B, n = 2, 6
    xs, ys = prompt(B, n)
    g = torch.Generator().manual_seed(2)
    future_x, future_y, query_x = [], [], []
    for k in range(n):
        xs2, ys2 = xs.clone(), ys.clone()
        xs2[:, k + 1:] = torch.randn(xs2[:, k + 1:].shape, generator=g, dtype=xs.dtype)
        ys2[:, k:] = torch.randn(ys2[:, k:].shape, generator=g, dtype=ys.dtype)
        future_x.append(xs2)
        future_y.append(ys2)
        xs3 = xs.clone()
        xs3[:, k] += 1.0  # the query itself
        query_x.append(xs3)
    all_x = torch.cat([xs, *future_x, *query_x])
    all_y = torch.cat([ys, *future_y, *[ys] * n])
    with torch.no_grad():
        out = model(all_x, all_y, n_loops=3, window=3).split(B, dim=1)
    base, future, query = out[0], out[1: n + 1], out[n + 1:]
    for k in range(n):
        torch.testing.assert_close(future[k][..., : k + 1], base[..., : k + 1],
                                   rtol=0, atol=1e-10)
        if k + 1 < n:  # the perturbation is seen further on (the test is not vacuous)
            assert not torch.allclose(future[k][..., k + 1:], base[..., k + 1:])
        torch.testing.assert_close(query[k][..., :k], base[..., :k], rtol=0, atol=1e-10)
        assert not torch.allclose(query[k][..., k], base[..., k])


@pytest.mark.parametrize("kw", [c for c in CAUSAL_CASES if c.get("keep_tokens", 0) <= 0],
                         ids=_case_id)
def test_prediction_independent_of_later_points(kw):
    """Without length-dependent keep modes, truncating the prompt after index k does not
    change the prediction at k."""
    model = make(**kw)
    xs, ys = prompt(2, 4)
    with torch.no_grad():
        full = model(xs, ys, n_loops=3, window=3)
        for k in range(4):
            part = model(xs[:, : k + 1], ys[:, : k + 1], n_loops=3, window=3)
            torch.testing.assert_close(part, full[..., : k + 1], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("b,T", [(1, 1), (4, 1), (4, 2), (3, 3), (2, 5)])
def test_looped_output_shape(b, T):
    model = make()
    xs, ys = prompt(3, 6)
    assert model(xs, ys, n_loops=b, window=T).shape == (min(T, b), 3, 6)


def test_looped_window_defaults_to_all_loops():
    model = make()
    xs, ys = prompt(3, 6)
    assert model(xs, ys, n_loops=4).shape == (4, 3, 6)


@pytest.mark.parametrize("family", ["transformer", "tied"])
def test_non_looped_ignore_loops(family):
    model = make(family=family, n_layer=2)
    xs, ys = prompt(3, 6)
    out = model(xs, ys)
    assert out.shape == (1, 3, 6)
    torch.testing.assert_close(model(xs, ys, n_loops=7, window=3), out, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["looped", "transformer", "tied"])
def test_predict_is_last_row_of_forward(family):
    model = make(family=family, n_layer=2)
    xs, ys = prompt(3, 6)
    pred = model.predict(xs, ys, n_loops=5)
    assert pred.shape == (3, 6)
    assert not pred.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(pred, model(xs, ys, n_loops=5, window=5)[-1],
                                   rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- by-hand passes


@pytest.mark.parametrize("injection", ["add", "mul"])
def test_one_loop_is_one_backbone_pass_by_hand(injection):
    model = make(n_layer=2, injection=injection)
    xs, ys = prompt(3, 6)
    with torch.no_grad():
        out = model(xs, ys, n_loops=1, window=1)
        ref = stack_by_hand(model, xs, ys, model.blocks)  # z0 neutral: inject(z0, e) = e
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_transformer_is_stack_by_hand():
    model = make(family="transformer", n_layer=3)
    xs, ys = prompt(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(xs, ys), stack_by_hand(model, xs, ys, model.blocks),
                                   rtol=0, atol=1e-10)


def tied_by_hand(model, xs, ys):
    """Yang et al.'s weight-tied model: h_0 = e; n_layer times h = ln_f(block(h + p)); the
    prompt is embedded once and never injected again."""
    h = embed_by_hand(model, xs, ys)
    pos = model.wpe.weight[: h.shape[1]]
    for _ in range(model.cfg.n_layer):
        h = ln_by_hand(block_by_hand(model.blocks[0], h + pos, model.cfg), model.ln_f)
    return read_by_hand(model, h).unsqueeze(0)


def test_tied_reapplies_the_whole_backbone_by_hand():
    model = make(family="tied", n_layer=3)
    assert len(model.blocks) == 1
    xs, ys = prompt(3, 6)
    with torch.no_grad():
        out = model(xs, ys)
        torch.testing.assert_close(out, tied_by_hand(model, xs, ys), rtol=0, atol=1e-10)
        # not the shared-weight stack (position embedding and final LayerNorm once)
        stack = stack_by_hand(model, xs, ys, [model.blocks[0]] * 3)
        assert (out - stack).abs().max() > 1e-3


@pytest.mark.parametrize("n_layer", [1, 4])
def test_tied_is_the_looped_backbone_without_reinjection(n_layer):
    """With the same weights, the weight-tied model's first application is one loop of the
    looped model (z_0 = 0, additive injection), and each later application is the looped step
    with the injected embedding replaced by zeros."""
    tied = make(family="tied", n_layer=n_layer)
    looped = make(family="looped", n_layer=1)
    looped.load_state_dict(tied.state_dict())
    xs, ys = prompt(3, 6)
    with torch.no_grad():
        e = looped.embed(xs, ys)
        z = looped.step(torch.zeros_like(e), e, None)  # loop 1: z_1 = Backbone(0 + e)
        torch.testing.assert_close(looped.read(z), looped(xs, ys, n_loops=1)[-1],
                                   rtol=0, atol=1e-12)
        for _ in range(n_layer - 1):
            z = looped.step(z, torch.zeros_like(e), None)  # no re-injection
        torch.testing.assert_close(tied(xs, ys)[-1], looped.read(z), rtol=0, atol=1e-12)
        if n_layer > 1:  # re-injecting the prompt is a different model
            assert (tied(xs, ys)[-1] - looped(xs, ys, n_loops=n_layer)[-1]).abs().max() > 1e-3


LOOP_CASES = [
    dict(),
    dict(injection="mul"),
    dict(skip_connection=True),
    dict(skip_connection=True, injection="mul"),
    dict(inject_every_layer=True, n_layer=2),
    dict(inject_every_layer=True, n_layer=2, injection="mul"),
    dict(inject_every_layer=True, n_layer=2, skip_connection=True),
    dict(inject_every_layer=True, n_layer=2, skip_connection=True, injection="mul"),
    dict(n_layer=2),
    dict(keep_tokens=3),
    dict(keep_tokens=-2, skip_connection=True),
    dict(keep_tokens=0.5, injection="mul"),
]


@pytest.mark.parametrize("kw", LOOP_CASES, ids=_case_id)
def test_looped_matches_loop_by_hand(kw):
    model = make(**kw)
    xs, ys = prompt(3, 6)
    with torch.no_grad():
        out = model(xs, ys, n_loops=4, window=4)
        torch.testing.assert_close(out, looped_by_hand(model, xs, ys, 4), rtol=0, atol=1e-10)


@pytest.mark.parametrize("injection", ["add", "mul"])
def test_skip_connection_by_hand(injection):
    """z_{t+1} = backbone(inject(z_t, e, z_{t-1})), z_{-1} = z_0 = neutral; three iterations
    (the first two cannot differ from the plain loop since z_{-1} = z_0 = neutral)."""
    model = make(skip_connection=True, injection=injection)
    plain = make(injection=injection)
    plain.load_state_dict(model.state_dict())
    xs, ys = prompt(3, 6)
    neutral = 0.0 if injection == "add" else 1.0
    inj = (lambda a, b: a + b) if injection == "add" else (lambda a, b: a * b)
    with torch.no_grad():
        e = model.embed(xs, ys)
        zs = [torch.full_like(e, neutral)] * 2  # z_{-1}, z_0
        for _ in range(3):
            zs.append(model.backbone(inj(inj(zs[-1], e), zs[-2])))
        ref = torch.stack([model.read(z) for z in zs[2:]])
        out = model(xs, ys, n_loops=3, window=3)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
        no_skip = plain(xs, ys, n_loops=3, window=3)
        torch.testing.assert_close(no_skip[:2], out[:2], rtol=0, atol=1e-10)
        assert not torch.allclose(no_skip[2], out[2])


@pytest.mark.parametrize("injection", ["add", "mul"])
def test_per_layer_injection_by_hand(injection):
    """add: h = z+e -> +pos -> layer1 -> +e -> layer2 -> ln_f;  mul: h = z*e -> +pos -> layer1
    -> *e -> layer2 -> ln_f. Two iterations."""
    model = make(n_layer=2, inject_every_layer=True, injection=injection)
    once = make(n_layer=2, injection=injection)
    once.load_state_dict(model.state_dict())
    cfg = model.cfg
    xs, ys = prompt(3, 6)
    inj = (lambda a, b: a + b) if injection == "add" else (lambda a, b: a * b)
    with torch.no_grad():
        e = embed_by_hand(model, xs, ys)
        pos = model.wpe.weight[: e.shape[1]]
        z = torch.full_like(e, 0.0 if injection == "add" else 1.0)
        ref = []
        for _ in range(2):
            h = inj(z, e) + pos
            h = block_by_hand(model.blocks[0], h, cfg)
            h = inj(h, e)
            h = block_by_hand(model.blocks[1], h, cfg)
            z = ln_by_hand(h, model.ln_f)
            ref.append(read_by_hand(model, z))
        out = model(xs, ys, n_loops=2, window=2)
        torch.testing.assert_close(out, torch.stack(ref), rtol=0, atol=1e-10)
        assert not torch.allclose(out, once(xs, ys, n_loops=2, window=2))


# ----------------------------------------------------------------------------- loop window


def _manual_window(model, xs, ys, b, T):
    """The loop run by hand from embed/backbone/read; the state is detached before the
    window, so only the last T iterations carry gradient."""
    add = model.cfg.injection == "add"
    e = model.embed(xs, ys)
    z = torch.full_like(e, 0.0 if add else 1.0)
    preds = []
    for t in range(b):
        if t == b - T:
            z = z.detach()
        z = model.backbone(z + e if add else z * e)
        if t >= b - T:
            preds.append(model.read(z))
    return torch.stack(preds)


@pytest.mark.parametrize("injection", ["add", "mul"])
@pytest.mark.parametrize("b,T", [(5, 2), (4, 1), (3, 3), (2, 6)])
def test_window_gradient_matches_manual_truncation(b, T, injection):
    model = make(injection=injection).train()
    xs, ys = prompt(3, 6)
    preds = model(xs, ys, n_loops=b, window=T)
    got = grads_of(model, ((preds - ys) ** 2).mean())
    ref_preds = _manual_window(model, xs, ys, b, min(T, b))
    torch.testing.assert_close(preds, ref_preds, rtol=0, atol=1e-12)
    want = grads_of(model, ((ref_preds - ys) ** 2).mean())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    if T < b:  # truncation really changes the gradient
        full = _manual_window(model, xs, ys, b, b)[-T:]
        untruncated = grads_of(model, ((full - ys) ** 2).mean())
        assert any(not torch.allclose(g, u) for g, u in zip(got, untruncated, strict=True))


def test_window_iterations_before_window_store_nothing():
    model = make(dtype=torch.float32).train()
    xs, ys = prompt(2, 6, dtype=torch.float32)
    n_short, _ = count_saved_tensors(lambda: model(xs, ys, n_loops=2, window=2))
    n_long, out = count_saved_tensors(lambda: model(xs, ys, n_loops=40, window=2))
    assert n_short > 0
    assert n_long == n_short
    assert out.requires_grad


# ----------------------------------------------------------------------------- keep tokens

# n = 6 points -> L = 12 state tokens; keep_tokens -> number of leading tokens masked
KEEP_MASKED = {0: 0, 1: 11, 3: 9, 12: 0, 20: 0, -2: 2, -11: 11, 0.5: 6, 0.3: 8, 0.25: 9}


@pytest.mark.parametrize("injection", ["add", "mul"])
@pytest.mark.parametrize("keep", list(KEEP_MASKED), ids=str)
def test_keep_masks_exactly_the_specified_tokens(keep, injection):
    model = make(keep_tokens=keep, injection=injection)
    neutral = 0.0 if injection == "add" else 1.0
    n_masked = KEEP_MASKED[keep]
    z = torch.randn(3, 12, 32, dtype=torch.float64) + 5.0  # never equal to the neutral
    out = model.keep(z)
    assert out.shape == z.shape
    assert (out[:, :n_masked] == neutral).all()
    assert torch.equal(out[:, n_masked:], z[:, n_masked:])


@pytest.mark.parametrize("injection", ["add", "mul"])
@pytest.mark.parametrize("keep", list(KEEP_MASKED), ids=str)
def test_keep_state_fed_back(keep, injection, monkeypatch):
    """Record what the backbone receives: on the second iteration it is inject(keep(z1), e)
    with exactly the specified tokens neutral; and the whole forward equals a two-iteration
    loop written by hand."""
    model = make(keep_tokens=keep, injection=injection)
    xs, ys = prompt(3, 6)
    n_masked = KEEP_MASKED[keep]
    inputs, outputs = [], []
    backbone = model.backbone

    def spy(h, *a, **kw):
        inputs.append(h)
        outputs.append(backbone(h, *a, **kw))
        return outputs[-1]

    monkeypatch.setattr(model, "backbone", spy)
    with torch.no_grad():
        out = model(xs, ys, n_loops=2, window=2)
        e = model.embed(xs, ys)
    assert len(inputs) == 2
    z1, fed = outputs[0], inputs[1]
    if injection == "add":
        torch.testing.assert_close(fed[:, :n_masked], e[:, :n_masked], rtol=0, atol=0)
        torch.testing.assert_close(fed[:, n_masked:], (z1 + e)[:, n_masked:], rtol=0, atol=0)
    else:
        torch.testing.assert_close(fed[:, :n_masked], e[:, :n_masked], rtol=0, atol=0)
        torch.testing.assert_close(fed[:, n_masked:], (z1 * e)[:, n_masked:], rtol=0, atol=0)
    monkeypatch.undo()
    with torch.no_grad():
        ref = looped_by_hand(model, xs, ys, 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    if 0 < n_masked:
        with torch.no_grad():
            keep_all = make(injection=injection)
            keep_all.load_state_dict(model.state_dict())
            assert not torch.allclose(keep_all(xs, ys, n_loops=2)[1], out[1])


@pytest.mark.parametrize("keep", [-20, 0.1])
def test_keep_on_short_prompt_may_mask_everything(keep):
    """Valid for the longest prompt (24 tokens) but keeps nothing of a 2-point prompt: the
    whole state is neutral, so every iteration repeats the first."""
    model = make(keep_tokens=keep)
    xs, ys = prompt(3, 2)
    with torch.no_grad():
        out = model(xs, ys, n_loops=3, window=3)
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=0)
    torch.testing.assert_close(out[2], out[0], rtol=0, atol=0)


@pytest.mark.parametrize("keep", [2.5, 1.5, -2.5, -0.5, -24, -30, 0.01, 0.02])
def test_invalid_keep_tokens(keep):
    # n_positions=12 -> longest prompt has 24 tokens; 0.02 * 24 rounds to 0 kept tokens
    with pytest.raises(ConfigError, match="model.keep_tokens"):
        ModelConfig(**TINY, keep_tokens=keep)


@pytest.mark.parametrize("keep", [-23, 0.03, 24, 1000, 1, 0.99])
def test_valid_extreme_keep_tokens(keep):
    ModelConfig(**TINY, keep_tokens=keep)


# ----------------------------------------------------------------------------- validation


def test_n_embd_not_divisible_by_n_head():
    message = "model.n_head=8 does not divide model.n_embd=250; use model.n_head in [1, 2, 5, 10"
    with pytest.raises(ConfigError, match=re.escape(message)):
        ModelConfig(n_embd=250, n_head=8)


@pytest.mark.parametrize("key,allowed", [
    ("family", ["looped", "transformer", "tied"]),
    ("mixer", ["attention", "ssm"]),
    ("injection", ["add", "mul"]),
])
def test_unknown_choice_lists_allowed(key, allowed):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{key: "bogus"})
    msg = str(err.value)
    assert f"model.{key}" in msg and "bogus" in msg
    for value in allowed:
        assert value in msg


def test_build_model_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="n_embed"):
        build_model({"n_embed": 32})


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("family", ["looped", "transformer", "tied"])
def test_prompt_longer_than_n_positions(family):
    model = make(family=family)
    xs, ys = prompt(2, 13)
    with pytest.raises(ConfigError, match="n_positions"):
        model(xs, ys)
    assert model(*prompt(2, 12)).shape[-1] == 12  # the longest allowed prompt works


# ----------------------------------------------------------------------------- inference


@pytest.mark.parametrize("n_loops", [5, 500])
def test_predict_saves_no_activations(n_loops):
    model = make(dtype=torch.float32).train()
    xs, ys = prompt(2, 6, dtype=torch.float32)
    n_saved, pred = count_saved_tensors(lambda: model.predict(xs, ys, n_loops=n_loops))
    assert n_saved == 0
    assert pred.shape == (2, 6)
    assert torch.isfinite(pred).all()


def test_predict_tol_stops_early_near_fixed_point(monkeypatch):
    model = make()  # this freshly initialised additive model converges to a fixed point
    xs, ys = prompt(3, 6)
    full = model.predict(xs, ys, n_loops=150)  # converged to ~1e-12 well before 150 loops
    calls = []
    ln_f = model.ln_f.forward
    monkeypatch.setattr(model.ln_f, "forward", lambda h: calls.append(1) or ln_f(h))
    early = model.predict(xs, ys, n_loops=500, tol=1e-9)
    assert early.shape == (3, 6)
    assert len(calls) < 500  # stopped early
    torch.testing.assert_close(early, full, rtol=0, atol=1e-7)
    with torch.no_grad():
        out = model(xs, ys, n_loops=500, window=1, tol=1e-9)
    torch.testing.assert_close(out[-1], early, rtol=0, atol=0)


def test_predict_tol_zero_runs_all_loops():
    model = make()
    xs, ys = prompt(3, 6)
    torch.testing.assert_close(model.predict(xs, ys, n_loops=10, tol=0.0),
                               model.predict(xs, ys, n_loops=10), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["transformer", "tied"])
def test_fixed_depth_models_refuse_early_exit(family):
    model = make(family=family, n_layer=2)
    xs, ys = prompt(3, 6)
    with pytest.raises(ConfigError, match="tol=0.01"):
        model.predict(xs, ys, tol=0.01)
