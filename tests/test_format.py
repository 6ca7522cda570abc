"""Numbers on the screen: sizes keep three figures and switch units before they reach four."""

from __future__ import annotations

import pytest

from tui_trainer.ui.format import size

MB = 1000 ** 2


@pytest.mark.parametrize("n_bytes, shown", [(412 * MB, "412 MB"), (12.5 * MB, "12.5 MB"), (999.4 * MB, "999 MB"),
                                            (999.7 * MB, "1.0 GB"), (1021 * MB, "1.0 GB"), (None, "—")])
def test_size_has_at_most_three_figures(n_bytes, shown):
    assert size(n_bytes) == shown


def test_sizes_are_decimal_as_every_other_figure_of_bytes_is():
    assert size(458_129_408) == "458 MB"  # (437 MB in binary units, beside a budget's decimal GB)
    assert size(1_500_000_000) == "1.5 GB"
