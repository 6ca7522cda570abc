"""A panel redraws only when what it shows has changed.

The app calls ``show(view, now)`` on every drain tick (4 Hz). ``key`` is the cheap
summary of what the panel prints; only a new key costs a render. ``build`` makes the Rich
renderable from the same view when Textual asks (after a change or a resize).
"""

from __future__ import annotations

from typing import Any, Hashable

from rich.console import RenderableType
from textual.widget import Widget

from tui_trainer.ui.view import RunView


class Panel(Widget):
    AUTO_HEIGHT = False  # True when the panel's height follows its text (then a change re-lays out)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._panel_view: RunView = RunView()
        self._panel_now = 0.0
        self._panel_extra: dict[str, Any] = {}
        self._panel_key: Hashable = object()

    def show(self, view: RunView, now: float, **extra: Any) -> None:
        self._panel_view, self._panel_now, self._panel_extra = view, now, extra
        key = self.key(view, now)
        if key != self._panel_key:
            self._panel_key = key
            self.refresh(layout=self.AUTO_HEIGHT)

    def key(self, view: RunView, now: float) -> Hashable:
        raise NotImplementedError

    def build(self, view: RunView, now: float) -> RenderableType:
        raise NotImplementedError

    def render(self) -> RenderableType:
        return self.build(self._panel_view, self._panel_now)
