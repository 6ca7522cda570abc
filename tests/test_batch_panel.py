"""The batch panel in the real app (Pilot, recorded events): the effective batch in words, the
noise scale's suggestion once it settles, and an --auto-accum change a key press overrides."""

from __future__ import annotations

import re
from dataclasses import replace

from screen import screen_text
from test_snapshots import mid_epoch, recorded_epochs, replay, started, with_noise_scale

from tui_trainer.events import AccumChangeRequested


def squashed(app) -> str:
    return re.sub(r" +", " ", screen_text(app))


async def shown(events: list, size=(80, 24), press: tuple[str, ...] = ()) -> str:
    app, run_before = replay(events)
    async with app.run_test(size=size) as pilot:
        await run_before(pilot)
        for key in press:
            await pilot.press(key)
        app.tick()
        await pilot.pause()
        return squashed(app)


async def test_the_settled_noise_scale_and_its_suggestion_are_on_the_80x24_screen():
    text = await shown(with_noise_scale([started(), *recorded_epochs(3), *mid_epoch(4, 20, 5)]))
    assert "effective batch 128 = micro-batch 16 x accum 8 (x 1 process)" in text
    assert "noise scale ~ 310 seq -> suggests accum 16" in text  # 150 + 0.8 x step 200


async def test_before_it_settles_and_without_it_the_panel_says_so():
    measuring = await shown(with_noise_scale([started(), *recorded_epochs(1)], settle_at_step=10**6))
    assert "noise scale: measuring" in measuring
    one = replace(started(), accum=1, noise_scale=True)
    assert "noise scale: needs accum 2 or more" in await shown([one])
    off = await shown([started(), *recorded_epochs(1)])  # a run with --no-noise-scale
    assert "effective batch 128" in off and "noise" not in off


async def test_where_the_noise_scale_can_never_settle_the_panel_says_why_instead_of_measuring():
    from tui_trainer.events import RunEnded

    # An epoch of one micro-batch (4 sequences, micro-batch 4): every window has one, no estimate ever.
    one = replace(started(), accum=2, micro_batch=4, train_examples=4, noise_scale=True)
    text = await shown([one])
    assert "noise scale: needs 2+ micro-batches a step (an epoch has 1)" in text and "noise scale: measuring" not in text
    # One step of 8 micro-batches an epoch, 10 epochs: 10 estimates, and 20 are needed before it shows.
    short = replace(started(), train_examples=8 * 16, noise_scale=True)
    text = await shown([short])
    assert "noise scale: needs 20 steps of 2+ micro-batches; this run has 10" in text, text
    # Enough steps, but the run ended before it settled: no spinner after the end.
    ended = RunEnded(reason="interrupted", epochs=1, steps=60, tokens_seen=60 * 16 * 8 * 128, best_val_loss=2.0,
                     best_epoch=1)
    text = await shown([*with_noise_scale([started(), *recorded_epochs(1)], settle_at_step=10**6), ended])
    assert "noise scale: not settled when the run ended" in text and "noise scale: measuring" not in text, text


async def test_an_auto_accum_change_shares_the_line_and_a_key_press_overrides_it():
    events = with_noise_scale([started(), *recorded_epochs(3), *mid_epoch(4, 20, 5)])
    events.append(AccumChangeRequested(old=8, new=16, epoch=4, step=200, applies_at_epoch=5, auto=True))
    text = await shown(events)
    assert "accum 8 -> 16 at next epoch (auto) · noise ~ 310 seq -> accum 16" in text
    overridden = await shown(events, press=("plus",))  # the user's choice: 32, not the suggestion
    assert "accum 8 -> 32 at next epoch" in overridden and "(auto)" not in overridden
    wide = await shown(events, size=(150, 40))  # room for the long forms, on two lines if need be
    assert "accum 8 -> 16 at next epoch (auto)" in wide and "noise scale ~ 310 seq -> suggests accum 16" in wide


async def test_a_noise_scale_not_yet_known_well_enough_suggests_nothing():
    from dataclasses import replace as replaced

    from tui_trainer.events import StepEvent

    def with_error(events, error):
        return [replaced(e, noise_scale_error=error) if isinstance(e, StepEvent) and e.noise_scale is not None
                else e for e in events]

    base = with_noise_scale([started(), *recorded_epochs(1)], settle_at_step=10)
    unsure = await shown(with_error(base, 0.6))
    assert "settling" in unsure and "suggests accum" not in unsure and "±60%" in unsure
    sure = await shown(with_error(base, 0.2))
    assert "±20% -> suggests accum" in sure


async def test_the_last_steps_peak_memory_shows_against_the_budget_and_only_with_one():
    from tui_trainer.events import StepEvent

    steps = [e if not isinstance(e, StepEvent) else replace(e, peak_memory=1_300_000_000)
             for e in [*recorded_epochs(1), *mid_epoch(2, 5, 2)]]
    text = await shown([replace(started(), memory_budget=6_000_000_000), *steps], size=(100, 30))
    assert "memory 1.3 / 6.0 GB" in text
    assert "memory 1.3" not in await shown([started(), *steps], size=(100, 30))  # a split given by hand: no bar


async def test_a_busy_machine_keeps_a_mark_on_the_status_line_after_its_note_has_gone():
    note = ("the machine is busy: other processes use ~2.0 of its 2 cores while this run starts 2 threads; "
            "--threads 1 leaves them their cores")
    busy = await shown([replace(started(), notes=(note,)), *recorded_epochs(1)])
    assert "busy: try --threads 1" in busy.split("\n")[0]
    calm = await shown([started(), *recorded_epochs(1)])
    assert "busy" not in calm.split("\n")[0]


async def test_a_wider_screen_never_drops_the_noise_scales_error():
    """At 120x40 the batch panel sits beside the plot, narrower than at 80x24: its shorter form must
    keep the ± figure (a cold newcomer saw it at 80x24 and lost it at 120x40)."""
    from dataclasses import replace as replaced

    from tui_trainer.events import StepEvent

    events = [replaced(e, noise_scale_error=0.2) if isinstance(e, StepEvent) and e.noise_scale is not None else e
              for e in with_noise_scale([started(), *recorded_epochs(3), *mid_epoch(4, 20, 5)])]
    for size in [(80, 24), (100, 30), (120, 40), (150, 40), (200, 50)]:
        text = await shown(events, size=size)
        assert "±20%" in text and "accum 16" in text, (size, text)
