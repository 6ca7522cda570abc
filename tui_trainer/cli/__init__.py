"""The command-line shell: the parser (main.py, the only place that exits), the headless face,
signals, the launcher of several processes, and the sample / view / export / serve commands.

May import: everything. The app (tui_trainer.ui) only inside the function that opens it, so that
`--no-ui` never loads Textual.
"""
