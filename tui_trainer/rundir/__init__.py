"""The run directory: the names of its files, its life (new, resume, overwrite), the lock, ownership,
checkpoints, the metrics stream (the one writer and the one reader), the control socket, TensorBoard.

May import: the shared vocabulary (config, errors, events, control), analysis/, data/, model/.
Never imports: textual, tui_trainer.ui, tui_trainer.cli, the engine.
"""
