"""Every name a run dir may hold, in one place: its writers, its readers and ownership.py (which
must know all of them to refuse a folder that is not ours) take them from here.

A run dir looks like this::

    RUN_DIR/
      .tui-trainer-run         the ownership marker (written first; removed last)
      .lock                    flock'd by the one process training here; describes it (lock.py)
      control.sock             the live run's command socket (control_socket.py)
      config.json              the resolved config, vocabulary and data hash (lifecycle.py)
      metrics.jsonl            one JSON record per line, appended as the run goes (metrics.py)
      metrics.set-aside.jsonl  lines a resume found damaged, kept rather than deleted (reader.py)
      tokenizer.json           a BPE run's tokenizer (data/tokenizer.py writes it)
      error.log                the traceback of a run that crashed (engine/loop.py)
      checkpoints/latest.pt    where a resume continues (checkpoints.py)
      checkpoints/best.pt      the weights of the best validation loss
      tensorboard/             event files (train --tensorboard, export --tensorboard)
"""

from __future__ import annotations

MARKER_FILE = ".tui-trainer-run"
LOCK_FILE = ".lock"
SOCKET_FILE = "control.sock"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SET_ASIDE_FILE = "metrics.set-aside.jsonl"
TOKENIZER_FILE = "tokenizer.json"  # (data/tokenizer.py spells it too: the data layer may not import rundir/)
ERROR_LOG = "error.log"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_KINDS = ("latest", "best")
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_EVENTS = "events.out.tfevents.*"  # (the glob of the files SummaryWriter writes)


def temp_name(name: str, tag: str = "tmp") -> str:
    """The hidden name a file is written under before it is renamed into place."""
    return f".{name}.{tag}"


def checkpoint_name(kind: str) -> str:
    return f"{kind}.pt"


# Top-level files a run writes (the marker last: removing a run takes it last).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SET_ASIDE_FILE, ERROR_LOG, TOKENIZER_FILE, MARKER_FILE)
TEMP_FILES = tuple(temp_name(name) for name in (CONFIG_FILE, METRICS_FILE, MARKER_FILE))
RUN_FOLDERS = (CHECKPOINT_DIR, TENSORBOARD_DIR)
# Every name that makes a folder look like a run dir, in the order a user would look for them:
# one of these in a folder that is not provably ours is refused, never written over.
ALL_NAMES = (CONFIG_FILE, CHECKPOINT_DIR, METRICS_FILE, ERROR_LOG, TOKENIZER_FILE, TENSORBOARD_DIR, LOCK_FILE,
             SOCKET_FILE, SET_ASIDE_FILE, *TEMP_FILES)
