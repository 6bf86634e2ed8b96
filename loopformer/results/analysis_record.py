"""The compact record of a run's analysis (``analysis/analysis.json``) kept in its study's
data: the curves per unit of depth on a grid (every unit up to 2b, then about 12 per decade,
always b, 5b and the last), the convergence loop, the Jacobian estimates, the matched
iterations, the probes and the early-exit figures."""

from __future__ import annotations


def _r(x: float | None) -> float | None:
    return None if x is None or x != x else float(f"{x:.5g}")


def depth_grid(n: int, b: int) -> list[int]:
    """Units of depth kept from a curve of ``n``: 1..2b, then about 12 per decade, with b, 5b
    and n."""
    keep = set(range(1, min(2 * b, n) + 1)) | {t for t in (b, 5 * b, n) if t <= n}
    t = 2 * b
    while t < n:
        keep.add(int(round(t)))
        t *= 10 ** (1 / 12)
    return sorted(k for k in keep if 1 <= k <= n)


def _on(curve: list[float], grid: list[int], offset: int = 1) -> list[float | None]:
    """``curve[i]`` is depth ``i + offset``."""
    return [_r(curve[t - offset]) if 0 <= t - offset < len(curve) else None for t in grid]


def record(r: dict) -> dict:
    """The compact analysis of one run (``analysis.json`` -> the study data's ``analysis``)."""
    out = {"family": r["family"], "unit": r["unit"], "trained_depth": r["trained_depth"],
           "n_prompts": r["n_prompts"], "seed": r["seed"], "max_loops": r.get("max_loops"),
           "not_defined": r.get("not_defined", {}),
           "seconds": {k: round(v, 1) for k, v in r["seconds"].items()},
           "cpu_seconds": round(r.get("cpu_seconds", float("nan")), 1)}
    for part, compact in (("dynamics", _dynamics), ("match", _match), ("exit", _exit),
                          ("probe", _probe), ("hops", _hops)):
        if part in r:
            out[part] = compact(r[part], r["trained_depth"])
    return out


def _dynamics(dyn: dict, b: int) -> dict:
    curves = dyn["error"] if "error" in dyn else {"last": dyn["accuracy"]["last"]}
    n = len(curves["last"]["mean"])
    grid = depth_grid(n, b)
    out = {
        "loops": grid,
        # a classification task's accuracy per unit, a regression task's error
        "accuracy" if "accuracy" in dyn else "error": {
            name: {"k": c["k"], "mean": _on(c["mean"], grid)} for name, c in curves.items()},
        "state_change": _on(dyn["state_change"]["mean"], grid, offset=2),
        "converged_below": dyn["converged_below"],
        "sigma": {t: {"mean": _r(s["mean"]), "max": _r(s["max"]),
                      **{k: {"n": s[k]["n"], "mean": _r(s[k]["mean"])}
                         for k in ("at_fixed_points", "elsewhere") if k in s}}
                  for t, s in dyn["jacobian"]["sigma"].items()},
        "jacobian": {k: v for k, v in dyn["jacobian"].items() if k != "sigma"}}
    if "classes" in dyn:  # per prompt (analyses from issue 32 on)
        sc = dyn["state_change"]
        out["state_change_spread"] = {q: _on(sc[q], grid, offset=2)
                                      for q in ("median", "p90", "max")}
        c = dyn["classes"]
        out["classes"] = {**{k: c[k] for k in ("tol", "window", "max_period", "settle_tol")},
                          "at": {t: {k: _r(v) if isinstance(v, float) else
                                     {p: _r(x) for p, x in v.items()}
                                     for k, v in sh.items()}
                                 for t, sh in c["at"].items()}}
    return out


def _match(m: dict, b: int) -> dict:
    n = len(next(iter(m["algorithms"].values()))["k_star"])
    grid = depth_grid(n, b)
    return {"loops": grid,
            "algorithms": {name: {"k_star": _on(a["k_star"], grid),
                                  "similarity": _on(a["similarity"], grid)}
                           for name, a in m["algorithms"].items()},
            "closed_forms": {name: _on(c, grid) for name, c in m["closed_forms"].items()}}


def _exit(ex: dict, b: int) -> dict:
    fixed = ex["fixed_depth_held_out"]
    grid = depth_grid(len(fixed), b)
    rules = {}
    for name, rule in ex["rules"].items():
        c = rule["chosen"]
        rules[name] = {"chosen_tol": rule["chosen_tol"],
                       "reference_loop": rule["reference_loop"],
                       **{k: rule[k] for k in ("verdict", "best_fixed_held_out") if k in rule},
                       "chosen": None if c is None else {
                           k: (_r(c[k]) if isinstance(c[k], float) else c[k])
                           for k in ("error", "mean_loops", "fixed_loops_at_equal_error",
                                     "loops_saved_at_equal_error", "exit_quantiles")}}
    return {"loops": grid, "fixed_held_out": _on(fixed, grid),
            "oracle_held_out": {k: _r(v) if isinstance(v, float) else v
                                for k, v in ex["oracle_held_out"].items()},
            "split": ex["split"], "rules": rules}


def _hops(h: dict, b: int) -> dict:
    grid = depth_grid(len(h["j_star"]), b)
    return {"loops": grid, "j_star": _on(h["j_star"], grid),
            "j_star_accuracy": _on(h["j_star_accuracy"], grid), "reading": h["reading"],
            "forms": h["forms"],
            "trained_hops": h["trained_hops"]}


def _probe(p: dict, b: int) -> dict:
    return {"split": p["split"], "budget": p["budget"],
            **{k: p[k] for k in ("kind", "units") if k in p},
            "targets": {name: {k: [_r(v) for v in t[k]] for k in ("relative", "control_relative")}
                        for name, t in p["targets"].items()}}
