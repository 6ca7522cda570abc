"""The data path: text source -> tokenizer -> token cache -> train/val split -> windows of micro-batches.

May import: the shared vocabulary (config, errors, events).
Never imports: textual, tui_trainer.ui, tui_trainer.cli, the engine, rundir/.
"""
