"""Function classes for in-context learning (Garg et al. 2022).

Every task draws a fresh function per prompt, fully vectorised over the batch, from an
explicit ``torch.Generator`` and on that generator's device. Inputs are ``x ~ N(0, I_d)``
with the coordinates beyond the curriculum's active dims set to zero.
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple, get_type_hints

import torch

from loopformer.errors import ConfigError, check_type


class Batch(NamedTuple):
    xs: torch.Tensor  # (B, n, d)
    ys: torch.Tensor  # (B, n)


TASKS: dict[str, type[Task]] = {}  # task.name -> class, filled as subclasses are defined


class Task:
    """A function class. Subclasses set ``name`` (the ``task.name`` that selects them; a named
    subclass registers itself) and implement ``_targets`` and ``normalizer``."""

    name: str = ""

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
