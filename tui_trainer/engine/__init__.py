"""The engine: the training loop (loop.py, top to bottom) and the parts it is composed of.

May import: the shared vocabulary (config, errors, events, control), analysis/, data/, model/, rundir/.
Never imports: textual, tui_trainer.ui, tui_trainer.cli (not even inside a function).
"""
