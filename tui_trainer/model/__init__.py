"""The model: a small GPT (gpt.py) and sampling from it with a KV cache (sampling.py).

May import: the shared vocabulary (config, errors, events).
Never imports: textual, tui_trainer.ui, tui_trainer.cli, or the engine.
"""
