"""Early stopping on validation loss: a small state machine that survives a resume."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    patience: int  # epochs without improvement before stopping; 0 disables stopping
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    best: float = math.inf
    best_epoch: int | None = None
    epochs_without_improvement: int = 0

    def update(self, val_loss: float, epoch: int) -> tuple[bool, bool, str]:
        """Record an epoch's val loss → (improved, should_stop, reason)."""
        improved = math.isfinite(val_loss) and val_loss < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.epochs_without_improvement = val_loss, epoch, 0
            return True, False, ""
        self.epochs_without_improvement += 1
        if self.patience and self.epochs_without_improvement >= self.patience:
            by = f" by more than {self.min_delta:g}" if self.min_delta else ""
            return False, True, (f"val loss has not improved{by} for {self.epochs_without_improvement} epochs "
                                 f"(best {self.best:.4f} at epoch {self.best_epoch})")
        return False, False, ""

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch,
                "epochs_without_improvement": self.epochs_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.epochs_without_improvement = state["epochs_without_improvement"]
