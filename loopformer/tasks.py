"""Tasks: function classes for in-context learning (Garg et al. 2022) and token tasks.

Every task draws fresh prompts, fully vectorised over the batch, from an explicit
``torch.Generator`` and on that generator's device. A regression task's inputs are
``x ~ N(0, I_d)`` with the coordinates beyond the curriculum's active dims set to zero; a
token task (:class:`TokenTask`: p-hop induction, parity) draws token sequences. A task
declares its read-in (:attr:`Task.vocab`: 0 for vector prompts) and its read-out
(:attr:`Task.n_classes`: 0 for regression); its YAML sets ``model.vocab`` and
``model.n_classes`` to match, and the settings refuse a model whose read-in or read-out does
not fit.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace
from typing import NamedTuple, get_type_hints

import torch
import torch.nn.functional as F

from loopformer.curriculum import Curriculum, CurriculumState
from loopformer.errors import ConfigError, check_type
from loopformer.readout import IGNORE


class Batch(NamedTuple):
    xs: torch.Tensor  # (B, n, d) float; token tasks: (B, n) int64 token ids
    ys: torch.Tensor  # (B, n) float targets; classification: int64 class ids or IGNORE


TASKS: dict[str, type[Task]] = {}  # task.name -> class, filled as subclasses are defined


class Task:
    """A function class. Subclasses set ``name`` (the ``task.name`` that selects them; a named
    subclass registers itself) and implement ``_targets`` and ``normalizer``."""

    name: str = ""
    vocab: int = 0  # read-in: 0 vector prompts (x, y pairs), V: tokens of V symbols
    n_classes: int = 0  # read-out: 0 one number per token (regression), C: C classes
    has_hops: bool = False  # whether the task has a hop count (the curriculum's hops dial)
    # the curriculum key of the task's depth dial, which curriculum.loops_rule may follow:
    # hops (p_hop), points (a token task's length: parity); None: no depth dial
    dial: str | None = None
    dial_lengths: str = ""  # how the prompts' length is chosen for each scored dial value

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            TASKS[cls.name] = cls

    def __init__(self, n_dims: int):
        if n_dims < 1:
            raise ConfigError(f"model.n_dims={n_dims} must be >= 1")
        self.n_dims = n_dims

    def sample(
        self,
        batch_size: int,
        n_points: int,
        active_dims: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Batch:
        """Draw ``batch_size`` prompts of ``n_points`` points, one fresh function per prompt."""
        d_act = self.n_dims if active_dims is None else active_dims
        self.check_active_dims(d_act)
        device = generator.device if generator is not None else torch.device("cpu")
        xs = torch.randn(batch_size, n_points, self.n_dims, generator=generator, device=device,
                         dtype=dtype)
        xs[..., d_act:] = 0
        return Batch(xs, self._targets(xs, d_act, generator))

    def sample_at(self, batch_size: int, shape: CurriculumState,
                  generator: torch.Generator | None = None) -> Batch:
        """Prompts at a curriculum shape: what training, the test set and evaluation draw."""
        return self.sample(batch_size, shape.n_points, shape.n_dims, generator)

    def sample_test(self, batch_size: int, shape: CurriculumState,
                    generator: torch.Generator | None = None) -> Batch:
        """The fixed test set's prompts: fresh ones at the shape, as training draws them (a
        task with held-out data draws them from it)."""
        return self.sample_at(batch_size, shape, generator)

    def test_prompts(self) -> str:
        """What :meth:`sample_test` draws, in words (the analysis states it)."""
        return "fresh prompts at the final shape"

    def eval_sets(self, n_prompts: int, shape: CurriculumState,
                  generator: torch.Generator | None = None) -> dict[str, Batch]:
        """The evaluation's prompts, by name: one set of ``n_prompts`` fresh prompts at the
        shape (a task with held-out datasets: one set per dataset)."""
        return {self.name: self.sample_at(n_prompts, shape, generator)}

    def check_curriculum(self, curriculum: Curriculum) -> None:
        """Refuse a curriculum this task cannot follow, naming the key."""
        self.check_active_dims(curriculum.dims.start)
        if curriculum.hops is not None and not self.has_hops:
            with_hops = sorted(n for n, c in TASKS.items() if c.has_hops)
            raise ConfigError(f"curriculum.hops schedules a hop count, which task.name="
                              f"{self.name} has not; remove it (curriculum.hops=null) or use "
                              f"task.name in {with_hops}")
        rule = curriculum.loops_rule
        if not rule.fixed and rule.of != self.dial:
            has = (f"its depth dial is curriculum.{self.dial}; use curriculum.loops_rule.of="
                   f"{self.dial}" if self.dial else "it has no depth dial; use "
                   "curriculum.loops_rule.kind=fixed")
            raise ConfigError(f"curriculum.loops_rule.of={rule.of} is not a depth dial of "
                              f"task.name={self.name}: {has}")

    def dial_values(self, curriculum: Curriculum, factor: int) -> list[int]:
        """The dial values scored beyond training (``eval.dial.factor``): up to ``factor``
        times the trained one."""
        raise ConfigError(f"eval.dial.factor={factor} scores a depth dial, which task.name="
                          f"{self.name} has not; use eval.dial.factor=null")

    def dial_shape(self, value: int, final: CurriculumState) -> CurriculumState:
        """The prompt shape that dial ``value`` is scored at (loops: the trained count)."""
        raise NotImplementedError

    def check_active_dims(self, active_dims: int) -> None:
        if not 1 <= active_dims <= self.n_dims:
            raise ConfigError(
                f"curriculum.dims={active_dims} is outside 1..model.n_dims={self.n_dims}"
            )

    def normalizer(self, active_dims: int | None = None) -> float:
        """E[y^2] of the noiseless target, so that the zero predictor scores about 1."""
        raise NotImplementedError

    def _targets(self, xs: torch.Tensor, active_dims: int, g: torch.Generator | None):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_dims={self.n_dims})"


def _randn(g: torch.Generator | None, like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, device=like.device, dtype=like.dtype)


class LinearRegression(Task):
    name = "linear_regression"

    def normalizer(self, active_dims=None):
        return float(self.n_dims if active_dims is None else active_dims)

    def _targets(self, xs, active_dims, g):
        w = _randn(g, xs, xs.shape[0], self.n_dims, 1)  # (B, d, 1)
        w[:, active_dims:] = 0
        return (xs @ w).squeeze(-1)  # (B, n)


class NoisyLinearRegression(LinearRegression):
    name = "noisy_linear_regression"

    def __init__(self, n_dims: int, noise_std: float = 0.1):
        super().__init__(n_dims)
        if noise_std < 0:
            raise ConfigError(f"task.noise_std={noise_std} must be >= 0")
        self.noise_std = float(noise_std)

    def _targets(self, xs, active_dims, g):
        ys = super()._targets(xs, active_dims, g)
        return ys + self.noise_std * _randn(g, xs, *ys.shape)


class SparseLinearRegression(Task):
    name = "sparse_linear_regression"

    def __init__(self, n_dims: int, sparsity: int = 3):
        super().__init__(n_dims)
        if not 1 <= sparsity <= n_dims:
            raise ConfigError(f"task.sparsity={sparsity} is outside 1..model.n_dims={n_dims}")
        self.sparsity = int(sparsity)

    def check_active_dims(self, active_dims):
        super().check_active_dims(active_dims)
        if self.sparsity > active_dims:
            raise ConfigError(
                f"task.sparsity={self.sparsity} exceeds the {active_dims} active dims; "
                f"use task.sparsity in 1..{active_dims} or raise curriculum.dims.start"
            )

    def normalizer(self, active_dims=None):
        return float(self.sparsity)

    def _targets(self, xs, active_dims, g):
        B = xs.shape[0]
        # k distinct coordinates among the active ones: the k smallest of uniform scores
        scores = torch.rand(B, active_dims, generator=g, device=xs.device)
        support = scores.argsort(dim=1)[:, : self.sparsity]  # (B, k)
        w = torch.zeros(B, self.n_dims, device=xs.device, dtype=xs.dtype)
        w.scatter_(1, support, _randn(g, xs, B, self.sparsity))
        return (xs @ w.unsqueeze(-1)).squeeze(-1)  # (B, n)


class Relu2nnRegression(Task):
    name = "relu_2nn_regression"

    def __init__(self, n_dims: int, hidden_layer_size: int = 100):
        super().__init__(n_dims)
        if hidden_layer_size < 1:
            raise ConfigError(f"task.hidden_layer_size={hidden_layer_size} must be >= 1")
        self.hidden = int(hidden_layer_size)

    def normalizer(self, active_dims=None):
        return float(self.n_dims if active_dims is None else active_dims)

    def _targets(self, xs, active_dims, g):
        B = xs.shape[0]
        w1 = _randn(g, xs, B, self.n_dims, self.hidden)  # (B, d, h)
        w2 = _randn(g, xs, B, self.hidden, 1)  # (B, h, 1)
        # inactive coordinates of x are zero, so rows of w1 beyond them never contribute
        h = torch.relu(xs @ w1)  # (B, n, h)
        return math.sqrt(2.0 / self.hidden) * (h @ w2).squeeze(-1)  # (B, n)


class DecisionTree(Task):
    """Depth-``depth`` binary tree: node ``i`` splits on ``x[coord_i] > 0`` (right if true),
    children ``2i+1`` / ``2i+2``; leaves hold N(0,1) values. Evaluated level by level
    with gathers, one level per step (``depth`` steps, no loop over prompts or points)."""

    name = "decision_tree"

    def __init__(self, n_dims: int, depth: int = 4):
        super().__init__(n_dims)
        if depth < 1:
            raise ConfigError(f"task.depth={depth} must be >= 1")
        self.depth = int(depth)

    def normalizer(self, active_dims=None):
        return 1.0

    def draw_trees(self, batch_size, active_dims, g, like):
        n_nodes = 2 ** (self.depth + 1) - 1
        coords = torch.randint(0, active_dims, (batch_size, n_nodes), generator=g,
                               device=like.device)  # (B, nodes)
        values = _randn(g, like, batch_size, n_nodes)  # (B, nodes); only leaves are read
        return coords, values

    def evaluate(self, xs, coords, values):
        B, n, _ = xs.shape
        node = torch.zeros(B, n, dtype=torch.long, device=xs.device)  # (B, n)
        for _ in range(self.depth):
            c = coords.gather(1, node)  # (B, n) split coordinate of the current node
            go_right = xs.gather(2, c.unsqueeze(-1)).squeeze(-1) > 0  # (B, n)
            node = 2 * node + 1 + go_right.long()
        return values.gather(1, node)  # (B, n)

    def _targets(self, xs, active_dims, g):
        coords, values = self.draw_trees(xs.shape[0], active_dims, g, xs)
        return self.evaluate(xs, coords, values)


# ----------------------------------------------------------------------------- token tasks


class TokenTask(Task):
    """A task whose prompt is a token sequence ``xs`` (B, T) int64 and whose targets ``ys``
    (B, T) are int64 class ids, :data:`~loopformer.readout.IGNORE` where a position asks
    nothing. ``T`` is ``task.length`` at the end of the curriculum (``curriculum.points``
    schedules it); ``model.n_dims`` and ``curriculum.dims`` do not apply."""

    def __init__(self, n_dims: int, length: int):
        super().__init__(n_dims)
        if length < 2:
            raise ConfigError(f"task.length={length} must be >= 2 tokens")
        self.length = int(length)

    def check_active_dims(self, active_dims: int) -> None:
        pass  # no dims: the prompt is tokens

    def normalizer(self, active_dims=None):
        raise ConfigError(f"task.name={self.name} is scored by accuracy; a normalised squared "
                          f"error applies to regression tasks only")

    def check_curriculum(self, curriculum: Curriculum) -> None:
        super().check_curriculum(curriculum)
        if curriculum.points.end != self.length:
            raise ConfigError(f"curriculum.points.end={curriculum.points.end} differs from "
                              f"task.length={self.length} (the length the test set and the "
                              f"evaluation draw); set both to the same value")
        if curriculum.points.start < 2:
            raise ConfigError(f"curriculum.points.start={curriculum.points.start} must be >= 2 "
                              f"tokens")

    def _tokens(self, batch_size: int, length: int, g: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


class PHop(TokenTask):
    """In-context p-hop induction (Sanford, Hsu & Telgarsky 2024, "Transformers, parallel
    computation, and logarithmic depth", Definition 4.1; Saunshi et al. 2025, "Reasoning with
    latent thoughts", Definition A.1).

    For a sequence ``X_1..X_N`` over an alphabet of ``task.vocab`` symbols,
    ``find_1(i) = max({0} u {j <= i : X_{j-1} = X_i})`` (the position just after the most
    recent earlier occurrence of ``X_i``), ``find_p = find_1 o find_{p-1}``, and
    ``hop_p(X)_i = X_{find_p(i)}`` if ``find_p(i) != 0``, else undefined. ``find_1`` is exact
    here for any sequence (:func:`hop_targets`; :func:`p_hop_reference` is the literal solver).

    Layout. Sanford et al. pose the task at every position ``i``, answered from
    ``X_1..X_i``; Saunshi et al. ask it at the last position only, always defined. Here the
    target ``ys[:, i]`` is ``hop_p(X)_i`` at every position where it is defined and IGNORE
    where it is not, so that the classes are exactly the alphabet (chance ``1/vocab``, as
    Saunshi et al. state it) while every defined position supervises (a dense signal, what lets
    a small model learn in minutes on a CPU). The last position is always defined: its
    accuracy (``test/accuracy_pos/<T-1>``) is the number Saunshi et al. report.

    Generator. As in Sanford et al.'s code, a sequence is uniform among those with no symbol
    twice in a row (each token uniform over the ``vocab - 1`` symbols other than its
    predecessor), so ``find_1(i) < i`` and every hop moves back. A prompt whose last answer is
    undefined is drawn again (the batch's undefined rows, together, until none is left): the
    prompts are that distribution conditioned on a defined answer at the last position. A hop
    moves back ``vocab - 1`` positions on average, so a length holds ``hops`` when
    ``hops * (vocab - 1) <= length - 2`` (then at least about half the draws are kept); a
    hop count beyond it is refused, as is ``vocab < 2`` (no sequence avoids repeats)."""

    name = "p_hop"
    has_hops = True
    dial = "hops"
    dial_lengths = ("max(task.length, hops * (vocab - 1) + 2) tokens: the trained length where "
                    "it holds the hops, else the shortest prompt that does")
    MAX_DRAWS = 1000  # redraws of the undefined rows before giving up (never reached in tests)

    def __init__(self, n_dims: int, hops: int = 4, vocab: int = 4, length: int = 64):
        super().__init__(n_dims, length)
        if vocab < 2:
            raise ConfigError(f"task.vocab={vocab} must be >= 2: a p-hop sequence never repeats "
                              f"a symbol twice in a row")
        if hops < 1:
            raise ConfigError(f"task.hops={hops} must be >= 1")
        self.hops, self.vocab, self.n_classes = int(hops), int(vocab), int(vocab)
        self.check_holds(self.hops, self.length, "task.hops", "task.length")

    def check_holds(self, hops: int, length: int, hops_key: str, length_key: str) -> None:
        """Refuse a hop count the length cannot hold (see the class docstring)."""
        if hops * (self.vocab - 1) > length - 2:
            most = (length - 2) // (self.vocab - 1)
            raise ConfigError(f"{hops_key}={hops} hops cannot be held by {length_key}={length} "
                              f"tokens over task.vocab={self.vocab} symbols (a hop moves back "
                              f"{self.vocab - 1} positions on average); use {hops_key} <= "
                              f"{most} or {length_key} >= {hops * (self.vocab - 1) + 2}")

    def check_curriculum(self, curriculum: Curriculum) -> None:
        super().check_curriculum(curriculum)
        hops = curriculum.hops
        if hops is not None and hops.end != self.hops:
            raise ConfigError(f"curriculum.hops.end={hops.end} differs from task.hops="
                              f"{self.hops} (the hop count the test set and the evaluation "
                              f"draw); set both to the same value")
        for step in schedule_steps(curriculum.points, *(() if hops is None else (hops,))):
            state = curriculum.at(step)
            self.check_holds(state.n_hops or self.hops, state.n_points,
                             f"curriculum.hops (at step {step})" if hops else "task.hops",
                             f"curriculum.points (at step {step})")

    def sample_at(self, batch_size, shape, generator=None):
        return self.sample(batch_size, shape.n_points, generator=generator, hops=shape.n_hops)

    def dial_values(self, curriculum, factor):
        """Every hop count 1..factor * task.hops."""
        return list(range(1, factor * self.hops + 1))

    def dial_shape(self, value, final):
        """``value`` hops in the trained length where it holds them, else in the shortest
        prompt that does (``hops * (vocab - 1) + 2`` tokens, :meth:`check_holds`): positions
        beyond the trained length are positions the model never saw."""
        length = max(final.n_points, value * (self.vocab - 1) + 2)
        return replace(final, n_points=length, n_hops=value)

    def sample(self, batch_size: int, n_points: int, active_dims: int | None = None,
               generator: torch.Generator | None = None, dtype=None,
               hops: int | None = None) -> Batch:
        """``batch_size`` prompts of ``n_points`` tokens at ``hops`` hops (default task.hops);
        ``active_dims`` and ``dtype`` do not apply to tokens."""
        hops = self.hops if hops is None else hops
        self.check_holds(hops, n_points, "hops", "length")
        xs = self._tokens(batch_size, n_points, generator)  # (B, T)
        ys = hop_targets(xs, hops, self.vocab)  # (B, T)
        for _ in range(self.MAX_DRAWS):
            redo = (ys[:, -1] == IGNORE).nonzero().squeeze(1)  # rows without a last answer
            if len(redo) == 0:
                return Batch(xs, ys)
            xs[redo] = self._tokens(len(redo), n_points, generator)
            ys[redo] = hop_targets(xs[redo], hops, self.vocab)
        raise RuntimeError(f"{self.MAX_DRAWS} draws left a p-hop prompt without an answer")

    def _tokens(self, batch_size, length, g):
        device = g.device if g is not None else torch.device("cpu")
        first = torch.randint(0, self.vocab, (batch_size, 1), generator=g, device=device)
        # each later token: its predecessor moved by 1..vocab-1 (mod vocab), never itself
        steps = 1 + torch.randint(0, self.vocab - 1, (batch_size, length - 1), generator=g,
                                  device=device)
        return torch.cat((first, first + steps.cumsum(1)), dim=1) % self.vocab  # (B, T)

    def __repr__(self) -> str:
        return f"PHop(hops={self.hops}, vocab={self.vocab}, length={self.length})"


def find_one(xs: torch.Tensor, n_symbols: int | None = None) -> torch.Tensor:
    """``find_1`` of Sanford et al., 0-based: for each position ``i`` of ``xs`` (B, T), one past
    the most recent position ``q < i`` with ``xs[q] == xs[i]``; -1 where there is none.
    ``n_symbols``: the alphabet's size (None: read from ``xs``, a host sync)."""
    B, T = xs.shape
    pos = torch.arange(1, T + 1, device=xs.device)  # 1-based, so 0 means "none"
    onehot = F.one_hot(xs, n_symbols or int(xs.max()) + 1)  # (B, T, V)
    last = (onehot * pos[None, :, None]).cummax(dim=1).values  # (B, T, V): last 1-based pos <= t
    before = F.pad(last, (0, 0, 1, 0))[:, :-1]  # (B, T, V): last position < t
    q = before.gather(2, xs.unsqueeze(-1)).squeeze(-1)  # (B, T) 1-based, 0 if none
    return torch.where(q > 0, q, -1)  # q - 1 + 1: one past the 0-based occurrence


def hop_targets(xs: torch.Tensor, hops: int, n_symbols: int | None = None) -> torch.Tensor:
    """``hop_p(X)_i`` for every position, (B, T) int64, IGNORE where undefined: ``hops``
    gathers of :func:`find_one`, -1 (undefined) absorbing."""
    step = find_one(xs, n_symbols)  # (B, T)
    at = torch.arange(xs.shape[1], device=xs.device).expand_as(xs)  # (B, T)
    for _ in range(hops):
        at = torch.where(at >= 0, step.gather(1, at.clamp_min(0)), -1)
    return torch.where(at >= 0, xs.gather(1, at.clamp_min(0)), IGNORE)


def p_hop_reference(seq: list[int], hops: int) -> list[int | None]:
    """Sanford et al.'s Definition 4.1 written out literally (1-based positions), for every
    position: the p-hop answer, or None where ``find_p`` is 0. The reference the vectorised
    :func:`hop_targets` is tested against."""
    x = [None, *seq]  # x[1..N]

    def find1(i: int) -> int:
        return max([0] + [j for j in range(2, i + 1) if x[j - 1] == x[i]])

    out = []
    for i in range(1, len(seq) + 1):
        at = i
        for _ in range(hops):
            at = find1(at) if at != 0 else 0
        out.append(x[at] if at != 0 else None)
    return out


class Parity(TokenTask):
    """Parity of a bit string: ``xs`` (B, T) uniform bits (vocab 2), the answer at the last
    position is ``sum(xs) mod 2`` and no other position asks anything (IGNORE). The length
    (``task.length``, scheduled by ``curriculum.points``) is the dial: one answer per prompt
    depends on every bit of it, as in the parity tasks of the looped length-generalisation
    literature. Two classes, so chance is 1/2."""

    name = "parity"
    vocab = 2
    n_classes = 2
    dial = "points"
    dial_lengths = "the length is the dial"

    def __init__(self, n_dims: int, length: int = 16):
        super().__init__(n_dims, length)

    def sample(self, batch_size: int, n_points: int, active_dims: int | None = None,
               generator: torch.Generator | None = None, dtype=None) -> Batch:
        xs = self._tokens(batch_size, n_points, generator)  # (B, T)
        ys = torch.full_like(xs, IGNORE)
        ys[:, -1] = xs.sum(1) % 2
        return Batch(xs, ys)

    def _tokens(self, batch_size, length, g):
        device = g.device if g is not None else torch.device("cpu")
        return torch.randint(0, 2, (batch_size, length), generator=g, device=device)

    def dial_values(self, curriculum, factor):
        """Lengths from the curriculum's first, on its grid (``curriculum.points.inc``), to
        ``factor * task.length``."""
        pts = curriculum.points
        return list(range(pts.start, factor * self.length + 1, max(1, pts.inc)))

    def dial_shape(self, value, final):
        return replace(final, n_points=value)

    def __repr__(self) -> str:
        return f"Parity(length={self.length})"


def parity_reference(bits: list[int]) -> int:
    """The parity of a bit string, counted out."""
    return sum(1 for b in bits if b == 1) % 2


def schedule_steps(*schedules) -> list[int]:
    """The steps at which any of ``schedules`` changes value (and step 0): every distinct
    combination of their values occurs at one of them."""
    steps = {0}
    for s in schedules:
        if s.inc and s.end > s.start:
            n_changes = -(-(s.end - s.start) // s.inc)
            steps |= {k * s.interval for k in range(1, n_changes + 1)}
    return sorted(steps)


def build_task(name: str, n_dims: int, **params) -> Task:
    """Build a task by name; ``params`` are the task's own (sparsity, noise_std, depth, ...)."""
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r} is unknown; choose one of {sorted(TASKS)}")
    cls = TASKS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in
               ("self", "n_dims")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"task.name={name} has no setting "
                          f"{', '.join(f'task.{k}' for k in unknown)}; allowed: "
                          f"{', '.join(f'task.{k}' for k in allowed) or 'none'}")
    types = get_type_hints(cls.__init__)
    return cls(n_dims, **{k: check_type(f"task.{k}", v, types.get(k)) for k, v in params.items()})
