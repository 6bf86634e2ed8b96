"""The depth dial beyond training (issue 33): a token task scored at hop counts (a parity's
lengths) up to ``eval.dial.factor`` times the trained one, each at every loop count up to the
largest one asked, so that one pass gives the accuracy per dial value and per loop count, read
at the loops rule's b(p) (``curriculum.loops_rule``) and at the trained, fixed b.

Prompt shapes per dial value are the task's (:meth:`~loopformer.tasks.Task.dial_shape`: p-hop
keeps the trained length where it holds the hops, else the shortest that does); the settings
refuse a factor whose longest prompt is beyond ``model.n_positions`` before any work."""

from __future__ import annotations

import torch

from loopformer.models import InContextModel
from loopformer.readout import asked, correct
from loopformer.stats import bootstrap_band


@torch.no_grad()
def answers_per_loop(model: InContextModel, xs, ys, looped: bool, n_loops: int,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right or wrong ``(L, P, n)`` after each loop ``1..n_loops`` (a fixed-depth model: its
    one output, L = 1), and the asked positions ``(P, n)``."""
    out = []
    for i in range(0, xs.shape[0], batch_size):
        x, y = xs[i:i + batch_size], ys[i:i + batch_size]
        logits = model(x, y, n_loops=n_loops, window=n_loops) if looped else model(x, y)
        out.append(correct(logits, y).cpu())  # (L, b, n)
    return torch.cat(out, dim=1), asked(ys).cpu()


def score_dial(model: InContextModel, spec, device, n_resamples: int, seed: int,
               batch_size: int) -> dict:
    """The dial's block of ``results.json`` (see the module's docstring); ``spec`` is the
    run's :class:`~loopformer.config.Settings`."""
    from loopformer.data import generator  # imports lightning: after the checks

    task, cur, dial = spec.function, spec.curriculum, spec.eval.dial
    final, rule = cur.final, cur.loops_rule
    values = task.dial_values(cur, dial.factor)
    shapes = [task.dial_shape(v, final) for v in values]
    fixed = final.n_loops if spec.looped else spec.model.n_layer
    rule_loops = None if rule.fixed or not spec.looped else [rule(v) for v in values]
    n_loops = max([fixed, *(rule_loops or [])]) if spec.looped else 1
    last, every, at_rule, at_fixed = [], [], [], []
    for i, (v, shape) in enumerate(zip(values, shapes, strict=True)):
        xs, ys = task.sample_at(dial.n_prompts, shape, generator(device, seed, 1, v))
        right, ask = answers_per_loop(model, xs, ys, spec.looped, n_loops, batch_size)
        right = right.double()
        last.append(right[:, :, -1].mean(1).tolist())  # (L,): the last position always asks
        every.append(((right * ask).sum((1, 2)) / ask.sum().clamp_min(1)).tolist())
        t_fixed = fixed - 1 if spec.looped else 0
        at_fixed.append(right[t_fixed, :, -1])
        if rule_loops is not None:
            at_rule.append(right[rule_loops[i] - 1, :, -1])

    def band(cols):
        return bootstrap_band(torch.stack(cols, dim=1), n_resamples=n_resamples,
                              seed=seed).to_dict()

    return {
        "of": task.dial, "trained": task.hops if task.dial == "hops" else final.n_points,
        "factor": dial.factor, "values": values,
        "lengths": [s.n_points for s in shapes], "length_rule": task.dial_lengths,
        "n_prompts": dial.n_prompts, "rule": rule.to_dict(), "fixed_loops": fixed,
        "rule_loops": rule_loops, "loops": list(range(1, n_loops + 1)) if spec.looped
        else [fixed],
        "unit": "loop" if spec.looped else ("application" if spec.model.family == "tied"
                                            else "layer"),
        "accuracy_last": last, "accuracy_all": every,
        "at_fixed": band(at_fixed), "at_rule": band(at_rule) if at_rule else None,
    }


def format_dial(d: dict) -> str:
    """The dial's table: accuracy at the last position per dial value, at the rule's and the
    fixed loop count."""
    lines = [f"accuracy at the last position by {d['of']} (trained {d['trained']}; "
             f"{d['n_prompts']} prompts each; {d['rule']['formula']})",
             f"{d['of']:>6} {'tokens':>7} {'b fixed':>8} {'acc':>7} {'b rule':>7} {'acc':>7}"]
    for i, v in enumerate(d["values"]):
        rule = ("" if d["at_rule"] is None else
                f"{d['rule_loops'][i]:>7d} {d['at_rule']['mean'][i]:>7.3f}")
        lines.append(f"{v:>6d} {d['lengths'][i]:>7d} {d['fixed_loops']:>8d} "
                     f"{d['at_fixed']['mean'][i]:>7.3f} {rule}")
    return "\n".join(lines)
