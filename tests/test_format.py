"""Numbers on the screen: sizes keep three figures and switch units before they reach four."""

from __future__ import annotations

import pytest

from tui_trainer.ui.format import size

MB = 1024 ** 2


@pytest.mark.parametrize("n_bytes, shown", [(412 * MB, "412 MB"), (12.5 * MB, "12.5 MB"), (999.4 * MB, "999 MB"),
                                            (999.7 * MB, "1.0 GB"), (1021 * MB, "1.0 GB"), (None, "—")])
def test_size_has_at_most_three_figures(n_bytes, shown):
    assert size(n_bytes) == shown
