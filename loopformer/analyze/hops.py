"""Which j-hop answer each loop gives (issue 33): the read-out's accuracy after loop t against
the exact j-hop target (:func:`~loopformer.tasks.hop_targets`) for every j, over the positions
where that target is defined, and a reading of the best-matching j per loop: linear hopping
(loop t answers t + c hops) or pointer doubling (loop t answers 2^(t + c) hops)."""

from __future__ import annotations

import math

import torch

from loopformer.readout import IGNORE
from loopformer.tasks import hop_targets

OFFSETS = range(-3, 4)  # the offsets c tried in j = t + c and j = 2^(t + c)
READ_SHARE = 0.75  # the share of the loops a form must match to be the reading
READ_LOOPS = 3  # and the fewest loops it must be tested on
# the fewest positions a j must be defined at to be scored: a long chain fits a prompt only
# where its hops are short, as in an alternating stretch (a b a b ...), whose hop answers repeat
# with period 2; scored on those few positions, a large j would match any loop of its parity
MIN_POSITIONS = 100


def hop_accuracy(answers: torch.Tensor, xs: torch.Tensor, max_hops: int, n_symbols: int,
                 min_positions: int = MIN_POSITIONS) -> torch.Tensor:
    """``(L, J)``: after each loop (rows of ``answers`` (L, P, n), class ids) the share of the
    positions where the j-hop answer is defined (``j = 1..max_hops``) that it gives; NaN for a
    j defined at fewer than ``min_positions`` positions."""
    out = torch.full((answers.shape[0], max_hops), float("nan"), dtype=torch.float64)
    for j in range(1, max_hops + 1):
        target = hop_targets(xs, j, n_symbols).to(answers.device)  # (P, n)
        defined = target != IGNORE
        n = int(defined.sum())
        if n >= max(min_positions, 1):
            out[:, j - 1] = ((answers == target) & defined).sum((1, 2)).double() / n
    return out


def hop_reading(acc: torch.Tensor) -> dict:
    """The best-matching j per loop (``j_star``, with its accuracy) and the reading: the form,
    linear ``j = t + c`` or doubling ``j = 2^(t + c)`` (best offset c in -3..3), that gives
    j* on at least 75% of the at least 3 loops where it names a scored j, and more of them than
    the other; else ``neither``."""
    J = acc.shape[1]
    filled = acc.nan_to_num(-1.0)
    j_star = (filled.argmax(dim=1) + 1).tolist()
    best_acc = filled.max(dim=1).values.tolist()
    grid = [j for j in range(1, J + 1) if not acc[:, j - 1].isnan().all()]  # the scored j

    def linear(t, c):
        return t + c

    def doubling(t, c):
        return 2 ** (t + c) if t + c >= 0 else 0

    forms = {"linear": _share_on(j_star, linear, grid),
             "doubling": _share_on(j_star, doubling, grid)}
    a, b = forms["linear"]["share"], forms["doubling"]["share"]
    reading = "neither"
    for name, mine, other in (("linear", a, b), ("doubling", b, a)):
        if forms[name]["loops"] >= READ_LOOPS and mine >= READ_SHARE and mine > other:
            reading = name
    return {"j_star": j_star, "j_star_accuracy": best_acc, "forms": forms, "reading": reading,
            "rule": f"j*(t) = argmax_j accuracy; a form is the reading where it names j*(t) on "
                    f">= {READ_SHARE:.0%} of the >= {READ_LOOPS} loops t whose j it names "
                    f"is scored ({_span(grid)}; best offset c in {OFFSETS.start}.."
                    f"{OFFSETS.stop - 1}), and "
                    f"on more of them than the other form"}


def _span(grid: list[int]) -> str:
    if not grid:
        return "no j"
    if grid == list(range(grid[0], grid[-1] + 1)):
        return f"j = {grid[0]}..{grid[-1]}"
    return "j in " + ", ".join(map(str, grid))


def _share_on(best: list[int], form, grid: list[int]) -> dict:
    scored = set(grid)
    top = {"offset": None, "share": 0.0, "loops": 0}
    for c in OFFSETS:
        tested = [t for t in range(1, len(best) + 1) if form(t, c) in scored]
        if len(tested) < READ_LOOPS:
            continue
        share = sum(best[t - 1] == form(t, c) for t in tested) / len(tested)
        if share > top["share"] or (share == top["share"] and top["offset"] is not None
                                    and abs(c) < abs(top["offset"])):
            top = {"offset": c, "share": share, "loops": len(tested)}
    return top


def hops_part(answers: torch.Tensor, xs: torch.Tensor, max_hops: int, n_symbols: int,
              trained_hops: int) -> dict:
    """The part ``hops`` of the analysis: the accuracy grid and its reading."""
    acc = hop_accuracy(answers, xs.cpu(), max_hops, n_symbols)
    return {"hops": list(range(1, max_hops + 1)), "trained_hops": trained_hops,
            "log2_trained_hops": math.ceil(math.log2(trained_hops)) if trained_hops > 1 else 0,
            "positions": f"every position where the j-hop answer is defined (a j defined at "
                         f"fewer than {MIN_POSITIONS} positions is not scored)",
            "accuracy": [[None if v != v else round(v, 4) for v in row] for row in acc.tolist()],
            **hop_reading(acc)}
