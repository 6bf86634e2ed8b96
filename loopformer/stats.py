"""Error curves: means over prompts with bootstrap bands."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Curve(NamedTuple):
    """A curve indexed by the number of in-context examples (or any other x)."""

    mean: list[float]
    low: list[float]
    high: list[float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Curve:
        return cls(list(d["mean"]), list(d["low"]), list(d["high"]))


def bootstrap_band(errors: torch.Tensor, n_resamples: int = 1000, low: float = 5,
                   high: float = 95, seed: int = 0) -> Curve:
    """Mean over prompts of ``errors`` (P, n) with a percentile bootstrap band.

    Prompts are resampled with replacement ``n_resamples`` times from an explicit generator
    (same seed, same band). Each resample is a row of counts, so all resampled means are
    one (R, P) @ (P, n) product instead of an (R, P, n) gather.
    """
    if errors.dim() != 2 or errors.shape[0] < 1:
        raise ValueError(f"expected errors of shape (P, n) with P >= 1; got {tuple(errors.shape)}")
    if not 0 <= low <= high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low <= high <= 100; got {low}, {high}")
    e = errors.detach().double()
    n_prompts = e.shape[0]
    gen = torch.Generator(device=e.device).manual_seed(seed)
    idx = torch.randint(0, n_prompts, (n_resamples, n_prompts), generator=gen, device=e.device)
    counts = torch.zeros(n_resamples, n_prompts, dtype=e.dtype, device=e.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=e.dtype))  # (R, P)
    means = counts @ e / n_prompts  # (R, n)
    q = torch.tensor([low / 100, high / 100], dtype=e.dtype, device=e.device)
    band = torch.quantile(means, q, dim=0)  # (2, n)
    return Curve(e.mean(0).tolist(), band[0].tolist(), band[1].tolist())
