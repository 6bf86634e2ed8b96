"""Scoring a trained model: its normalised errors on prompts (a classification task: its
answers), at each loop count, and the checkpoint it is loaded from. Below the shifted prompts
(:mod:`loopformer.ood`), the analysis and the evaluation, which all score through it."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from loopformer.models import InContextModel, ModelConfig, build_model
from loopformer.readout import asked, correct, cross_entropy
from loopformer.rundir import RunDir


class ScoredSettings(Protocol):
    """What scoring reads of a run's settings (:class:`loopformer.config.Settings`)."""

    model: ModelConfig
    looped: bool


def checkpoint_path(run_dir: Path, ckpt: str | None) -> Path:
    """``last``, ``step=N`` / ``N`` or a path -> a checkpoint file of the run."""
    ckpt = str(ckpt or "last")
    if ckpt == "last":
        return RunDir(run_dir).last_ckpt
    if ckpt.isdigit() or ckpt.startswith("step="):
        return RunDir(run_dir).kept_ckpt(ckpt.removeprefix("step="))
    return Path(ckpt)


def load_model(run_dir: Path, spec: ScoredSettings, ckpt: str | None = "last") -> InContextModel:
    from loopformer.checkpoints import safe_load  # imports lightning: after the checks

    path = checkpoint_path(run_dir, ckpt)
    state = safe_load(path)["state_dict"]
    model = build_model(spec.model)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model.eval()


@torch.no_grad()
def model_errors(model: InContextModel, xs, ys, norm: float, spec: ScoredSettings,
                 loops: list[int], batch_size: int, queries=None,
                 query_ys=None, settle_tol: float | None = None) -> dict[str, torch.Tensor]:
    """Normalised squared errors ``(P, n)`` of the model at each loop count in ``loops`` (the
    first is the trained count), and ``loop_curve``: last-position error ``(P, L_max)``.
    With ``queries`` (P, m, d), the errors ``(P, m)`` at those side queries against
    ``query_ys`` (:meth:`~loopformer.models.InContextModel.layout`). With ``settle_tol``, a
    looped model stops computing the prompts whose state has settled
    (:func:`~loopformer.models.settled_loop`)."""
    out: dict[str, list] = {}
    trained = loops[0]
    L = max(loops)
    for i in range(0, xs.shape[0], batch_size):
        x, y = xs[i:i + batch_size], ys[i:i + batch_size]
        side = {} if queries is None else {"queries": queries[i:i + batch_size]}
        if settle_tol is not None and spec.looped:  # a fixed depth has nothing to skip
            side["settle_tol"] = settle_tol
        target = y if queries is None else query_ys[i:i + batch_size]
        if spec.looped:
            # one pass: the predictions after every iteration, nothing else kept
            preds = model(x, y, n_loops=L, window=L, **side)  # (L, b, n)
            err = (preds - target).square() / norm  # (L, b, n)
            out.setdefault("model", []).append(err[trained - 1])
            for extra in loops[1:]:
                out.setdefault(f"model@{extra}", []).append(err[extra - 1])
            out.setdefault("loop_curve", []).append(err[:, :, -1].T)  # (b, L)
        else:
            preds = model(x, y, **side)[-1]  # (b, n)
            out.setdefault("model", []).append((preds - target).square() / norm)
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def model_answers(model: InContextModel, xs, ys, spec: ScoredSettings, loops: list[int],
                  batch_size: int, settle_tol: float | None = None) -> dict[str, torch.Tensor]:
    """A classification task's scores: per prompt and position, whether the model's answer
    is right ``(P, n)`` (float 0/1) at each loop count in ``loops`` (``model``: the first, the
    trained count; ``model@L``: the others), the cross-entropy ``loss`` ``(P, n)`` at the
    trained count, ``asked`` ``(P, n)``: the positions whose target asks something (the
    others score 0 and are left out of every mean), and for a looped model ``loop_curve``:
    right or wrong at the last position after each loop ``(P, L_max)``."""
    out: dict[str, list] = {}
    trained, L = loops[0], max(loops)
    for i in range(0, xs.shape[0], batch_size):
        x, y = xs[i:i + batch_size], ys[i:i + batch_size]
        side = {"settle_tol": settle_tol} if settle_tol is not None and spec.looped else {}
        logits = (model(x, y, n_loops=L, window=L, **side) if spec.looped
                  else model(x, y))  # (L or 1, b, n, C)
        right = correct(logits, y).float()  # (L, b, n)
        first = trained - 1 if spec.looped else 0
        out.setdefault("model", []).append(right[first])
        out.setdefault("loss", []).append(cross_entropy(logits[first], y))
        out.setdefault("asked", []).append(asked(y))
        if spec.looped:
            for extra in loops[1:]:
                out.setdefault(f"model@{extra}", []).append(right[extra - 1])
            out.setdefault("loop_curve", []).append(right[:, :, -1].T)  # (b, L)
    return {k: torch.cat(v) for k, v in out.items()}
