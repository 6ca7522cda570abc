"""The live loss chart: per-step train loss (raw and smoothed), per-epoch train and val loss.

Redrawn by the app's plot timer (a few times a second) and only when there is something
new or the widget was resized; never per step. Long runs are thinned by striding, so a
redraw costs the same at step 100 and at step 100,000.
"""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from tui_trainer.analysis.ema import BiasCorrectedEMA
from tui_trainer.ui.view import RunView

EMA_BETA = 0.9  # smoothing of the step loss (bias-corrected, like TensorBoard's slider at 0.9)
WARMUP_FRACTION = 0.1  # the first 10% of steps never set the top of the y-axis
PLOT_COLORS = {"raw": "gray", "smooth": "cyan+", "train": "blue+", "val": "orange+", "epoch": "gray"}
# The same 16 ANSI colours in Textual markup (plotext's "orange+" is ANSI 11, bright yellow), for the
# legend in the panel's title: inside the chart it would cover the early steps, where the loss is high.
LEGEND_COLORS = {"smooth": "ansi_bright_cyan", "train": "ansi_bright_blue", "val": "ansi_bright_yellow"}


def legend(smooth: bool, width: int = 0) -> str:
    """The panel's title. Where the panel is ``width`` columns wide with room to spare (80 has it), the
    step line's name says which key turns the smoothing: `m` is in no footer (a cold trial never found it)."""
    step = "train/step EMA" if smooth else "train/step"
    other = "(m: raw)" if smooth else "(m: smooth)"
    epochs = f"[{LEGEND_COLORS['train']}]●[/] train/epoch  [{LEGEND_COLORS['val']}]●[/] val/epoch"
    plain = f"loss  ━ {step} {other}  ● train/epoch  ● val/epoch"
    if len(plain) + 6 <= width:  # (the title's corner, dash and spaces)
        step = f"{step} [dim]{other}[/]"
    return f"loss  [{LEGEND_COLORS['smooth']}]━[/] {step}  {epochs}"


def y_range(values_after_warmup: list[float], all_values: list[float]) -> tuple[float, float] | None:
    """Bottom from everything shown, top from what came after the first steps; 8% margin."""
    finite_all = [v for v in all_values if math.isfinite(v)]
    finite_late = [v for v in values_after_warmup if math.isfinite(v)] or finite_all
    if not finite_all:
        return None
    low, high = min(finite_all), max(finite_late)
    # At least 5% of the loss tall: two nearly equal first steps must not fill the chart with 4.24648.
    min_span = max(0.05 * max(abs(low), abs(high)), 1e-3)
    if high - low < min_span:
        middle = (high + low) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    pad = (high - low) * 0.08
    return low - pad, high + pad


def nice_ticks(low: float, high: float, count: int) -> list[float]:
    """About ``count`` (at least 2) round values in [low, high], 1, 2, 2.5 or 5 times a power of ten
    apart. For finite bounds (``y_range`` gives only those)."""
    if not high > low:
        return [low]
    count = max(2, count)
    magnitude = 10 ** math.floor(math.log10((high - low) / count))

    def ticks(spacing: float) -> list[float]:
        first = math.ceil(low / spacing - 1e-9)
        return [round(k * spacing, 10) for k in range(first, math.floor(high / spacing + 1e-9) + 1)]

    # The round spacing whose tick count comes closest to ``count`` without going over it; else
    # the fewest above it (never none: an axis needs at least two labels to be read).
    candidates = [ticks(m * magnitude * scale) for scale in (0.1, 1, 10) for m in (1, 2, 2.5, 5)]
    fitting = [t for t in candidates if 2 <= len(t) <= count]
    if fitting:
        return max(fitting, key=len)
    return min((t for t in candidates if len(t) >= 2), key=len, default=[round((low + high) / 2, 10)])


def tick_labels(ticks: list[float]) -> list[str]:
    """As few decimals as tell the ticks apart: 1.5 2 2.5 -> 1.5 2.0 2.5; a diverged run's 5e+09."""
    if ticks and max(abs(t) for t in ticks) >= 1e5:
        for digits in range(2, 12):
            labels = [f"{t:.{digits}g}" for t in ticks]
            if len(set(labels)) == len(labels):
                return labels
    for decimals in range(0, 6):
        labels = [f"{t:.{decimals}f}" for t in ticks]
        if len(set(labels)) == len(labels) and all(abs(float(l) - t) < 1e-9 for l, t in zip(labels, ticks)):
            return labels
    return [f"{t:.3g}" for t in ticks]


def integer_ticks(low: int, high: int, count: int) -> list[int]:
    """About ``count`` round step numbers between low and high (1, 2 or 5 times a power of 10 apart)."""
    span = max(1, high - low)
    raw = span / max(1, count)
    magnitude = 10 ** max(0, math.floor(math.log10(raw))) if raw >= 1 else 1
    spacing = next((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), 10 * magnitude)
    first = math.ceil(low / spacing) * spacing
    ticks = list(range(int(first), int(high) + 1, int(spacing)))
    return ticks or [low, high]


class LossPlot(PlotextPlot):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.smooth = True
        self._ema: list[float] = []  # grows with the view's step losses: O(1) per new step
        self._ema_state = (0, BiasCorrectedEMA(EMA_BETA))  # (points folded in, the EMA)
        self._drawn: tuple | None = None
        self._view: RunView | None = None
        self._rendered: tuple | None = None  # (key, the Text plotext built)
        self.points_drawn = 0  # what the last redraw put on the chart (tests and benchmarks read it)
        self.show_axis_label = True  # off on short terminals, where every row counts
        self.border_title = legend(self.smooth, self.size.width)

    def _extend_ema(self, losses: list[float]) -> None:
        n, ema = self._ema_state
        if n > len(losses):  # a different view: start over
            self._ema, n, ema = [], 0, BiasCorrectedEMA(EMA_BETA)
        for i in range(n, len(losses)):
            smoothed = ema.update(losses[i])  # a skipped step's NaN is left out of later points
            self._ema.append(math.nan if smoothed is None else smoothed)
        self._ema_state = (len(losses), ema)

    def render(self):
        # plotext builds the whole chart each time (~10 ms): reuse it until the data, the size
        # or the theme changes. The parent's render also sets the size and theme.
        key = (self._drawn, self.size, self.app.theme)
        if self._rendered is None or self._rendered[0] != key:
            self._rendered = (key, super().render())
        return self._rendered[1]

    def on_resize(self) -> None:
        self.border_title = legend(self.smooth, self.size.width)
        if self._view is not None:
            self.redraw(self._view)  # re-thin and re-tick for the new size now, not at the next tick

    def toggle_smoothing(self, view: RunView) -> None:
        self.smooth = not self.smooth
        self.border_title = legend(self.smooth, self.size.width)  # the step line's name follows the smoothing
        self.redraw(view)

    def _limits(self, x_shown, raw_shown, ema_shown, epochs, xs) -> tuple[float, float] | None:
        """The y-range that keeps the interesting part: the first steps' high loss is not it."""
        cut = xs[int(len(xs) * WARMUP_FRACTION)] if len(xs) >= 10 else (xs[0] if xs else 0)
        late_index = [i for i, x in enumerate(x_shown) if x >= cut]
        primary = ema_shown if self.smooth else raw_shown
        raw_late = sorted(raw_shown[i] for i in late_index)
        # Every epoch point stays on the chart, the first one too: they are means, not noise.
        epoch_values = [v for p in epochs for v in (p.train_loss, p.val_loss)]
        late = [primary[i] for i in late_index] + epoch_values
        everything = list(primary) + epoch_values
        if raw_late:  # the raw cloud, less its 2% extremes on either side
            late.append(raw_late[int(0.98 * (len(raw_late) - 1))])
            everything.append(raw_late[int(0.02 * (len(raw_late) - 1))])
        return y_range(late, everything)

    def axis_label(self, view: RunView, every: int) -> str:
        """The x label; a resumed run says where it went on (it stays for the whole session)."""
        markers = "│ = end of epoch" if every == 1 else f"│ = every {every} epochs"
        if view.resumed_at_epoch is not None:
            for resumed in (f"resumed at epoch {view.resumed_at_epoch}, step {view.resumed_from_step}",
                            f"resumed at step {view.resumed_from_step}"):
                label = f"optimizer step  ({markers}; {resumed})"
                if len(label) <= self.size.width - 6:  # the y ticks take a few columns
                    return label
        return f"optimizer step  ({markers})"

    def redraw(self, view: RunView) -> bool:
        """Rebuild the figure if the data, the size or the smoothing changed. True if it did."""
        self._view = view
        key = (view.plot_version, self.size.width, self.size.height, self.smooth, self.show_axis_label,
               view.resumed_at_epoch)
        if key == self._drawn:
            return False
        self._drawn = key
        plt = self.plt
        plt.clear_figure()
        epochs = view.epoch_points
        trained = [p for p in epochs if p.epoch > 0]  # (epoch 0: the validation before training, at step 0)
        # One epoch marker per ~6 columns at most: a long run's markers would hide the curves.
        every = max(1, math.ceil(len(trained) / max(1, self.size.width // 6)))
        if self.show_axis_label:
            plt.xlabel(self.axis_label(view, every))
        xs, losses = view.step_numbers, view.step_losses
        self._extend_ema(losses)
        # Thin to about two points per braille column: slicing is C-speed and keeps the shape.
        stride = max(1, math.ceil(len(xs) / max(2 * self.size.width, 20)))
        x_shown, raw_shown = xs[::stride], losses[::stride]
        ema_shown = self._ema[::stride]
        if stride > 1 and xs:  # always end at the newest step
            x_shown, raw_shown, ema_shown = x_shown + [xs[-1]], raw_shown + [losses[-1]], ema_shown + [self._ema[-1]]
        limits = self._limits(x_shown, raw_shown, ema_shown, epochs, xs)
        for p in trained[every - 1::every]:
            plt.vline(p.step, color=PLOT_COLORS["epoch"])
        if x_shown:
            if self.smooth:
                plt.scatter(x_shown, raw_shown, marker="braille", color=PLOT_COLORS["raw"])  # a dim cloud
                plt.plot(x_shown, ema_shown, marker="braille", color=PLOT_COLORS["smooth"])
            else:
                plt.plot(x_shown, raw_shown, marker="braille", color=PLOT_COLORS["smooth"])
        # Epoch 0 (no train loss) starts the val curve where fine-tuning started from.
        finite_epochs = [p for p in epochs
                         if math.isfinite(p.val_loss) and (p.epoch == 0 or math.isfinite(p.train_loss))]
        for name, points in (("train", [p for p in finite_epochs if p.epoch > 0]), ("val", finite_epochs)):
            ex, ys = [p.step for p in points], [p.train_loss if name == "train" else p.val_loss for p in points]
            if ex:
                if len(ex) > 1:
                    plt.plot(ex, ys, marker="braille", color=PLOT_COLORS[name])
                # The epoch values themselves: a dot per epoch on top of the line, as the legend says,
                # while they stay apart (a ● is a whole cell; the markers thin out sooner).
                if len(ex) <= max(1, self.size.width // 2):
                    plt.scatter(ex, ys, marker="●", color=PLOT_COLORS[name])
        if limits is not None:
            plt.ylim(*limits)
            # Round values (1.5 2.0 2.5), about one every other row, instead of plotext's 1.69 2.09
            # 2.48: close epoch values (val 2.62 vs 2.65) fall between distinct ticks once the range
            # is narrow enough for the rows to tell them apart.
            ticks = nice_ticks(*limits, max(2, (self.size.height - 3) // 2))
            plt.yticks(ticks, tick_labels(ticks))
        if xs:
            low, high = min(xs[0], 1, *(p.step for p in finite_epochs[:1])), max(xs[-1], 2)
            plt.xlim(low, high)
            ticks = integer_ticks(low, high, max(2, self.size.width // 14))
            plt.xticks(ticks, [str(t) for t in ticks])
        else:
            plt.title("loss — waiting for the first step")
        self.points_drawn = len(x_shown) + len(finite_epochs)
        self.refresh()
        return True
