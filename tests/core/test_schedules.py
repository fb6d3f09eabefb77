import pytest

from lightning_micro.core.schedules import SPARSITY_SCHEDULES, cubic_sparsity, linear_sparsity, one_shot_sparsity


def test_cubic_follows_zhu_and_gupta():
    s_i, s_f, t0, n = 0.1, 0.9, 100, 400
    for t in range(t0, t0 + n + 1, 37):
        assert cubic_sparsity(t, s_i, s_f, t0, t0 + n) == pytest.approx(s_f + (s_i - s_f) * (1 - (t - t0) / n) ** 3)
    assert cubic_sparsity(t0, s_i, s_f, t0, t0 + n) == pytest.approx(s_i)
    assert cubic_sparsity(t0 + n, s_i, s_f, t0, t0 + n) == pytest.approx(s_f)
    assert cubic_sparsity(10 * n, s_i, s_f, t0, t0 + n) == pytest.approx(s_f)  # held after the end
    assert cubic_sparsity(t0 - 1, s_i, s_f, t0, t0 + n) == 0.0  # nothing pruned before the start


@pytest.mark.parametrize("name", sorted(SPARSITY_SCHEDULES))
def test_every_schedule_is_monotonic_and_reaches_final(name):
    schedule = SPARSITY_SCHEDULES[name]
    values = [schedule(t, 0.0, 0.95, 10, 110) for t in range(0, 200)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(0.95)


def test_cubic_prunes_faster_early_than_linear():
    assert cubic_sparsity(25, 0.0, 0.9, 0, 100) > linear_sparsity(25, 0.0, 0.9, 0, 100)


def test_one_shot_jumps_at_start():
    assert one_shot_sparsity(9, 0.0, 0.8, 10, 50) == 0.0
    assert one_shot_sparsity(10, 0.0, 0.8, 10, 50) == 0.8


def test_start_equal_to_end_is_one_shot():
    assert cubic_sparsity(5, 0.0, 0.5, 5, 5) == 0.5
