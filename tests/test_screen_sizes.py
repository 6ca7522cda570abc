"""The screen at every size: what the footer offers, what the plot keeps at 60x20, the room it
gets at 120x40, and how a long run's plot stays readable. Recorded events, the real app."""

from __future__ import annotations

import re
from dataclasses import replace

from screen import screen_text
from test_snapshots import (
    ACCUM,
    EPOCHS,
    MICRO_BATCH,
    STEPS_PER_EPOCH,
    TOKENS_PER_STEP,
    mid_epoch,
    recorded_epochs,
    started,
)

from tui_trainer.events import AccumChangeRequested, EpochEvent, RunEnded, StepEvent
from tui_trainer.ui.factory import create_replay_app
from tui_trainer.ui.widgets import DiagnosisBanner, EpochTable, LossPlot
from tui_trainer.ui.widgets.loss_plot import nice_ticks, tick_labels


async def render(app, pilot, events) -> str:
    app.feed(events)
    app.tick()
    await pilot.pause()
    app.redraw_plot()
    await pilot.pause()
    return screen_text(app)


def footer(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def ended_run() -> list:
    return [started(), *recorded_epochs(EPOCHS),
            RunEnded(reason="completed", epochs=EPOCHS, steps=EPOCHS * STEPS_PER_EPOCH,
                     tokens_seen=EPOCHS * STEPS_PER_EPOCH * TOKENS_PER_STEP, best_val_loss=1.5, best_epoch=9)]


async def test_after_the_run_ends_the_footer_offers_only_keys_that_work():
    app = create_replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        running = footer(await render(app, pilot, [started(), *recorded_epochs(2)]))
        assert all(key in running for key in ("q stop", "p pause", "accum", "s save", "? help")), running
        ended = footer(await render(app, pilot, ended_run()[-1:]))
    assert "q quit" in ended and "q stop" not in ended and "? help" in ended, ended
    assert "pause" not in ended and "accum" not in ended and "s save" not in ended, ended


async def test_at_80x24_the_footer_offers_every_key_that_works_g_included():
    app = create_replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        running = footer(await render(app, pilot, [started(), *recorded_epochs(2)]))
        ended = footer(await render(app, pilot, ended_run()[-1:]))
        await pilot.press("g")  # not offered after the end, yet it still says where new text comes from
        await pilot.pause()
        said = screen_text(app)  # (a line in the samples screen, not a toast over it)
    assert all(key in running for key in ("q stop", "p pause", "accum", "s save", "g sample", "? help")), running
    assert "palette" in running, running  # (and the palette hint still fits)
    assert "g sample" not in ended, ended
    assert "new text: tui-trainer sample" in said, said


async def test_60x20_keeps_every_key_the_legend_the_axis_label_and_a_plot_with_a_pending_change():
    app = create_replay_app()
    async with app.run_test(size=(60, 20)) as pilot:
        text = await render(app, pilot, [started(), *recorded_epochs(3), *mid_epoch(4, 20, 5)])
        plot_rows = app.query_one(LossPlot).size.height
        text_pending = await render(app, pilot, [AccumChangeRequested(old=8, new=16, epoch=4, step=200,
                                                                      applies_at_epoch=5)])
        pending_rows = app.query_one(LossPlot).size.height
    for words in ("s save", "g sample", "? help", "q stop", "p pause"):
        assert words in footer(text), footer(text)
    assert "train/epoch" in text and "val/epoch" in text  # the legend, in the panel's title
    assert "optimizer step" in text  # the x-axis label
    assert "accum 8 -> 16 at next epoch" in text_pending
    assert pending_rows == plot_rows >= 9, (plot_rows, pending_rows)


async def test_120x40_gives_the_plot_more_room_than_80x24_and_keeps_the_banner_short():
    widths = {}
    for size in ((80, 24), (120, 40)):
        app = create_replay_app()
        async with app.run_test(size=size) as pilot:
            text = await render(app, pilot, [started(), *mid_epoch(1, 20, 3)])
            widths[size] = app.query_one(LossPlot).size.width
            if size == (120, 40):
                table = app.query_one(EpochTable)
                assert table.display
                empty_table = text
                await render(app, pilot, recorded_epochs(7, overfit_from=5)[-400:])
                banner_rows = app.query_one(DiagnosisBanner).size.height
    assert widths[(120, 40)] > widths[(80, 24)], widths
    # The empty table says what will come, in words that are no data row.
    assert "(a row after each epoch)" in empty_table
    assert banner_rows <= 3, banner_rows


def epochs_of(count: int, steps_per_epoch: int = 5) -> list:
    """A long run: ``count`` short epochs, losses drifting down."""
    events = [started()]
    step = 0
    for epoch in range(1, count + 1):
        for k in range(1, steps_per_epoch + 1):
            step += 1
            events.append(StepEvent(epoch=epoch, step=step, step_in_epoch=k, steps_in_epoch=steps_per_epoch,
                                    micro_steps=ACCUM, accum=ACCUM, micro_batch=MICRO_BATCH,
                                    effective_batch=MICRO_BATCH * ACCUM, tokens=TOKENS_PER_STEP,
                                    loss=3.0 - step / 1000, lr=1e-3, grad_norm=0.5,
                                    tokens_seen=step * TOKENS_PER_STEP, tokens_per_s=20_000.0))
        events.append(EpochEvent(epoch=epoch, epochs=count, train_loss=2.9 - epoch / 100,
                                 val_loss=2.95 - epoch / 120, accum=ACCUM, effective_batch=MICRO_BATCH * ACCUM,
                                 tokens_seen=step * TOKENS_PER_STEP, seconds=10.0))
    return events


async def test_a_long_run_keeps_its_epoch_points_when_the_markers_thin_out():
    app = create_replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        text = await render(app, pilot, epochs_of(30))
    assert "every 2 epochs" in text or "every 3 epochs" in text, text  # the markers thinned out
    assert text.count("●") > 20, text  # ... the points did not (3 in the legend)


async def test_a_six_epoch_run_gets_several_x_ticks_at_every_size():
    for size in ((60, 20), (80, 24), (120, 40), (200, 60)):
        app = create_replay_app()
        async with app.run_test(size=size) as pilot:
            text = await render(app, pilot, epochs_of(6, steps_per_epoch=25))
        lines = text.splitlines()
        axis = next(i for i, line in enumerate(lines) if "└" in line)
        tick_row = lines[axis + 1].split("│")[1] if "│" in lines[axis + 1] else lines[axis + 1]
        assert len(re.findall(r"\d+", tick_row)) >= 3, (size, tick_row)


def test_close_values_get_ticks_fine_enough_to_tell_them_apart():
    # An 80x24 plot is ~13 rows: about 5 ticks. Over a narrow range they are 0.05 apart.
    ticks = nice_ticks(2.55, 2.75, (13 - 3) // 2)
    labels = tick_labels(ticks)
    assert labels == ["2.55", "2.60", "2.65", "2.70", "2.75"]
    assert any(t <= 2.62 for t in ticks) and any(2.62 < t <= 2.65 for t in ticks)  # 2.62 and 2.65 fall apart


async def test_the_palette_offers_what_works_in_truthful_words():
    app = create_replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await render(app, pilot, [started(), *recorded_epochs(2)])
        running = {command.title: command.help for command in app.get_system_commands(app.screen)}
        await render(app, pilot, ended_run()[-1:])
        ended = {command.title: command.help for command in app.get_system_commands(app.screen)}
    assert not {"Quit", "Keys", "Screenshot"} & (running.keys() | ended.keys())
    assert {"Stop training", "Pause / resume training", "Save checkpoint", "Accumulation x2"} <= running.keys()
    assert "Close the app" in ended and not {"Pause / resume training", "Save checkpoint"} & ended.keys()


async def test_a_resumed_run_says_where_it_went_on_for_the_whole_session():
    app = create_replay_app()
    resumed = replace(started(), resumed_from_step=2 * STEPS_PER_EPOCH, start_epoch=3,
                      tokens_seen=2 * STEPS_PER_EPOCH * TOKENS_PER_STEP)
    async with app.run_test(size=(80, 24)) as pilot:
        # As create_app does: the recorded history first, then the engine's own events.
        text = await render(app, pilot, [*recorded_epochs(2), resumed, *mid_epoch(3, 30, 2)])
    assert "resumed at epoch 3, step 120" in text, text


async def test_shrinking_to_60_columns_keeps_help_in_the_footer():
    app = create_replay_app()
    async with app.run_test(size=(100, 30)) as pilot:
        wide = footer(await render(app, pilot, [started(), *recorded_epochs(2)]))
        await pilot.resize_terminal(60, 20)
        await pilot.pause()
        narrow = footer(await render(app, pilot, []))
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        wide_again = footer(await render(app, pilot, []))
    assert "palette" in wide and "palette" in wide_again, (wide, wide_again)
    assert "? help" in narrow and "s save" in narrow and "palette" not in narrow, narrow
