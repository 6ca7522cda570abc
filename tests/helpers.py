"""What many tests share: the tiny model (as flags and as a config), a run helper, one scripted sink
that acts at given steps, and the tmux / port / wait helpers. Tests import from here, not from
conftest (conftest holds the fixtures)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tui_trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from tui_trainer.events import ListSink, StepEvent

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "datasets" / "tinyshakespeare.txt"

# The tiny model on the command line: a few thousand parameters, one thread, seconds a run. Each test
# adds its own batch limits and epochs: `[*TINY_MODEL, "--limit-train-batches", "2", ...]`.
TINY_MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
              "--accum", "2", "--threads", "1"]


def tiny_flags(train_batches: int | None = None, val_batches: int | None = None, *more: str) -> list[str]:
    """``TINY_MODEL`` with its batch limits (left out when None) and any further flags."""
    flags = list(TINY_MODEL)
    if train_batches is not None:
        flags += ["--limit-train-batches", str(train_batches)]
    if val_batches is not None:
        flags += ["--limit-val-batches", str(val_batches)]
    return flags + list(more)


def tiny_config(data_path: Path | str, run_dir: Path | str, **train: object) -> RunConfig:
    """The same tiny model as a config, on a short run: seconds, not minutes. In fp32 unless asked
    otherwise: the exactness tests (accumulation, trajectories, resume) are stated for fp32."""
    model = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, dropout=0.0)
    defaults = dict(epochs=2, micro_batch=4, accum=2, threads=1, patience=0, device="cpu", precision="fp32")
    defaults.update(train)
    return RunConfig(model=model, data=DataConfig(path=str(data_path), limit_val_batches=4),
                     optim=OptimConfig(lr=3e-3), train=TrainConfig(**defaults), run_dir=str(run_dir))


def with_limits(cfg: RunConfig, train_batches: int | None, val_batches: int | None = 4) -> RunConfig:
    return cfg.replace(data=replace(cfg.data, limit_train_batches=train_batches, limit_val_batches=val_batches))


# -- a run in this process ---------------------------------------------------------------------------

class ScriptedSink(ListSink):
    """Collects every event and, when an event of type ``on`` (a ``StepEvent`` unless told) reports
    one of the script's steps, calls that step's action with the trainer — once. ``when`` narrows
    the trigger further (say, only the first micro-step of a step). What "the user pressed a key at
    step N" looks like in a test:

        sink = ScriptedSink({3: lambda trainer: trainer.control.set_accum(4)})
        trainer, sink, end = train(cfg, sink)
    """

    def __init__(self, script: dict[int, Callable[[Any], None]] | None = None, *, on: type = StepEvent,
                 when: Callable[[Any], bool] | None = None) -> None:
        super().__init__()
        self.script = dict(script or {})
        self.on, self.when = on, when
        self.trainer: Any = None
        self.acted: list[int] = []  # the steps whose action ran, in order

    def emit(self, event) -> None:
        super().emit(event)
        if isinstance(event, self.on) and event.step in self.script and (self.when is None or self.when(event)):
            self.acted.append(event.step)
            self.script.pop(event.step)(self.trainer)


def stop(reason: str = "interrupted") -> Callable[[Any], None]:
    """A script action: ask the trainer to stop, as `q` or a signal does."""
    return lambda trainer: trainer.control.stop(reason)


def train(cfg: RunConfig, sink: ListSink | None = None, check: bool = True, **kwargs: Any):
    """Build a ``Trainer`` over ``sink`` (a fresh ``ListSink`` unless given; a ``ScriptedSink`` gets the
    trainer), run it and return ``(trainer, sink, end)``. ``check``: the run must not have failed."""
    from tui_trainer.engine.loop import Trainer

    sink = sink if sink is not None else ListSink()
    trainer = Trainer(cfg, sink, **kwargs)
    if isinstance(sink, ScriptedSink):
        sink.trainer = trainer
    end = trainer.run()
    if check:
        assert trainer.error is None, trainer.error
    return trainer, sink, end


# -- processes, ports, terminals ---------------------------------------------------------------------

def nan_loss_at(trainer, steps: set[int] | frozenset[int]) -> None:
    """Make the training loss NaN in the given optimizer steps (1-based, the run's count), from
    outside: the model's forward is wrapped, so the window's loss and its gradient are non-finite
    exactly as a diverging model's would be. Validation and sampling pass through untouched."""
    model = trainer.model
    forward = model.forward

    def poisoned(idx, targets=None):
        out = forward(idx, targets)
        if targets is not None and model.training and trainer.state.step + 1 in steps:
            return out * float("nan")
        return out

    model.forward = poisoned


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], Any], seconds: float, what: str,
               describe: Callable[[], str] | None = None) -> None:
    """Poll ``condition`` every 0.1 s; after ``seconds`` fail saying ``what`` (and ``describe()``: a screen, a log)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{describe() if describe else ''}"
        time.sleep(0.1)


def tmux(server: str, *args: str) -> subprocess.CompletedProcess:
    """A tmux command on its own server (``-L``), so tests never touch the user's sessions."""
    return subprocess.run(["tmux", "-L", server, *args], capture_output=True, text=True, timeout=30)


def tmux_screen(server: str, pane: str) -> str:
    return tmux(server, "capture-pane", "-p", "-t", pane).stdout


def has_tmux() -> bool:
    return subprocess.run(["which", "tmux"], capture_output=True).returncode == 0
