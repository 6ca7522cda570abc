"""The latest text the model wrote: a panel on wide screens, a screen on `g` where room is short.

The engine writes a sample after each epoch's validation (``--sample-tokens``) and on `g`;
both reach ``RunView.sample``. The panel and the screen render the same text.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Static

from tui_trainer.shown_text import escaped_controls
from tui_trainer.ui.view import RunView, SampleShown
from tui_trainer.ui.widgets.base import Panel


def asked_when(sample: SampleShown) -> str:
    """Where an asked sample's step sat: as the progress panel counts it, else the run's step."""
    if sample.step_in_epoch is not None:
        return f"asked at step {sample.step_in_epoch:,}/{sample.steps_in_epoch:,}"
    return f"asked at step {sample.step:,} of the run"


def earlier_asked_sample(view: RunView) -> SampleShown | None:
    """The sample asked with `g` in the epoch whose own sample is now the latest, or None: an epoch's
    sample that comes a moment after an asked one must not take it off the screen."""
    latest, asked = view.sample, view.asked_sample
    if latest is None or latest.asked or asked is None or asked.epoch != latest.epoch:
        return None
    return asked


def sample_title(view: RunView) -> str:
    sample = view.sample
    if sample is None:
        return "sample"
    # (the epoch once: "after epoch 3" names it already); the step as the progress panel counts it
    if not sample.asked:
        when = f"after epoch {sample.epoch}"
        if earlier_asked_sample(view) is not None:
            when += " · the asked one below"
    else:
        when = f"epoch {sample.epoch} · {asked_when(sample)}"
    coming = " · a new one after this step…" if view.sample_requested else ""
    return f"sample · {when}{coming}"


def sample_text(view: RunView, note: str = "") -> Text:
    """The sample itself, or a line saying when one will come. ``note``: a dim line above it, where
    `g` cannot write a new one (the run has ended: where new text comes from)."""
    text = Text(end="")
    if note:
        text.append(note + "\n\n", style="dim")
    text.append_text(_sample_body(view))
    return text


def _sample_body(view: RunView) -> Text:
    if view.sample is not None:
        body = Text(escaped_controls(view.sample.text), no_wrap=False, end="")
        asked = earlier_asked_sample(view)
        if asked is not None:  # asked with g just before its epoch ended: still there, below
            body.append(f"\n\n── {asked_when(asked)} ──\n", style="dim")
            body.append(escaped_controls(asked.text))
        return body
    if view.ended:
        return Text("this run wrote no sample", style="dim", end="")
    if view.sample_requested:
        return Text("writing a sample now (paused)…" if view.state == "paused" else "writing a sample after this step…",
                    style="dim", end="")
    if not view.sample_tokens:
        return Text("sampling is off (--sample-tokens 0); g writes one now", style="dim", end="")
    return Text("after the first epoch (g: one now)", style="dim", end="")


class SamplePanel(Panel):
    """The panel: shown by the layout on wide screens."""

    DEFAULT_CSS = """
    SamplePanel { height: 1fr; overflow: hidden; }
    """

    def key(self, view: RunView, now: float):
        return (view.sample_version, view.sample_requested, view.sample_tokens)

    def show(self, view: RunView, now: float, **extra) -> None:
        self.border_title = sample_title(view)
        super().show(view, now, **extra)

    def build(self, view: RunView, now: float) -> Text:
        return sample_text(view)


class SamplesScreen(ModalScreen[None]):
    """The screen `g` opens where the panel has no room (80x24). The app keeps it current."""

    # Only esc closes it: the footer below it offers the app's keys, and they do what it says
    # (``app_bindings``): q stops the run (or quits once it has ended), p pauses, s saves…
    BINDINGS = [Binding("escape", "close", "close"), Binding("g", "again", "sample now")]
    OWN_KEYS = ("escape", "g")

    DEFAULT_CSS = """
    SamplesScreen { align: center middle; }
    #samples-box {
        width: 100%; max-width: 100; height: 90%;
        border: round $accent; border-title-color: $text; border-subtitle-color: $text-muted;
        background: $surface; padding: 0 1;
    }
    """

    def __init__(self, view: RunView, note: str = "", app_bindings: Sequence[Binding] = ()) -> None:
        """``app_bindings``: the app's keys, which reach it from here too. Textual ends a modal
        screen's key chain at the screen, so each is bound here to its action on the app
        (``app.stop``), whose ``check_action`` keeps deciding when it applies."""
        super().__init__()
        for binding in app_bindings:
            if binding.key not in self.OWN_KEYS:
                self._bindings.bind(binding.key, f"app.{binding.action}", binding.description, show=False)
        self._view = view
        self._note = note
        self._version: object = None

    def _version_of(self, view: RunView) -> tuple:
        return (view.sample_version, view.sample_requested, view.sample_tokens, view.ended, self._note)

    @staticmethod
    def keys_line(view: RunView) -> str:
        """Once the run has ended `g` writes no sample (the note says where they come from): not offered."""
        return "esc closes" if view.ended else "g sample now · esc closes"

    def compose(self) -> ComposeResult:
        view = self._view
        self._version = self._version_of(view)
        with VerticalScroll(id="samples-box") as box:
            box.border_title = sample_title(view)
            box.border_subtitle = self.keys_line(view)
            yield Static(sample_text(view, self._note), id="samples-text", markup=False)

    def show(self, view: RunView, note: str = "") -> None:
        """Redraw when the sample, the waiting line or the note has changed (the app calls it on each drain)."""
        self._note = note
        version = self._version_of(view)
        if version == self._version:
            return
        try:
            box, text = self.query_one("#samples-box"), self.query_one("#samples-text", Static)
        except NoMatches:
            return  # pushed but not composed yet: compose reads the same view
        self._view, self._version = view, version
        box.border_title = sample_title(view)
        box.border_subtitle = self.keys_line(view)
        text.update(sample_text(view, note))

    def action_again(self) -> None:
        self.app.action_sample()

    def action_close(self) -> None:
        self.dismiss(None)
