"""What every in-context baseline shares: the predictor signature and its input check.

A predictor maps ``xs (B, n, d)`` and ``ys (B, n)`` to ``preds (B, n)`` where ``preds[:, k]``
is the prediction for ``ys[:, k]`` from the examples ``0..k-1`` only (0 when ``k == 0``).
Every predictor has a ``name`` that includes its hyperparameters (used as a curve label).
"""

from __future__ import annotations

import importlib.util
from typing import ClassVar

import torch


def _check_inputs(xs: torch.Tensor, ys: torch.Tensor) -> None:
    if xs.dim() != 3 or ys.dim() != 2 or xs.shape[:2] != ys.shape:
        raise ValueError(f"expected xs (B, n, d) and ys (B, n); got {tuple(xs.shape)} and "
                         f"{tuple(ys.shape)}")


class Baseline:
    """Base class: subclasses set ``name`` and implement ``predict``.

    A config builds a baseline from its class path (``_target_``) and hyperparameters. A
    subclass that sets ``shorthand`` can also be named by a string in ``eval.baselines``:
    ``"<shorthand>"``, or ``"<shorthand>_<value>"`` where the value sets the constructor
    parameter ``suffix`` (``lasso_0.1``). ``requires`` lists the optional modules it needs;
    a task's suite skips it, with a warning, where one is missing."""

    shorthand: ClassVar[str] = ""
    suffix: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    classifies: ClassVar[bool] = False  # class ids in and out (a classification task's)
    # shorthand -> class, filled as subclasses are defined
    by_shorthand: ClassVar[dict[str, type[Baseline]]] = {}
    # counts about the last predict call that results should carry (e.g. unconverged fits)
    diagnostics: dict[str, int] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("shorthand"):
            Baseline.by_shorthand[cls.shorthand] = cls

    @classmethod
    def missing_modules(cls) -> list[str]:
        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

    @property
    def name(self) -> str:
        raise NotImplementedError

    def predict(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        _check_inputs(xs, ys)
        preds = self.predict(xs, ys)
        return preds.to(device=ys.device, dtype=ys.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
