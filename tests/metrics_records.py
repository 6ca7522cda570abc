"""Whole metrics records, as MetricsWriter writes them, for tests that write metrics.jsonl by hand
(the one reader checks every field: a record with fields missing is a bad line)."""

from __future__ import annotations

import json
from typing import Any

STEP = {"epoch": 1, "step": 1, "step_in_epoch": 1, "steps_in_epoch": 4, "micro_steps": 2, "accum": 2, "micro_batch": 4,
            "effective_batch": 8, "tokens": 256, "loss": 2.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_seen": 256, "tokens_per_s": 100.0}
EPOCH = {"epoch": 1, "epochs": 2, "train_loss": 2.0, "val_loss": 2.1, "accum": 2, "effective_batch": 8, "tokens_seen": 1024,
             "seconds": 1.0}
END = {"reason": "completed", "epochs": 2, "steps": 8, "tokens_seen": 2048, "best_val_loss": 2.0, "best_epoch": 2}
SAMPLE = {"epoch": 1, "step": 1, "text": "hello", "seconds": 0.1}
FIELDS = {"step": STEP, "epoch": EPOCH, "end": END, "sample": SAMPLE}


def record(kind: str, **given: Any) -> dict[str, Any]:
    return {"type": kind, **FIELDS[kind], **given}


def line(kind: str, **given: Any) -> str:
    return json.dumps(record(kind, **given)) + "\n"
