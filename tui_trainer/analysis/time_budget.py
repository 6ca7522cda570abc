"""The best model in the time you have: a run's length planned from its measured pace.

``--time-budget 10m`` fixes the wall time, not the epochs: after a short measuring phase (inside the
warm-up) the run fixes its total training tokens so that training, the validation passes and the
final save end within the budget, and the token-based learning-rate schedule decays to its floor
exactly there. The epochs follow from the tokens (the last one may be partial: a shorter epoch,
handled exactly like any other). When the pace later drifts by more than ``REPLAN_DRIFT`` (another
process took the cores, a new accumulation), the remaining tokens are planned again and the run
says so. Pauses are not counted: ``elapsed`` is active time.

Pure functions and a small state object; the engine measures and calls them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tui_trainer.errors import UserError

MEASURE_SECONDS = 5.0  # of training, before the first plan (the first steps pay one-time costs)
REPLAN_DRIFT = 0.20  # the measured pace may drift this much from the planned one before a re-plan
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1h30m``, ``1.5h``, or plain seconds ``600`` → seconds (> 0)."""
    given = str(text).strip().lower().replace(" ", "")
    hint = "use e.g. --time-budget 90s, 10m, 2h or 1h30m"
    if given.startswith("-") and given[1:2].isdigit():
        positive = text.strip()[1:]  # with its unit, what was meant; a bare -3 may have meant 3 minutes
        raise UserError(f"--time-budget {text} is negative: a budget is positive",
                        f"use e.g. --time-budget {positive}" if not re.fullmatch(r"[\d.]+", positive) else hint)
    if re.fullmatch(r"\d+(\.\d+)?", given):
        seconds = float(given)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", given)
        if not parts or "".join(n + u for n, u in parts) != given:
            raise UserError(f"--time-budget '{text}' is not a duration", hint)
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"--time-budget {text} is not a positive duration", hint)
    if seconds > 366 * 86400:
        raise UserError(f"--time-budget {text} is more than a year", hint)
    return seconds


def bare_seconds_note(text: str | float) -> str | None:
    """A budget given as a bare number is seconds: said once, since ``10`` may have meant minutes."""
    given = str(text).strip()
    if not re.fullmatch(r"\d+(\.\d+)?", given):
        return None
    return f"--time-budget {given} is read as {given} seconds (write {given}m for minutes, {given}h for hours)"


@dataclass(frozen=True)
class Pace:
    """What the run measured: training tokens per second, and what the rest costs."""

    tokens_per_s: float  # training, this session
    seconds_per_val_pass: float  # one validation pass (measured, or estimated before the first one)
    seconds_per_save: float  # one checkpoint save


def plan_tokens(*, budget_seconds: float, elapsed_seconds: float, tokens_seen: int, tokens_per_epoch: int,
                pace: Pace, tokens_per_step: int) -> int:
    """The run's total training tokens (earlier ones included) that end within the budget.

    The time left pays for the tokens still to train, one validation pass at the end of every
    epoch those tokens reach (a partial last epoch has its own), and the final save. Rounded down
    to whole optimizer steps; never below the tokens already seen."""
    left = budget_seconds - elapsed_seconds - pace.seconds_per_save
    if left <= 0 or pace.tokens_per_s <= 0:
        return tokens_seen

    def seconds(steps: int) -> float:  # training ``steps`` more, and their epochs' validation passes
        total = tokens_seen + steps * tokens_per_step
        passes = math.ceil(total / tokens_per_epoch) - tokens_seen // tokens_per_epoch if steps else 1
        return (total - tokens_seen) / pace.tokens_per_s + max(1, passes) * pace.seconds_per_val_pass

    # The most whole steps that fit (the time grows with the steps: bisect; a fixed-point iteration
    # oscillates when the validation passes cost more than the training between them).
    fits, too_many = 0, int(left * pace.tokens_per_s / tokens_per_step) + 1
    if seconds(0) > left:
        return tokens_seen
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if seconds(middle) <= left else (fits, middle)
    return tokens_seen + fits * tokens_per_step


@dataclass
class BudgetPlanner:
    """The plan's state across a run (and a resume: ``state_dict``)."""

    budget_seconds: float
    planned_tokens: int | None = None  # None while measuring
    planned_pace: float | None = None  # tokens/s the plan was made with
    measure_seconds: float = MEASURE_SECONDS  # training measured before the first plan (a short budget: less)

    def update(self, *, elapsed_seconds: float, training_seconds: float, tokens_seen: int, tokens_per_epoch: int,
               pace: Pace, tokens_per_step: int) -> str | None:
        """Plan once the pace is measured; plan again if it drifted. Returns a line to show when
        the plan was made or changed, else None."""
        if training_seconds < self.measure_seconds:
            return None
        if self.planned_tokens is not None and self.planned_pace:
            drift = abs(pace.tokens_per_s - self.planned_pace) / self.planned_pace
            if drift <= REPLAN_DRIFT:
                return None
        before = self.planned_tokens
        # At least one more step: the last step is the one the schedule takes to its floor (a plan that
        # ended here would leave the rate wherever the previous plan had it).
        self.planned_tokens = max(tokens_seen + tokens_per_step,
                                  plan_tokens(budget_seconds=self.budget_seconds, elapsed_seconds=elapsed_seconds,
                                              tokens_seen=tokens_seen, tokens_per_epoch=tokens_per_epoch, pace=pace,
                                              tokens_per_step=tokens_per_step))
        self.planned_pace = pace.tokens_per_s
        epochs = self.planned_tokens / tokens_per_epoch
        if before is None:
            return (f"time budget: {self.planned_tokens:,} training tokens (~{epochs:.2f} epochs) at "
                    f"{pace.tokens_per_s:,.0f} tokens/s")
        return (f"time budget: the pace moved to {pace.tokens_per_s:,.0f} tokens/s; re-planned {before:,} -> "
                f"{self.planned_tokens:,} training tokens (~{epochs:.2f} epochs)")

    def seconds_left(self, elapsed_seconds: float) -> float:
        return max(0.0, self.budget_seconds - elapsed_seconds)

    def state_dict(self) -> dict:
        return {"budget_seconds": self.budget_seconds, "planned_tokens": self.planned_tokens,
                "planned_pace": self.planned_pace}

    def load_state_dict(self, state: dict) -> None:
        self.budget_seconds = float(state["budget_seconds"])
        self.planned_tokens = None if state.get("planned_tokens") is None else int(state["planned_tokens"])
        self.planned_pace = None if state.get("planned_pace") is None else float(state["planned_pace"])


def last_epoch_share(tokens_seen: int, tokens_per_epoch: int) -> float:
    """How much of its last epoch a run that stopped at ``tokens_seen`` trained (every earlier epoch
    whole): in (0, 1], 1.0 when it stopped on an epoch's end."""
    return ((tokens_seen - 1) % tokens_per_epoch + 1) / tokens_per_epoch if tokens_seen > 0 else 1.0


def budget_spent_words(epoch: int, share: float) -> str:
    """The end of a budget run in words: the last epoch is partial by design, so say where it stopped."""
    if share >= 1.0:
        return f"budget spent: ended with epoch {epoch} complete"
    return f"budget spent: ended {min(share, 0.99):.0%} into epoch {epoch}"


def state_problem(state: object) -> str | None:
    """What is wrong with a checkpoint's budget state (``state_dict`` and what the engine adds: the
    seconds used, where the decay starts, the provisional plan), in a few words; None: it fits."""
    if not isinstance(state, dict):
        return "is not a table"

    def fits(key: str, whole: bool) -> bool:
        value = state.get(key)
        if value is None:
            return key not in ("budget_seconds", "used_seconds")
        kinds = (int,) if whole else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and value >= 0

    for key, whole in (("budget_seconds", False), ("used_seconds", False), ("planned_tokens", True),
                       ("planned_pace", False), ("warmup_tokens", True), ("provisional_tokens", True)):
        if not fits(key, whole):
            return f"has {key} {state.get(key)!r}"
    if not state["budget_seconds"] > 0:
        return f"has budget_seconds {state['budget_seconds']!r}"
    return None


# -- what a budget run takes unless told (under the flags and a config file: what they give wins) ---

# Measured with benchmarks/time_to_loss.py on 2 CPU cores (55 s budgets, dropout 0; benchmarks/README.md,
# row 14), each lever alone from the plain defaults (16 x 8, lr 1e-3), 4 layers x 128, context 64:
#   one micro-batch a step   val 2.42 -> 2.05   (16 x 1; at lr 3e-3: 16 x 2 2.05, 32 x 1 2.02; 8 x 1 1.97 at 2e-3)
#   a higher peak lr         val 2.05 -> 1.86   (1e-3, 2e-3, 3e-3, 5e-3, 7e-3: 2.05, 1.97, 1.90, 1.86, 2.19 (a spike))
# and 6 layers x 256, context 128, 16 x 1: lr 1e-3 2.48, 2.5e-3 2.53 — a higher rate does not carry over.
# A step of 16 sequences is near the gradient noise scale early in training (a few sequences,
# growing as the loss falls: McCandlish et al.), so a larger batch buys less progress per second;
# a short run of a narrow model takes a higher rate, kept below the cliff (7e-3 spiked).
BUDGET_ACCUM = 1
BUDGET_LR_NARROW = 4e-3  # width <= BUDGET_LR_NARROW_WIDTH; wider models keep the plain default
BUDGET_LR_NARROW_WIDTH = 128


def budget_lr(n_embd: int) -> float | None:
    """The peak lr a budget run takes unless told; None: the plain default (measured no better)."""
    return BUDGET_LR_NARROW if n_embd <= BUDGET_LR_NARROW_WIDTH else None


def budget_defaults(given: dict, n_embd: int) -> dict:
    """The settings a ``--time-budget`` run takes unless ``given`` names them ("section.field" -> value)."""
    chosen: dict = {}
    if not {"train.accum", "train.batch"} & given.keys():
        chosen["train.accum"] = BUDGET_ACCUM
    if "optim.lr" not in given and "model.init_from" not in given and budget_lr(n_embd) is not None:
        chosen["optim.lr"] = budget_lr(n_embd)  # (fine-tuning has its own: init_source.py)
    return chosen


def budget_notes(accum: int, lr: float, n_embd: int, given: dict) -> list[str]:
    """The run line's word on the defaults a budget chose (those still in force)."""
    chosen, parts = budget_defaults(given, n_embd), []
    if chosen.get("train.accum") == accum:
        parts.append(f"accum {accum} (a step near the gradient noise scale: more steps in the time)")
    if "optim.lr" in chosen and chosen["optim.lr"] == lr:
        parts.append(f"lr {lr:.2g} (a short run of a model {BUDGET_LR_NARROW_WIDTH} wide or less takes a higher rate)")
    if not parts:
        return []
    return [f"time-budget defaults: {', '.join(parts)}; flags override them (benchmarks/time_to_loss.py --levers)"]
