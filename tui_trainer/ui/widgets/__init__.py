"""One module per panel. Each panel shows a ``RunView`` (see ``base.Panel``)."""

from .base import Panel
from .batch import BatchPanel
from .diagnosis import DiagnosisBanner
from .epochs import EpochTable
from .error import ErrorPanel
from .help import HelpScreen
from .loss_plot import LossPlot
from .progress import ProgressPanel
from .stats import StatsPanel
from .status import StatusBar

__all__ = ["BatchPanel", "DiagnosisBanner", "EpochTable", "ErrorPanel", "HelpScreen", "LossPlot", "Panel", "ProgressPanel",
           "StatsPanel", "StatusBar"]
