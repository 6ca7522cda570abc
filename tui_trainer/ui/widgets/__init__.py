"""One module per panel. Each panel shows a ``RunView`` (see ``base.Panel``)."""

from tui_trainer.ui.widgets.base import Panel
from tui_trainer.ui.widgets.batch import BatchPanel
from tui_trainer.ui.widgets.diagnosis import DiagnosisBanner
from tui_trainer.ui.widgets.epochs import EpochTable
from tui_trainer.ui.widgets.error import ErrorPanel
from tui_trainer.ui.widgets.help import HelpScreen
from tui_trainer.ui.widgets.loss_plot import LossPlot
from tui_trainer.ui.widgets.progress import ProgressPanel
from tui_trainer.ui.widgets.stats import StatsPanel
from tui_trainer.ui.widgets.status import StatusBar

__all__ = ["BatchPanel", "DiagnosisBanner", "EpochTable", "ErrorPanel", "HelpScreen", "LossPlot", "Panel", "ProgressPanel",
           "StatsPanel", "StatusBar"]
