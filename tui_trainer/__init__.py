"""tui-trainer: train a small GPT with exact gradient accumulation, from a terminal."""

__version__ = "0.1.0"
