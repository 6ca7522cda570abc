"""The latest verdict on the loss curves, its remedy, the val-rise warning, and how the run ended."""

from __future__ import annotations

import textwrap

from rich.text import Text

from tui_trainer.analysis.diagnosis import KINDS
from tui_trainer.ui import format as fmt
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.base import Panel

FRAME = 4  # the banner's border and padding: a line's room is the width less this
# The run's start notes take the banner's rows until the first diagnosis: at most this many, and no more
# than the screen's height less this (60x20: 4, so the plot keeps its rows), the rest in `?` help.
NOTE_ROWS = 8
NOT_NOTES = 16


class DiagnosisBanner(Panel):
    AUTO_HEIGHT = True
    COMPONENT_CLASSES = {f"diagnosis--{kind}" for kind in KINDS} | {
        "diagnosis--dim", "diagnosis--warning", "diagnosis--end"}

    DEFAULT_CSS = """
    DiagnosisBanner { height: auto; }
    """

    def key(self, view: RunView, now: float):
        return (view.diagnosis, view.diagnosis_reason, view.remedy, view.val_rise_warning, view.best_val_loss,
                view.best_epoch, view.epochs_without_improvement, view.end_reason, view.end_message,
                view.started, view.checkpoint_error, view.notes)

    def show(self, view: RunView, now: float, **extra) -> None:
        for kind in KINDS:
            self.set_class(view.diagnosis == kind, f"-{kind}")
        self.set_class(view.diagnosis is None, "-waiting")
        super().show(view, now, **extra)

    def build(self, view: RunView, now: float) -> Text:
        dim = self.get_component_rich_style("diagnosis--dim")
        text = Text(end="")
        if view.diagnosis is None and view.notes and not view.ended:
            self.append_notes(text, view.notes)
        elif view.diagnosis is None and view.ended:  # (no promise of one: it will not come)
            how = "stopped" if view.end_reason == "interrupted" else "ended"
            text.append(f"● no diagnosis: {how} before its first validation", dim)  # (one row at 60 columns)
        elif view.diagnosis is None:
            text.append("● diagnosis ", dim)
            text.append("appears after the first epoch's validation", dim)
        else:
            kind = view.diagnosis if view.diagnosis in KINDS else "unstable"
            room = (self.size.width or 80) - FRAME
            text.append(f"● {view.diagnosis}", self.get_component_rich_style(f"diagnosis--{kind}"))
            if view.diagnosis_reason:  # (wraps as the remedy does: at 60 columns a row more, not a cut reason)
                text.append(f"  {view.diagnosis_reason}")
            text.append("\n")
            remedy = f"remedy: {view.remedy or '—'}"
            text.append("remedy: ", dim)
            text.append(view.remedy or "—")
            best = self.best_note(view)
            # the best-val note joins the remedy only when both fit on one line (the overfitting
            # reason cites the best epoch itself)
            if best and len(remedy) + 3 + len(best) <= room:
                text.append(f"   {best}", dim)
        if view.val_rise_warning and not view.ended:  # once over, the plot shows it and rows go to the ending
            text.append("\n")
            text.append("▲ ", self.get_component_rich_style("diagnosis--warning"))
            text.append(view.val_rise_warning, self.get_component_rich_style("diagnosis--warning"))
        if view.checkpoint_error and view.end_reason in (None, "completed", "early_stop"):
            # Until a save works again: the toast goes, this stays (the final one waits for `s`).
            why = view.checkpoint_error.rsplit(": ", 1)[-1]
            text.append("\n")
            text.append(f"✖ checkpoint not saved ({why}): free space, then s retries",
                        self.get_component_rich_style("diagnosis--warning"))
        ending = self.ending(view, getattr(self.app, "Q_WORDS", "quit") if self.is_attached else "quit")
        if ending:
            text.append("\n")
            text.append(ending, self.get_component_rich_style("diagnosis--end"))
        return text

    def append_notes(self, text: Text, notes: tuple[str, ...]) -> None:
        """The run line's notes (a busy machine, bf16 on a CPU, a resume's overrides) where the
        diagnosis will be: a toast covered the stats for seconds (a cold trial); here they cover
        nothing, and the first diagnosis takes the rows back (`?` lists them). Whole notes while they
        fit; where some are left out, the last row says how many (a cut note ends in "…")."""
        dim = self.get_component_rich_style("diagnosis--dim")
        room = max(20, (self.size.width or 80) - FRAME)
        height = self.app.size.height if self.is_attached else 24
        rows = max(2, min(NOTE_ROWS, height - NOT_NOTES))
        text.append("● notes ", dim)
        text.append("until the first diagnosis; ? lists them"[:room - 8], dim)
        wrapped = [textwrap.wrap(note, room, initial_indent="• ", subsequent_indent="  ") for note in notes]
        budget = rows - 1
        lines: list[str] = []
        left_out = 0
        for i, note in enumerate(wrapped):
            if sum(map(len, wrapped[i:])) <= budget - len(lines):  # the rest all fit
                lines += [line for rest in wrapped[i:] for line in rest]
                break
            room_rows = budget - len(lines) - (i < len(wrapped) - 1)  # (a row for "+N more" where notes follow)
            if len(note) <= room_rows:
                lines += note
                continue
            if room_rows > 0 and not lines:  # the first note, cut to its rows
                lines += note[:room_rows]
                lines[-1] = lines[-1][:room - 1].rstrip() + "…"
                i += 1
            left_out = len(wrapped) - i
            break
        for line in lines:
            text.append("\n")
            text.append(line)
        if left_out:
            text.append("\n")
            text.append(f"+{left_out} more: ? lists them"[:room], dim)

    @staticmethod
    def best_note(view: RunView) -> str:
        if view.best_epoch is None or view.end_reason == "early_stop":  # the ending line says it then
            return ""
        note = f"best val {fmt.loss(view.best_val_loss)} @ epoch {view.best_epoch}"
        if view.epochs_without_improvement:
            note += f", {view.epochs_without_improvement} since"
        return note

    @staticmethod
    def ending(view: RunView, q_words: str = "quit") -> str:
        """How the run ended; ``q_words``: what q does in this app (the viewer's closes it)."""
        if view.end_reason == "completed" and view.last_epoch_share is not None:  # --time-budget: its words
            return f"■ {view.end_message or 'budget spent'} — press q to {q_words}"
        if view.end_reason == "completed":
            return f"■ finished {'the' if view.epochs == 1 else 'all'} {fmt.plural(view.epochs, 'epoch')} — press q to {q_words}"
        if view.end_reason == "early_stop":
            return (f"■ early stop: best weights (epoch {view.best_epoch}, val {fmt.loss(view.best_val_loss)}) "
                    f"kept — press q to {q_words}")
        if view.end_reason == "interrupted":
            saved = " — checkpoint saved" if view.checkpoint_error is None else ""  # the message says why not
            return f"■ {view.end_message or 'stopped'}{saved}"
        return ""  # errors get their own panel
