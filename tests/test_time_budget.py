"""--time-budget: durations parsed, and a plan whose training, validation and save end within the
budget (analysis/time_budget.py)."""

import math

import pytest

from tui_trainer.analysis.time_budget import BudgetPlanner, Pace, parse_duration, plan_tokens
from tui_trainer.errors import UserError


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                               ("1.5h", 5400), ("600", 600), (" 45 s", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "0s", "-5m", "5m10", "2y", "400d"])
def test_a_bad_duration_is_one_clear_error(text):
    with pytest.raises(UserError) as error:
        parse_duration(text)
    assert "--time-budget" in error.value.one_line()


def _spent(total: int, *, tokens_seen: int, tokens_per_epoch: int, pace: Pace) -> float:
    """Seconds a plan of ``total`` tokens takes from ``tokens_seen`` on, at ``pace``."""
    passes = math.ceil(total / tokens_per_epoch) - tokens_seen // tokens_per_epoch
    return ((total - tokens_seen) / pace.tokens_per_s + passes * pace.seconds_per_val_pass
            + pace.seconds_per_save)


@pytest.mark.parametrize(("budget", "val"), [(60.0, 1.0), (600.0, 3.0), (3600.0, 20.0), (55.0, 0.5)])
def test_the_plan_fills_the_budget_without_passing_it(budget, val):
    pace = Pace(tokens_per_s=10_000.0, seconds_per_val_pass=val, seconds_per_save=0.3)
    elapsed, seen, epoch, step = 6.0, 60_000, 400_000, 4096
    total = plan_tokens(budget_seconds=budget, elapsed_seconds=elapsed, tokens_seen=seen, tokens_per_epoch=epoch,
                        pace=pace, tokens_per_step=step)
    assert (total - seen) % step == 0
    spent = _spent(total, tokens_seen=seen, tokens_per_epoch=epoch, pace=pace)
    assert elapsed + spent <= budget
    # one more step would not fit, or would cost another validation pass that does not fit
    assert elapsed + _spent(total + 2 * step, tokens_seen=seen, tokens_per_epoch=epoch, pace=pace) > budget - 1e-9


def test_a_budget_already_spent_plans_nothing_more():
    pace = Pace(10_000.0, 1.0, 0.5)
    assert plan_tokens(budget_seconds=10, elapsed_seconds=12, tokens_seen=5000, tokens_per_epoch=10**6, pace=pace,
                       tokens_per_step=100) == 5000


def test_the_planner_measures_first_then_replans_only_on_a_real_drift():
    planner = BudgetPlanner(budget_seconds=120.0)
    common = dict(tokens_per_epoch=500_000, tokens_per_step=1000)
    assert planner.update(elapsed_seconds=2, training_seconds=2, tokens_seen=20_000,
                          pace=Pace(10_000, 1, 0.2), **common) is None  # still measuring
    first = planner.update(elapsed_seconds=6, training_seconds=6, tokens_seen=60_000, pace=Pace(10_000, 1, 0.2),
                           **common)
    assert first and "time budget" in first and planner.planned_tokens > 60_000
    planned = planner.planned_tokens
    assert planner.update(elapsed_seconds=30, training_seconds=30, tokens_seen=300_000, pace=Pace(11_000, 1, 0.2),
                          **common) is None  # 10% drift: the plan stands
    assert planner.planned_tokens == planned
    again = planner.update(elapsed_seconds=40, training_seconds=40, tokens_seen=400_000, pace=Pace(5_000, 1, 0.2),
                           **common)
    assert again and "re-planned" in again and planner.planned_tokens < planned
    copy = BudgetPlanner(budget_seconds=0)
    copy.load_state_dict(planner.state_dict())
    assert copy == planner


@pytest.mark.parametrize(("text", "fix"), [("-5m", "use e.g. --time-budget 5m"),
                                           ("-3", "use e.g. --time-budget 90s, 10m")])
def test_a_negative_budget_suggests_what_was_meant_only_with_its_unit(text, fix):
    """A bare -3 suggested --time-budget 3, which is refused in turn (3 seconds is too short)."""
    with pytest.raises(UserError) as error:
        parse_duration(text)
    assert "is negative" in error.value.message and error.value.hint.startswith(fix), error.value.one_line()
