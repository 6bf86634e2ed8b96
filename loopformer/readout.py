"""What a model's output at a token means, and how it is scored.

A model reads out either one number per token (regression: squared error) or ``C`` class
logits per token (classification: cross-entropy and accuracy). The task declares which
(:attr:`loopformer.tasks.Task.n_classes`, 0 for regression) and ``model.n_classes`` follows it.
Classification targets are int64 class ids; :data:`IGNORE` marks a token that asks nothing (a
p-hop position whose answer is undefined, a parity prefix), so every count below is over the
tokens that ask something. The training step, the fixed test set and the evaluation all score
through these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # a target that asks nothing (F.cross_entropy's default ignore_index)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``(..., B, n)`` of logits ``(..., B, n, C)`` against targets
    ``(B, n)`` (broadcast over the leading dims, e.g. the loop window's K); 0 at IGNORE."""
    t = targets.expand(logits.shape[:-1])  # (..., B, n)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), t.reshape(-1),
                         ignore_index=IGNORE, reduction="none")
    return ce.view(t.shape)


def correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether the arg-max class is the target, ``(..., B, n)`` bool (False at IGNORE)."""
    return logits.argmax(-1) == targets  # IGNORE is never a class id


def asked(targets: torch.Tensor) -> torch.Tensor:
    """The tokens whose target asks something, ``(B, n)`` bool."""
    return targets != IGNORE


def class_loss(logits: torch.Tensor, targets: torch.Tensor):
    """The classification loss of a loop window's logits ``(K, B, n, C)``: the mean
    cross-entropy over the asked tokens of all K iterations (as the squared error is the mean
    over all K iterations), and per-position statistics ``(3, n)`` summed over the prompts:
    the cross-entropy (mean over the window), the last iteration's correct answers, and the
    asked tokens."""
    ce = cross_entropy(logits, targets)  # (K, B, n)
    ask = asked(targets)  # (B, n)
    n_asked = ask.sum()
    loss = ce.sum() / (n_asked * logits.shape[0]).clamp_min(1)
    stats = torch.stack((ce.detach().mean(0).sum(0),
                         correct(logits[-1].detach(), targets).sum(0).to(ce.dtype),
                         ask.sum(0).to(ce.dtype)))  # (3, n)
    return loss, stats


def stats_accuracy(stats: torch.Tensor) -> torch.Tensor:
    """Accuracy over all asked tokens from :func:`class_loss`'s statistics."""
    return stats[1].sum() / stats[2].sum().clamp_min(1)
