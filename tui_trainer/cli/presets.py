"""Named starting points for a run: defaults replaced before a config file and flags apply.

``--quick`` is the newcomer's first run: the whole story (the loss falling, a validation pass
every few seconds, a diagnosis after each epoch) in about a minute on two idle CPU cores,
where the full default run takes over an hour. Flags and a config file still override it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tui_trainer.config import RunConfig

# About a minute on 2 idle cores (64 s measured 2026-11-29: ~16k tokens/s, 10 s an epoch): long
# enough to press the keys and see a validation pass, short enough to see the whole story.
QUICK: dict[str, Any] = {
    "model.n_layer": 4,
    "model.n_head": 4,
    "model.n_embd": 128,
    "model.block_size": 64,
    "train.micro_batch": 16,
    "train.accum": 4,
    "train.epochs": 6,
    "data.limit_train_batches": 150,  # 38 optimizer steps an epoch; validation: ceil(150 x 0.1 / 0.9) = 17 batches
}


def with_preset(cfg: RunConfig, preset: dict[str, Any]) -> RunConfig:
    for key, value in preset.items():
        section, name = key.split(".")
        cfg = cfg.replace(**{section: replace(getattr(cfg, section), **{name: value})})
    return cfg
