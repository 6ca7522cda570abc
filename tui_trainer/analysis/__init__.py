"""Pure analysis of a run's numbers: diagnosis, gradient noise scale, EMA, ETA, early stopping, schedule.

May import: the shared vocabulary (config, errors, events), the standard library, math.
Never imports: textual, tui_trainer.ui, tui_trainer.cli, the engine, or torch's training parts.
"""
