"""The Textual face of tui-trainer: ``create_app(cfg)`` builds it (see app.py)."""
