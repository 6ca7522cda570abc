"""Steering on its own: the commands between micro-steps (accum, pause, save, sample, stop) and, for
several processes, the ranks' agreement on rank 0's decisions: no model, no training loop."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tui_trainer.config import ACCUM_MAX
from tui_trainer.control import Control
from tui_trainer.engine.distributed import Placement, Ranks
from tui_trainer.engine.steering import AgreedDecisions, Steering
from tui_trainer.events import AccumChangeRequested, ListSink, Notice, Paused, Resumed
from tui_trainer.rundir.loop_state import LoopState


class Recorded:
    """What Steering asked of the run: saves (with the RNG state given) and samples."""

    def __init__(self) -> None:
        self.saves: list[object] = []
        self.requested: list[bool] = []  # each save: asked for (`s`, the socket), or periodic
        self.redone: list[int] = []  # each save: the window's micro-steps done (paused inside it)
        self.samples: list[tuple[int, int]] = []

    def save(self, rng, requested: bool = False, redone: int = 0) -> bool:
        self.saves.append(rng)
        self.requested.append(requested)
        self.redone.append(redone)
        return True

    def sample(self, epoch: int, step: int) -> Notice:
        self.samples.append((epoch, step))
        return Notice(message=f"sample at step {step}")


def make(state: LoopState | None = None, ranks: Ranks | None = None):
    control, sink, recorded = Control(), ListSink(), Recorded()
    state = state or LoopState(epoch=2, step=7, accum=4)
    steering = Steering(control, ranks or Ranks(), sink, state, save=recorded.save, sample=recorded.sample)
    return steering, control, sink, recorded, state


def test_an_accum_key_is_a_change_for_the_next_epoch_within_the_bounds():
    steering, control, sink, _, state = make()
    control.set_accum(ACCUM_MAX + 500)
    steering.handle_commands()
    assert (state.accum, state.pending_accum, state.pending_accum_epoch) == (4, ACCUM_MAX, 3)
    assert state.accum_decided_epoch == 2  # --auto-accum leaves this epoch's choice alone
    requested = sink.of(AccumChangeRequested)
    assert [(r.old, r.new, r.applies_at_epoch, r.auto) for r in requested] == [(4, ACCUM_MAX, 3, False)]
    control.set_accum(4)  # back to the current value: nothing pending any more
    steering.handle_commands()
    assert state.pending_accum is None and state.pending_accum_epoch is None


def test_the_same_request_twice_is_said_once():
    steering, _, sink, _, _ = make()
    steering.request_accum(8)
    steering.request_accum(8)
    assert len(sink.of(AccumChangeRequested)) == 1


def test_auto_accum_decides_once_per_epoch_from_its_middle_and_never_below_two():
    steering, _, sink, _, state = make(LoopState(epoch=1, accum=4))
    steering.auto_accum(1, step_in_epoch=2, steps_in_epoch=10, epochs=3)  # before the middle: nothing
    assert state.pending_accum is None
    steering.auto_accum(1, step_in_epoch=5, steps_in_epoch=10, epochs=3)
    assert state.pending_accum == 2 and sink.of(AccumChangeRequested)[-1].auto
    steering.auto_accum(16, step_in_epoch=6, steps_in_epoch=10, epochs=3)  # once per epoch
    assert state.pending_accum == 2
    last = make(LoopState(epoch=3, accum=4))[0]
    last.auto_accum(16, step_in_epoch=9, steps_in_epoch=10, epochs=3)  # no next epoch to change
    assert last.state.pending_accum is None


def test_a_pause_between_micro_steps_holds_until_resumed_and_is_not_counted_as_training_time():
    steering, control, sink, recorded, _ = make()
    control.pause()
    threading.Timer(0.3, control.resume).start()
    started = time.perf_counter()
    assert steering.between_micro_steps(last=False, window_rng={"torch": "the window's"}) is True
    assert time.perf_counter() - started >= 0.25
    assert steering.seconds_paused >= 0.25
    assert [type(e) for e in sink.events] == [Paused, Resumed]
    assert recorded.saves == []


def test_s_and_g_while_paused_save_with_the_window_rng_and_sample_at_once():
    steering, control, sink, recorded, _ = make()
    control.pause()
    control.save()
    control.sample()
    threading.Timer(0.3, control.resume).start()
    steering.between_micro_steps(last=False, window_rng="the window's RNG", done=3)
    assert recorded.saves == ["the window's RNG"]  # a resume redoes the window, as after a stop
    assert recorded.redone == [3] and steering.status()["saved_redone"] == 3  # ... and says how much of it
    assert recorded.samples == [(2, 7)]
    assert not steering.save_requested and not steering.sample_requested


def test_a_stop_abandons_the_window_even_while_paused():
    steering, control, _, _, _ = make()
    control.pause()
    threading.Timer(0.2, control.stop).start()
    assert steering.between_micro_steps(last=False, window_rng=None) is False
    assert steering.stopping()


def test_a_stop_at_the_windows_last_micro_step_still_takes_its_step():
    steering, control, _, _, _ = make()
    control.stop()
    assert steering.between_micro_steps(last=True, window_rng=None) is True
    assert steering.between_micro_steps(last=False, window_rng=None) is False


def test_save_and_sample_without_a_pause_wait_for_the_step():
    steering, control, _, recorded, _ = make()
    control.save()
    control.sample()
    assert steering.between_micro_steps(last=False, window_rng=None) is True
    assert steering.save_requested and recorded.saves == []  # the loop saves after the step
    steering.sample_if_asked()
    assert recorded.samples == [(2, 7)] and not steering.sample_requested


def test_status_is_plain_fields_for_a_viewer():
    steering, control, _, _, state = make()
    state.pending_accum = 8
    control.stop()
    assert steering.status() == {"paused": False, "accum": 4, "pending_accum": 8, "epoch": 2, "step": 7,
                                 "stopping": True, "saves": 0, "saved_step": 0, "saved_seconds": 0.0,
                                 "saved_redone": 0}


def test_a_save_asked_for_is_marked_requested_and_counted_for_viewers_a_periodic_one_is_not():
    steering, control, _, recorded, state = make()
    steering.save_requested = True  # a periodic save (the loop sets it)
    steering.save_if_asked()
    control.save()
    steering.handle_commands()
    state.step = 9
    steering.save_if_asked()
    steering.save_if_asked()  # (nothing due: nothing saved)
    assert recorded.requested == [False, True]
    status = steering.status()
    assert (status["saves"], status["saved_step"]) == (1, 9)


@pytest.mark.parametrize("decisions", [
    AgreedDecisions(paused=True, save_requested=False, pending_accum=16, pending_accum_epoch=3, accum_decided_epoch=2),
    AgreedDecisions(paused=False, save_requested=True, pending_accum=None, pending_accum_epoch=None,
                    accum_decided_epoch=0),
])
def test_agreed_decisions_travel_as_floats_and_back(decisions):
    floats = decisions.to_floats()
    assert len(floats) == AgreedDecisions.SLOTS and all(isinstance(f, float) for f in floats)
    assert AgreedDecisions.from_floats(floats) == decisions


class TwoRanks(Ranks):
    """Rank 1 of two, its collective answered as gloo would: the sum of both ranks' values, rank 0's
    given here (the real all-reduce is test_distributed's)."""

    def __init__(self, rank0_values: list[float]) -> None:
        super().__init__(Placement(rank=1, world_size=2, local_rank=1, local_world_size=2))
        self.rank0_values = rank0_values
        self.sent: list[list[float]] = []

    def agree(self, values):
        self.sent.append(list(values))
        return [a + b for a, b in zip(values, self.rank0_values)]


def test_another_rank_takes_rank_0s_decisions_and_a_stop_with_its_signal():
    decided = AgreedDecisions(paused=True, save_requested=True, pending_accum=16, pending_accum_epoch=3,
                              accum_decided_epoch=2)
    # rank 0: stop asked, its signal SIGTERM in its own slot, then its decisions
    ranks = TwoRanks([1.0, float(signal.SIGTERM), 0.0, *decided.to_floats()])
    steering, control, _, _, state = make(ranks=ranks)
    assert not steering.stopping()
    steering.agree()
    assert ranks.sent == [[0.0, 0.0, 0.0, *[0.0] * AgreedDecisions.SLOTS]]  # rank 1 decides nothing
    assert steering.stopping() and control.stop_reason == "interrupted" and control.stop_signal == signal.SIGTERM
    assert steering.paused and steering.save_requested
    assert (state.pending_accum, state.pending_accum_epoch, state.accum_decided_epoch) == (16, 3, 2)


def test_one_process_agrees_with_nobody():
    steering, control, _, _, state = make()
    control.stop()
    steering.paused = True
    steering.agree()
    assert steering.stopping() and steering.paused and state.pending_accum is None


def test_a_save_asked_for_is_said_as_a_pause_is():
    steering, control, sink, _, _ = make()
    control.save()
    steering.between_micro_steps(last=False, window_rng=None)
    said = [e.message for e in sink.of(Notice)]
    assert said == ["a checkpoint was asked for at step 7: saving after the step in progress"]
