"""The keys and commands of the two apps, and when each is available — written once.

``TrainerApp`` (app.py) and ``ViewerApp`` (viewer.py) each take a ``CommandTable``: its key
bindings (the footer), the help screen's key list, the command palette's entries, and the rule
for each action (``available``). Their ``check_action`` asks the rule, so the footer, the help
and the palette always agree with what a key does at that moment: a key that would do nothing
is not offered. A key can still say why it does nothing without being offered: a second, hidden
binding on it whose rule is the first's opposite (``g`` after the run, ``sample_unavailable``: a
silent key reads as broken). After the run, where it wrote a sample, ``g`` is offered again as
``last_sample`` (the samples screen with the last one), and the hidden twin gives way to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

# When an action is available.
ALWAYS = "always"
LIVE = "while the run lives"  # not ended yet (this app's q stops it)
ENDED = "once the run has ended"
STEERABLE = "while this app can steer a live run"  # the trainer's own engine, or a viewer's control socket
UNSTEERABLE = "while this app cannot steer a run"  # a run over, or a viewer with no control socket
LAST_SAMPLE = "once the run has ended, where it wrote a sample"
UNSTEERABLE_UNSAMPLED = "while this app cannot steer a run, unless LAST_SAMPLE holds"

# "+ - accum x2 /2": one footer item for the pair, so every key still fits at 60 columns.
ACCUM_KEYS = Binding.Group("accum x2 /2", compact=True)

STEERING_RULES = {"accum_up": STEERABLE, "accum_down": STEERABLE, "pause": STEERABLE, "save": STEERABLE,
                  "sample": STEERABLE, "sample_unavailable": UNSTEERABLE_UNSAMPLED, "last_sample": LAST_SAMPLE}


@dataclass(frozen=True)
class PaletteCommand:
    action: str
    title: str
    help: str  # the palette's second line; the key follows it in brackets
    key: str
    when: str | None = None  # offered then (ALWAYS, LIVE, ...); None: whenever its action is available


@dataclass(frozen=True)
class HelpKey:
    key: str  # as the help shows it ("+ ]", "^c")
    words: str
    action: str | None = None  # listed while this action is available (None: always)


@dataclass(frozen=True)
class CommandTable:
    bindings: tuple[Binding, ...]
    keys: tuple[HelpKey, ...]  # laid out row by row in as many columns as fit (3 at 80)
    palette: tuple[PaletteCommand, ...]
    rules: dict[str, str]  # action -> when it is available; an action not named here: always

    def available(self, action: str, *, ended: bool, steerable: bool, sampled: bool = False) -> bool:
        """``sampled``: the run has written a text sample (there is a last one to show)."""
        return self._holds(self.rules.get(action, ALWAYS), ended=ended, steerable=steerable, sampled=sampled)

    @staticmethod
    def _holds(when: str, *, ended: bool, steerable: bool, sampled: bool = False) -> bool:
        last_sample = ended and sampled
        return {ALWAYS: True, LIVE: not ended, ENDED: ended, STEERABLE: steerable, UNSTEERABLE: not steerable,
                LAST_SAMPLE: last_sample, UNSTEERABLE_UNSAMPLED: not steerable and not last_sample}[when]

    def key_runs(self, action: str, *, ended: bool, steerable: bool, sampled: bool = False) -> bool:
        """check_action's answer: False hides the binding and ignores its key."""
        return self.available(action, ended=ended, steerable=steerable, sampled=sampled)

    def help_keys(self, *, ended: bool, steerable: bool, sampled: bool = False) -> list[HelpKey]:
        return [key for key in self.keys
                if key.action is None or self.available(key.action, ended=ended, steerable=steerable, sampled=sampled)]

    def palette_now(self, *, ended: bool, steerable: bool, sampled: bool = False) -> list[PaletteCommand]:
        return [command for command in self.palette
                if self.available(command.action, ended=ended, steerable=steerable, sampled=sampled)
                and (command.when is None or self._holds(command.when, ended=ended, steerable=steerable))]


def _shared_bindings(sample_in_footer: bool) -> tuple[Binding, ...]:
    """The keys both apps share. ``g`` is in the trainer's footer while it works (it fits at 80
    columns, and at 60 compact); a viewer's own keys leave it no room (the help and palette name it).
    Its hidden twin runs where it does not work, to say why."""
    return (
        Binding("p", "pause", "pause/resume"),
        Binding("plus,right_square_bracket,equals_sign", "accum_up", "accum x2", key_display="+", group=ACCUM_KEYS),
        Binding("minus,left_square_bracket", "accum_down", "accum /2", key_display="-", group=ACCUM_KEYS),
        Binding("s", "save", "save"),
        Binding("g", "sample", "sample", show=sample_in_footer, tooltip="write a text sample from the current weights"),
        Binding("g", "last_sample", "last sample", tooltip="the run's last text sample"),
        Binding("g", "sample_unavailable", "sample", show=False),
        Binding("m", "smoothing", "smooth", show=False),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("ctrl+c", "interrupt", "interrupt", show=False, priority=True),
    )

_SHARED_PALETTE = (
    PaletteCommand("accum_up", "Accumulation x2", "double accum at the next epoch", "+"),
    PaletteCommand("accum_down", "Accumulation /2", "halve accum at the next epoch", "-"),
    PaletteCommand("pause", "Pause / resume training", "the engine waits between micro-steps", "p"),
    PaletteCommand("save", "Save checkpoint", "save latest.pt after the current step", "s"),
    PaletteCommand("sample", "Sample text", "write a sample from the current weights after this step", "g"),
    PaletteCommand("last_sample", "Last text sample", "the run's last; new text: tui-trainer sample", "g"),
)

TRAINER = CommandTable(
    bindings=(
        # Two bindings on q, one shown at a time (see `rules`): while the run lives q stops it
        # (it saves first); once it has ended there is nothing to stop and q just quits.
        Binding("q", "stop", "stop", tooltip="finish the micro-step, save, exit"),
        Binding("q", "close_app", "quit", tooltip="the run is over and saved"),
        *_shared_bindings(sample_in_footer=True),
    ),
    keys=(
        HelpKey("+ ]", "accum x2 next epoch", "accum_up"), HelpKey("p", "pause / resume", "pause"),
        HelpKey("q", "stop: save, exit", "stop"), HelpKey("q", "quit", "close_app"),
        HelpKey("- [", "accum /2 next epoch", "accum_down"), HelpKey("s", "save checkpoint now", "save"),
        HelpKey("q q", "close at once", "stop"),
        HelpKey("m", "smooth / raw loss"), HelpKey("^p", "command palette"),
        HelpKey("^c", "stop, exit code 130", "stop"), HelpKey("^c", "quit", "close_app"),
        HelpKey("g", "text sample now", "sample"), HelpKey("g", "last text sample", "last_sample"),
        HelpKey("?", "this help"), HelpKey("esc", "close this help"),
    ),
    palette=(
        *_SHARED_PALETTE,
        PaletteCommand("stop", "Stop training", "finish the micro-step, save and exit", "q"),
        PaletteCommand("close_app", "Close the app", "the run is over and saved", "q"),
        PaletteCommand("smoothing", "Toggle loss smoothing", "EMA or raw step loss", "m"),
        PaletteCommand("help", "Help", "keys, gradient accumulation, diagnoses", "?"),
    ),
    rules={**STEERING_RULES, "stop": LIVE, "close_app": ENDED},
)

VIEWER = CommandTable(
    bindings=(
        # `q close` beside `^x stop run` says which one ends the run; every key fits from 64 columns,
        # and at 60 the last, `? help`, gives way (^x came last, and was cut below 72, when the viewer
        # inherited the trainer's binding order; the help and the palette still say "close viewer")
        Binding("q", "close_app", "close", tooltip="close this viewer; the run goes on"),
        Binding("ctrl+x", "stop_run", "stop run", tooltip="stop the run itself (asks first)"),
        *_shared_bindings(sample_in_footer=False),
    ),
    keys=(
        HelpKey("+ ]", "accum x2 next epoch", "accum_up"), HelpKey("p", "pause / resume", "pause"),
        HelpKey("q", "close viewer"),
        HelpKey("- [", "accum /2 next epoch", "accum_down"), HelpKey("s", "save checkpoint now", "save"),
        HelpKey("^x", "stop the run (asks)", "stop_run"),
        HelpKey("m", "smooth / raw loss"), HelpKey("^p", "command palette"), HelpKey("^c", "close viewer"),
        HelpKey("g", "text sample now", "sample"), HelpKey("g", "last text sample", "last_sample"),
        HelpKey("?", "this help"), HelpKey("esc", "close this help"),
    ),
    palette=(
        *_SHARED_PALETTE,
        PaletteCommand("stop_run", "Stop the run", "it finishes its micro-step and saves; asks first", "ctrl+x"),
        # (one entry at a time: "the run goes on" is no longer true once it has ended)
        PaletteCommand("close_app", "Close the viewer", "the run goes on", "q", when=LIVE),
        PaletteCommand("close_app", "Close the viewer", "the run is over; its files stay", "q", when=ENDED),
        PaletteCommand("smoothing", "Toggle loss smoothing", "EMA or raw step loss", "m"),
        PaletteCommand("help", "Help", "keys, gradient accumulation, diagnoses", "?"),
    ),
    rules={**STEERING_RULES, "stop_run": STEERABLE},
)

# `tui-trainer view RUN_A RUN_B` (compare.py): it reads only, so its keys are few; `?` opens the same
# help as the other screens (what accumulation and the effective batch are is the question it answers).
COMPARE = CommandTable(
    bindings=(
        Binding("q", "quit", "close"),
        Binding("question_mark", "help", "help", key_display="?"),
    ),
    keys=(HelpKey("q", "close"), HelpKey("^p", "command palette"), HelpKey("?", "this help"),
          HelpKey("esc", "close this help")),
    palette=(),
    rules={},
)
