"""Curriculum (DESIGN.md section 5): value at step s = min(end, start + (s // interval) * inc)."""

import pytest

from loopformer import ConfigError, Curriculum, Schedule


def closed_form(start, end, inc, interval, step):
    return min(end, start + (step // interval) * inc)


SCHEDULES = [
    (5, 20, 1, 5000),  # seed's dims
    (11, 41, 2, 5000),  # seed's points
    (15, 30, 2, 500),  # seed's loops (T -> b)
    (26, 101, 5, 2000),
    (3, 3, 0, 100),  # constant
    (1, 10, 4, 1),  # overshoots end, clipped
    (7, 7, 3, 10),  # end == start with inc > 0
]


def _steps(interval, start, end, inc):
    steps = {0, 1}
    for m in (1, 2, 3, 7):
        for s in (m * interval - 1, m * interval, m * interval + 1):
            if s >= 0:
                steps.add(s)
    n_to_end = -(-(end - start) // inc) if inc else 0
    steps |= {n_to_end * interval, 10**9, 10**12}
    return sorted(steps)


@pytest.mark.parametrize("start,end,inc,interval", SCHEDULES)
def test_schedule_closed_form(start, end, inc, interval):
    sched = Schedule(start, end, inc, interval)
    sched.validate("curriculum.x")
    for step in _steps(interval, start, end, inc):
        assert sched.at(step) == closed_form(start, end, inc, interval, step), step


def test_schedule_boundaries_explicitly():
    sched = Schedule(start=11, end=41, inc=2, interval=5000)
    assert sched.at(0) == 11
    assert sched.at(4999) == 11
    assert sched.at(5000) == 13
    assert sched.at(5001) == 13
    assert sched.at(9999) == 13
    assert sched.at(10_000) == 15
    assert sched.at(75_000) == 41  # 11 + 15 * 2
    assert sched.at(74_999) == 39
    assert sched.at(10**9) == 41


def test_schedule_is_monotone_and_pure():
    sched = Schedule(5, 20, 1, 7)
    values = [sched.at(s) for s in range(200)]
    assert values == sorted(values)
    assert values == [sched.at(s) for s in range(200)]  # no hidden state


def test_schedule_inc_zero_is_constant():
    sched = Schedule(4, 4, 0, 3)
    assert {sched.at(s) for s in (0, 2, 3, 4, 10**6)} == {4}


@pytest.mark.parametrize("kw,fragment", [
    (dict(start=10, end=5, inc=1, interval=1), "curriculum.points.end"),
    (dict(start=5, end=10, inc=0, interval=1), "curriculum.points.inc"),
    (dict(start=5, end=10, inc=-1, interval=1), "curriculum.points.inc"),
    (dict(start=5, end=10, inc=1, interval=0), "curriculum.points.interval"),
    (dict(start=5, end=10, inc=1, interval=-3), "curriculum.points.interval"),
    (dict(start=5, end=5, inc=0, interval=0), "curriculum.points.interval"),
])
def test_schedule_validate_names_key(kw, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        Schedule(**kw).validate("curriculum.points")


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        Schedule(10, 5, 1, 1).validate("curriculum.dims")


def make_curriculum(window=15, loops=(15, 30, 2, 500)):
    return Curriculum(dims=Schedule(5, 20, 1, 5000), points=Schedule(11, 41, 2, 5000),
                      loops=Schedule(*loops), window=window)


def test_curriculum_at_and_final():
    cur = make_curriculum()
    cur.validate()
    s0 = cur.at(0)
    assert (s0.n_dims, s0.n_points, s0.n_loops) == (5, 11, 15)
    s = cur.at(5000)
    assert (s.n_dims, s.n_points, s.n_loops) == (6, 13, 30)
    s = cur.at(4999)
    assert (s.n_dims, s.n_points, s.n_loops) == (5, 11, 30)
    s = cur.at(1499)
    assert s.n_loops == 15 + 2 * 2
    f = cur.final
    assert (f.n_dims, f.n_points, f.n_loops) == (20, 41, 30)
    end = cur.at(10**7)
    assert (end.n_dims, end.n_points, end.n_loops) == (f.n_dims, f.n_points, f.n_loops)


@pytest.mark.parametrize("window", [0, -1])
def test_curriculum_rejects_non_positive_window(window):
    with pytest.raises(ConfigError, match="curriculum.window"):
        make_curriculum(window=window).validate()


def test_curriculum_rejects_window_above_max_loops():
    make_curriculum(window=30).validate()  # window == loops.end is fine
    with pytest.raises(ConfigError, match="curriculum.window"):
        make_curriculum(window=31).validate()


def test_curriculum_validates_each_schedule():
    with pytest.raises(ConfigError, match=r"curriculum\.loops"):
        make_curriculum(window=1, loops=(10, 5, 1, 1)).validate()
    bad_dims = Curriculum(dims=Schedule(5, 20, 0, 10), points=Schedule(11, 41, 2, 5000))
    with pytest.raises(ConfigError, match=r"curriculum\.dims\.inc"):
        bad_dims.validate()


# ----------------------------------------------------------------------------- lr schedules


def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction():
    from loopformer.config import OptimConfig

    o = OptimConfig(schedule="wsd", warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.25)
    f = [o.lr_factor(s, 100) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # warm-up
    assert all(v == 1.0 for v in f[10:76])  # stable until the last 25 steps begin
    assert f[85] == pytest.approx(1 - 0.9 * 10 / 25)  # linear in between
    assert f[100] == pytest.approx(0.1)  # at the floor at the end
    assert all(a >= b for a, b in zip(f[10:-1], f[11:], strict=True))


def test_cosine_and_constant_schedules():
    from loopformer.config import OptimConfig

    cos = OptimConfig(schedule="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert cos.lr_factor(0, 100) == 1.0 and cos.lr_factor(50, 100) == pytest.approx(0.5)
    assert cos.lr_factor(100, 100) == pytest.approx(0.0)
    assert OptimConfig(schedule="constant").lr_factor(99, 100) == 1.0


def test_loops_jitter_draws_around_b_the_same_way_every_time():
    cur = make_curriculum(window=2, loops=(12, 12, 0, 1))
    assert {cur.train_loops(s, seed=0) for s in range(100)} == {12}  # no jitter: b
    cur.loops_jitter = 4
    draws = [cur.train_loops(s, seed=0) for s in range(2000)]
    assert set(draws) == set(range(8, 17))  # every count in [b - 4, b + 4], nothing else
    assert abs(sum(draws) / len(draws) - 12) < 0.3  # centred on b
    assert draws == [cur.train_loops(s, seed=0) for s in range(2000)]  # a function of the step
    assert draws != [cur.train_loops(s, seed=1) for s in range(2000)]  # and of the seed
    assert cur.at(5).n_loops == 12  # the schedule (the test set's b) is untouched


def test_loops_jitter_never_runs_fewer_than_one_loop():
    cur = make_curriculum(window=1, loops=(2, 2, 0, 1))
    cur.loops_jitter = 3
    assert min(cur.train_loops(s, seed=7) for s in range(500)) == 1


def test_negative_loops_jitter_is_refused():
    cur = make_curriculum()
    cur.loops_jitter = -1
    with pytest.raises(ConfigError, match="curriculum.loops_jitter=-1 must be >= 0"):
        cur.validate()
