"""Export to a Hugging Face GPT-2 folder: time and file sizes (tui_trainer/rundir/hf_export.py).

For each model shape a run dir holding one checkpoint of **random weights** is written (the
export's cost does not depend on the weights; the checkpoint carries no optimizer state, so its
size is the weights' alone), then ``export_hf`` turns it into a folder, timed end to end (load
the checkpoint, convert, write, rename). Shapes: the seed model (6 x 256, context 128, the
bundled corpus's 65 characters) and GPT-2 124M's (12 x 768, 12 heads, context 1,024, 50,257
embedding rows; its tokenizer here is the 65 characters, which only changes tokenizer.json).

With ``transformers`` installed it also loads each folder with ``GPT2LMHeadModel`` and prints
the largest logit difference from our model on one window (exit 1 above 1e-4).

    python benchmarks/hf_export.py
    python benchmarks/hf_export.py --quick     # the tiny model only
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from _common import CHECK_FAILED, PRESETS, machine_line, scratch_dir, table

from tui_trainer.config import ModelConfig, RunConfig
from tui_trainer.data.dataset import Vocabulary, default_corpus_path
from tui_trainer.model.gpt import GPT
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.hf_export import export_hf

GPT2_124M = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.1, vocab_size=50257, gelu="tanh")
TOLERANCE = 1e-4


def write_run(run_dir: Path, model: GPT, vocab: Vocabulary) -> Path:
    cfg = RunConfig(model=model.cfg)
    state = {"format_version": ckpt.FORMAT_VERSION, "model": model.state_dict(), "optimizer": {},
             "early_stopping": {"best": None, "best_epoch": None}, "loop": {"tokens_seen": 0, "step": 0},
             "rng": {}, "config": cfg.to_dict(), "vocab": list(vocab.chars), "tokenizer": vocab.record(),
             "data_sha256": "0" * 64}
    path = ckpt.checkpoint_path(run_dir, "best")
    path.parent.mkdir(parents=True)
    ckpt.save_atomic(state, path)
    return path


def logit_difference(folder: Path, model: GPT) -> float | None:
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None
    theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.randint(0, 65, (1, min(64, model.cfg.block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (theirs(ids).logits - model.eval()(ids)).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only (seconds)")
    args = parser.parse_args(argv)
    vocab = Vocabulary.from_text(default_corpus_path().read_text(encoding="utf-8"))
    seed_model = replace(PRESETS["seed"][0], vocab_size=vocab.size)
    shapes = [("tiny", replace(PRESETS["tiny"][0], vocab_size=vocab.size))] if args.quick else \
        [("seed (6x256)", seed_model), ("GPT-2 124M shape", GPT2_124M)]
    print(machine_line())
    rows, failed = [], False
    with scratch_dir("hf-export") as scratch:
        for name, shape in shapes:
            torch.manual_seed(0)
            model = GPT(shape)
            run_dir = Path(scratch) / name.split()[0]
            checkpoint = write_run(run_dir, model, vocab)
            started = time.perf_counter()
            exported = export_hf(run_dir, Path(scratch) / f"{run_dir.name}-hf")
            seconds = time.perf_counter() - started
            difference = logit_difference(exported.out_dir, model)
            failed |= difference is not None and difference > TOLERANCE
            rows.append([name, f"{model.num_parameters():,}", f"{seconds:.2f}",
                         f"{checkpoint.stat().st_size / 1e6:,.1f}", f"{exported.file_sizes['model.safetensors'] / 1e6:,.1f}",
                         f"{exported.total_bytes / 1e6:,.1f}", "-" if difference is None else f"{difference:.1e}"])
    print(table(["model", "parameters", "export s", "best.pt MB", "safetensors MB", "folder MB", "max |logit diff|"],
                rows))
    if failed:
        print(f"FAILED: a logit difference above {TOLERANCE:g}")
        return CHECK_FAILED
    print("exported: every folder written" + ("" if rows[-1][-1] == "-" else f", logits within {TOLERANCE:g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
