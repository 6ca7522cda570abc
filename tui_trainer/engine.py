"""Compatibility names: the engine now lives in loop.py (the loop), session.py (set-up and its
services), run_dir.py (the run directory's life) and runtime.py (device, threads, RNG)."""

from .loop import DEFAULT_CHECKPOINT_SECONDS, Trainer
from .loop_state import LoopState
from .run_dir import CONFIG_FILE, RUN_MARKERS, default_run_dir, run_dir_holds, vocabulary_of
from .runtime import capture_rng, choose_threads, pick_device, restore_rng

__all__ = ["CONFIG_FILE", "DEFAULT_CHECKPOINT_SECONDS", "RUN_MARKERS", "LoopState", "Trainer", "capture_rng",
           "choose_threads", "default_run_dir", "pick_device", "restore_rng", "run_dir_holds", "vocabulary_of"]
