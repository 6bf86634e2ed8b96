"""Early exit evaluated honestly: thresholds chosen on a calibration split, reported on a
held-out split, against the fixed-depth curve and the oracle that knows each prompt's best
loop."""

from __future__ import annotations

import torch


def exit_loops(change: torch.Tensor, tol: float) -> torch.Tensor:
    """Exit loop ``(P,)`` per prompt for a rule's changes ``(L, P)`` (row ``t-1``: the change
    from loop ``t-1`` to ``t``; NaN where undefined): the first ``t`` whose change is below
    ``tol``, else ``L``. The same rule as ``model.predict(tol=..., rule=...)``."""
    below = change < tol  # NaN compares False
    first = below.to(torch.int8).argmax(dim=0) + 1  # (P,)
    return torch.where(below.any(dim=0), first, change.shape[0])


def oracle_headroom(err: torch.Tensor, calibration: torch.Tensor) -> dict:
    """For per-prompt errors ``err`` (L, P) at each depth: the best single fixed depth (the
    lowest mean error on the ``calibration`` prompts (P,)), its error on the held-out
    prompts, the oracle's held-out error (each prompt at its own best depth) and the headroom
    between them (what a perfect per-prompt exit could gain)."""
    held = err[:, ~calibration]  # (L, P_held)
    best = int(err[:, calibration].mean(dim=1).argmin())
    oracle = float(held.min(dim=0).values.mean())
    fixed = float(held[best].mean())
    return {"best_fixed_loop": best + 1, "chosen_on": "calibration", "best_fixed_error": fixed,
            "oracle_error": oracle, "headroom": fixed - oracle}


def _at_exit(err: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    return err.gather(0, (exits - 1).unsqueeze(0)).squeeze(0)  # (P,)


def _summary(err: torch.Tensor, exits: torch.Tensor) -> dict:
    e = _at_exit(err, exits)
    depth = exits.float()
    counts = torch.bincount(exits, minlength=err.shape[0] + 1)[1:]
    return {"error": float(e.mean()), "mean_loops": float(depth.mean()),
            "exit_quantiles": {q: float(depth.quantile(float(q))) for q in
                               ("0.1", "0.5", "0.9")},
            "exit_histogram": {str(t + 1): int(c) for t, c in enumerate(counts.tolist()) if c}}


NO_THRESHOLD = "no threshold reached the error at b on the calibration split"
BEATS_ALL = "beats every fixed depth"


def verdict(chosen: dict | None) -> str:
    """What the chosen threshold's held-out figures say against the fixed depths."""
    if chosen is None:
        return NO_THRESHOLD
    if chosen["fixed_loops_at_equal_error"] is None:
        return BEATS_ALL
    saved = chosen["loops_saved_at_equal_error"]
    return f"saves {saved:.1f} loops" if saved >= 0 else f"costs {-saved:.1f} loops"


def evaluate_rule(err: torch.Tensor, change: torch.Tensor, thresholds: list[float],
                  calibration: torch.Tensor, reference_loop: int) -> dict:
    """One stopping rule on per-prompt errors ``err`` (L, P) and changes ``change`` (L, P).

    ``calibration`` (P,) marks the calibration prompts; the others are held out. The chosen
    threshold is the one spending the fewest mean loops on the calibration prompts among those
    whose calibration error is at most that of the fixed depth ``reference_loop`` (the trained
    depth); every threshold and the choice are reported on the held-out prompts, with the
    fixed depth that reaches the same held-out error."""
    held = ~calibration
    fixed_held = err[:, held].mean(dim=1)  # (L,)
    reference = float(err[reference_loop - 1, calibration].mean())
    rows, chosen = [], None
    for tol in thresholds:
        exits = exit_loops(change, tol)
        cal = _summary(err[:, calibration], exits[calibration])
        row = {"tol": tol, "calibration": {k: cal[k] for k in ("error", "mean_loops")},
               "held_out": _summary(err[:, held], exits[held])}
        rows.append(row)
        if cal["error"] <= reference and (chosen is None or
                                          cal["mean_loops"] < chosen["calibration"]["mean_loops"]):
            chosen = row
    for row in rows:
        e = row["held_out"]["error"]
        reached = (fixed_held <= e).nonzero()
        equal = int(reached[0]) + 1 if len(reached) else None
        row["held_out"]["fixed_loops_at_equal_error"] = equal
        row["held_out"]["loops_saved_at_equal_error"] = (
            None if equal is None else equal - row["held_out"]["mean_loops"])
    return {"thresholds": rows, "reference_loop": reference_loop,
            "calibration_reference_error": reference,
            "chosen_tol": None if chosen is None else chosen["tol"],
            "chosen": None if chosen is None else chosen["held_out"],
            "verdict": verdict(None if chosen is None else chosen["held_out"]),
            "best_fixed_held_out": float(fixed_held.min())}
