"""Fine-tuning from a local GPT-2 folder, and back (`--init-from`, `export --hf`).

A small GPT-2-architecture model is made here with ``transformers`` (random weights, tanh GELU,
``save_pretrained``) beside a byte-level BPE learnt on the bundled corpus's training text; a run
starts from the folder (``init_from``) on tiny-shakespeare. The script prints the validation loss
before any step (the engine's own ``evaluate`` on the set-up's model: the loaded weights), after
training, and the largest logit difference between the exported folder loaded by transformers and
the run's model on one validation batch (exit 1 above 1e-4). Needs ``transformers``.

    python benchmarks/hf_finetune.py
    python benchmarks/hf_finetune.py --quick     # one short epoch of a tiny model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import CHECK_FAILED, NOTHING_MEASURED, machine_line, scratch_dir

from tui_trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from tui_trainer.data.dataset import default_corpus_path
from tui_trainer.data.tokenizer import train_bpe
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import EpochEvent, ListSink
from tui_trainer.rundir.hf_export import export_hf
from tui_trainer.rundir.init_source import check_init_from

TOLERANCE = 1e-4


def make_gpt2_folder(folder: Path, n_layer: int, n_embd: int, positions: int, vocab: int) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    text = default_corpus_path().read_text(encoding="utf-8")
    train_text = text[:int(len(text) * 0.9)]  # the run's training split: the tokenizer never sees validation
    tokenizer = train_bpe(iter([train_text]), vocab)
    config = GPT2Config(vocab_size=tokenizer.size, n_positions=positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=max(1, n_embd // 64), bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, one short epoch (seconds)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-batches", type=int, default=150, help="micro-batches per epoch")
    args = parser.parse_args(argv)
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        print("nothing measured: transformers is not installed (pip install 'tui-trainer[hf]')")
        return NOTHING_MEASURED
    n_layer, n_embd, positions, vocab = (1, 64, 64, 300) if args.quick else (4, 128, 256, 1024)
    epochs, batches = (1, 4) if args.quick else (args.epochs, args.train_batches)
    print(machine_line())
    with scratch_dir("hf-finetune") as scratch:
        folder = Path(scratch) / "tiny-gpt2"
        make_gpt2_folder(folder, n_layer, n_embd, positions, vocab)
        cfg = RunConfig(model=ModelConfig(init_from=str(folder), block_size=128 if not args.quick else 64),
                        data=DataConfig(limit_train_batches=batches, limit_val_batches=max(2, batches // 10)),
                        optim=OptimConfig(lr=1e-3),
                        train=TrainConfig(epochs=epochs, micro_batch=8, accum=4, patience=0, sample_tokens=0,
                                          precision="fp32", device="cpu", checkpoint_every=10**9),
                        run_dir=str(Path(scratch) / "run"))
        cfg = check_init_from(cfg, {"model.block_size": cfg.model.block_size})
        sink = ListSink()
        trainer = Trainer(cfg, sink)
        start = trainer.evaluate()  # before any step: the source's weights on this validation split
        started = time.perf_counter()
        end = trainer.run()
        seconds = time.perf_counter() - started
        final = [e.val_loss for e in sink.of(EpochEvent)]
        if not final:
            print(f"nothing measured: the run ended before an epoch ({end.reason})")
            return NOTHING_MEASURED
        exported = export_hf(cfg.run_dir, Path(scratch) / "exported")
        theirs = GPT2LMHeadModel.from_pretrained(exported.out_dir).eval()
        trainer.model.eval()
        inputs, _ = trainer.session.val_set.batch(torch.arange(min(4, len(trainer.session.val_set))))
        best = torch.load(Path(cfg.run_dir) / "checkpoints" / "best.pt", weights_only=False)["model"]
        trainer.model.load_state_dict(best)
        with torch.no_grad():
            difference = (theirs(inputs).logits - trainer.model(inputs)).abs().max().item()
        params = trainer.model.num_parameters()
    print(f"model: {n_layer} layers x {n_embd}, {positions} positions (run context {cfg.model.block_size}), "
          f"BPE {vocab}, {params:,} parameters, GELU tanh; {epochs} epoch(s) x {batches} micro-batches of 8 x 4")
    print(f"val loss before any step {start:.4f} -> after {' -> '.join(f'{v:.4f}' for v in final)} "
          f"({seconds:.0f}s of training)")
    print(f"exported and reloaded by transformers: max |logit diff| {difference:.1e} on {inputs.shape[0]} windows")
    if difference > TOLERANCE:
        print(f"FAILED: above {TOLERANCE:g}")
        return CHECK_FAILED
    print("fine-tuned and exported back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
