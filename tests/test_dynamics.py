"""Loop dynamics per prompt on synthetic maps whose behaviour is known: a contraction settles,
a rotation by a quarter turn cycles with period 4, an expansion keeps moving; skipping settled
prompts is exact on a map that settles exactly and within the stated tolerance otherwise."""

import torch

from loopformer.analyze.dynamics import MOVING, class_shares, periods, trajectory
from loopformer.models import SETTLE_PATIENCE, build_model, settled_loop
from loopformer.scoring import model_errors

ROT = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # a quarter turn


class AffineLoop:
    """``z' = A_b z + c_b`` per prompt ``b`` on states (B, 1, 2); predictions: the first
    coordinate. Records how many prompts each step computes."""

    def __init__(self, A, c):
        self.A, self.c, self.computed = A, c, []  # (B, 2, 2), (B, 2)

    def step(self, idx, z, s):
        A, c = (self.A, self.c) if idx is None else (self.A[idx], self.c[idx])
        self.computed.append(len(z))
        return torch.einsum("bij,btj->bti", A, z) + c[:, None]  # (A, 1, 2)

    def iterate(self, xs, ys, n_loops, settle_tol=None):
        z0 = torch.ones(len(self.A), 1, 2, dtype=torch.float64)
        return settled_loop(self.step, z0, None, n_loops, settle_tol)

    def read(self, z):
        return z[:, :, 0]  # (B, 1)


def mixed_maps():
    """Prompts 0-1 contract (rates 0.5 and 0.8), 2 rotates, 3 expands."""
    eye = torch.eye(2, dtype=torch.float64)
    A = torch.stack([0.5 * eye, 0.8 * eye, ROT, 1.1 * eye])
    c = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    return AffineLoop(A, c)


def run(loop, n_loops, settle_tol=None):
    xs, ys = torch.zeros(len(loop.A), 1, 2), torch.zeros(len(loop.A), 1)
    return trajectory(loop, xs, ys, n_loops, batch_size=len(loop.A), settle_tol=settle_tol)


def test_known_maps_are_told_apart():
    traj = run(mixed_maps(), 120)
    period = periods(traj.returns, 120, tol=1e-4)
    assert period.tolist() == [1, 1, 4, MOVING]
    # at loop 8 both contractions still move by more than 1e-4 of their state per loop
    assert periods(traj.returns, 8, tol=1e-4).tolist() == [MOVING, MOVING, 4, MOVING]
    assert periods(traj.returns, 6, tol=1e-4)[2] == MOVING  # 4 back is loop 2: one row of 3
    shares = class_shares(period)
    assert shares == {"fixed": 0.5, "cycle": 0.25, "moving": 0.25, "cycle_periods": {"4": 0.25}}
    # the expansion's one-step change is 0.1 / 1.1 of its state at every loop
    torch.testing.assert_close(traj.changes["state"][1:, 3].double(),
                               torch.full((119,), 0.1 / 1.1, dtype=torch.float64))


def test_a_period_2_cycle_is_not_read_as_period_4():
    loop = AffineLoop(-torch.eye(2, dtype=torch.float64)[None], torch.zeros(1, 2,
                                                                          dtype=torch.float64))
    assert periods(run(loop, 20).returns, 20, tol=1e-4).tolist() == [2]


def test_settled_prompts_are_skipped_within_tolerance():
    tol = 1e-6
    full, skipped = mixed_maps(), mixed_maps()
    ref = [z for _, z, _ in full.iterate(None, None, 100)]
    out = [z for _, z, _ in skipped.iterate(None, None, 100, settle_tol=tol)]
    # the rotation and the expansion never settle: computed every loop, bit for bit
    for a, b in zip(ref, out, strict=True):
        assert torch.equal(a[2:], b[2:])
    # a contraction of rate r stopped after a change below tol is within tol r / (1 - r)
    # of its limit, relative to its state: the stated tolerance
    for p, r in ((0, 0.5), (1, 0.8)):
        gap = max(float((a[p] - b[p]).norm() / a[p].norm()) for a, b in zip(ref, out, strict=True))
        assert 0 < gap <= tol * r / (1 - r)
    # both contractions stopped being computed; the last loops compute only prompts 2 and 3
    assert skipped.computed[-1] == 2 and sum(skipped.computed) < sum(full.computed)


def test_skipping_is_exact_on_a_map_that_settles_exactly():
    """Steps of 1 towards 1, then exactly 1: each prompt settles exactly, at its own loop."""
    z0 = torch.tensor([0.5, 3.0, -7.0, 20.0, 1e-3]).view(5, 1, 1) + 0.1
    counts = []

    def step(idx, z, s):
        counts.append(len(z))
        return torch.where((z - 1).abs() <= 1, torch.ones_like(z), z - (z - 1).sign())

    ref = [z for _, z, _ in settled_loop(step, z0, None, 40)]
    n_full = sum(counts)
    counts.clear()
    out = [z for _, z, _ in settled_loop(step, z0, None, 40, settle_tol=1e-8)]
    assert all(torch.equal(a, b) for a, b in zip(ref, out, strict=True))
    # 20.1 reaches 1 at loop 20 and is computed for SETTLE_PATIENCE loops of no change more
    assert len(counts) == 20 + SETTLE_PATIENCE and sum(counts) < n_full / 2


def test_evaluation_with_settle_tol_changes_errors_by_less_than_its_tolerance():
    """A small looped model: the errors at 40 loops with settled prompts skipped stay within
    1e-4 of the full computation, and some prompts did settle."""
    torch.manual_seed(0)
    model = build_model(dict(family="looped", n_dims=4, n_positions=12, n_embd=16, n_layer=1,
                             n_head=2)).double().eval()
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(64, 9, 4, generator=g, dtype=torch.float64)
    ys = xs @ torch.randn(4, generator=g, dtype=torch.float64)

    class Spec:
        looped = True

    full = model_errors(model, xs, ys, 4.0, Spec, [3, 40], 32)
    fast = model_errors(model, xs, ys, 4.0, Spec, [3, 40], 32, settle_tol=1e-6)
    for key in full:
        assert (full[key] - fast[key]).abs().max() <= 1e-4
    with torch.no_grad():
        last = [z for _, z, _ in model.iterate(xs, ys, 40, settle_tol=1e-6)][-2:]
    carried = (last[0] == last[1]).flatten(1).all(dim=1)  # (P,): not computed at loop 40
    assert 0.2 < carried.float().mean() < 1 or carried.all()


def test_a_fixed_depth_model_is_scored_alike_with_settle_tol():
    model = build_model(dict(family="transformer", n_dims=4, n_positions=12, n_embd=16,
                             n_layer=2, n_head=2)).eval()
    xs = torch.randn(8, 9, 4, generator=torch.Generator().manual_seed(0))
    ys = xs.sum(-1)

    class Spec:
        looped = False

    full = model_errors(model, xs, ys, 4.0, Spec, [2], 8)["model"]
    assert torch.equal(full, model_errors(model, xs, ys, 4.0, Spec, [2], 8,
                                          settle_tol=1e-5)["model"])
