"""Your own corpus at real size: first start, cached start, peak memory and tokenization rate.

For each corpus size (10 MB and 100 MB; 1 GB with ``--big``) a directory of text files is
made by repeating the bundled corpus (in a temp dir, deleted after), and for each tokenizer
(char, BPE) a fresh process runs a tiny model for a few steps twice with an empty token cache:

- **first start**: seconds to prepare the data (fingerprint, check, [learn the BPE,] tokenize
  into the cache), and the tokenization rate in MB/s of text;
- **cached start**: the same process run again: seconds until the data is ready (the remembered
  fingerprint of the unchanged files, and the cache verified against its checksum and mapped);
- **peak RSS** of each process (its own ``VmHWM``, training steps included).

The BPE tokenization rate is set against ``tokenizers``' own ``encode_batch`` rate on the
same text in this run (pieces of 64 KiB, no file reading or writing): the overhead of
streaming and caching. Goals (exit 1 when one fails): peak RSS flat with corpus size (the
largest size within 1.25x of the smallest + 100 MB, and under 1.5 GB), cached start under 2 s,
char tokenization at least 50 MB/s.

    python benchmarks/data_scale.py            # 10 MB and 100 MB
    python benchmarks/data_scale.py --big      # and 1 GB (needs ~4 GB of free disk)
    python benchmarks/data_scale.py --quick    # one 1 MB corpus: under a minute
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RSS_LIMIT_MB = 1500
CACHED_START_LIMIT_S = 2.0
CHAR_RATE_MIN_MB_S = 50.0
FILE_MB = 10  # the corpus directory holds files of this size


def child(args: argparse.Namespace) -> None:
    """One start: prepare the data (timed, with its phases), then a few steps of a tiny model."""
    started = time.perf_counter()
    from dataclasses import replace

    from _common import run_config

    from tui_trainer.data.dataset import load_corpus
    from tui_trainer.engine.loop import Trainer

    phases: dict[str, float] = {}

    def progress(p) -> None:
        phases[p.phase] = p.seconds

    cfg = run_config("tiny", args.run_dir, train_batches=3, val_batches=1, threads=1, data=args.data)
    cfg = cfg.replace(data=replace(cfg.data, tokenizer=args.tokenizer, cache_dir=args.cache_dir,
                                   vocab_size=4096 if args.tokenizer == "bpe" else None))
    imported = time.perf_counter()
    corpus = load_corpus(cfg.data, cfg.model.block_size, progress=progress)
    ready = time.perf_counter()
    del corpus
    end = Trainer(cfg).run()
    print(json.dumps({"prepare_s": ready - imported, "import_s": imported - started, "phases": phases,
                      "steps": end.steps, "reason": end.reason,
                      "rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM belongs to its own memory map, so unlike
    ``ru_maxrss`` it does not start from the parent's size at fork time."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start(data: Path, tokenizer: str, cache: Path, run_dir: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", "--data", str(data), "--tokenizer", tokenizer,
                           "--cache-dir", str(cache), "--run-dir", str(run_dir)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"a start failed ({tokenizer}, {data}):\n{done.stderr[-3000:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_corpus(folder: Path, size_mb: float, text: bytes) -> int:
    """``size_mb`` of the bundled text, repeated, in files of FILE_MB; returns the bytes written."""
    folder.mkdir(parents=True)
    target = int(size_mb * 1e6)
    written, index = 0, 0
    per_file = int(min(FILE_MB * 1e6, target))
    while written < target:
        want = min(per_file, target - written)
        with open(folder / f"part-{index:04d}.txt", "wb") as handle:
            left = want
            while left > 0:
                piece = text[:left]
                handle.write(piece)
                left -= len(piece)
        written += want
        index += 1
    return written


def encode_batch_rate(folder: Path, cache: Path) -> float:
    """MB/s of ``tokenizers``' own encode_batch on the first file, with the BPE the run learnt."""
    from tui_trainer.data.token_cache import PIECE_CHARS, bpe_pieces
    from tui_trainer.data.tokenizer import BpeTokenizer

    learnt = next(cache.glob("bpe-*.json"))  # our record around the tokenizer's own JSON (token_cache.py)
    tokenizer = BpeTokenizer.from_json(json.loads(learnt.read_text(encoding="utf-8"))["tokenizer"], "trained")
    text = next(iter(sorted(folder.glob("*.txt")))).read_text(encoding="utf-8")
    pieces, rest = bpe_pieces(text, PIECE_CHARS)
    pieces.append(rest)
    started = time.perf_counter()
    tokenizer.tokenizer.encode_batch(pieces, add_special_tokens=False)
    return len(text.encode("utf-8")) / 1e6 / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one 1 MB corpus: checks the script, not the goals")
    parser.add_argument("--big", action="store_true", help="add the 1 GB corpus")
    parser.add_argument("--tokenizers", default="char,bpe", help="comma-separated (default char,bpe)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    from _common import machine_line

    from tui_trainer.data.dataset import default_corpus_path
    from tui_trainer.data.token_cache import SETTLED_SECONDS

    sizes = [1] if args.quick else [10, 100] + ([1000] if args.big else [])
    kinds = [k.strip() for k in args.tokenizers.split(",") if k.strip()]
    text = default_corpus_path().read_bytes()
    work = Path(tempfile.mkdtemp(prefix="tui-trainer-data-scale-"))
    print(machine_line())
    print(f"corpora: {', '.join(f'{s:g} MB' for s in sizes)} of the bundled text repeated, in files of "
          f"{FILE_MB} MB; a tiny model (1x32) takes 3 steps per start; temp dir {work}")
    rows, failures = [], []
    try:
        for size in sizes:
            folder = work / f"corpus-{size}mb"
            nbytes = make_corpus(folder, size, text)
            # A corpus that was there before the run (as a user's is): the first start remembers
            # its fingerprint, so cached starts do not hash it again (token_cache.source_fingerprint).
            if not args.quick:
                time.sleep(SETTLED_SECONDS + 0.5)
            for kind in kinds:
                cache = work / f"cache-{size}-{kind}"
                first = start(folder, kind, cache, work / "run")
                cached = start(folder, kind, cache, work / "run")
                if "tokenizing" not in first["phases"] or "tokenizing" in cached["phases"]:
                    failures.append(f"{size} MB {kind}: the cache was not built once and reused")
                rate = nbytes / 1e6 / first["phases"]["tokenizing"] if first["phases"].get("tokenizing") else 0.0
                row = {"size": size, "kind": kind, "first": first["prepare_s"], "cached": cached["prepare_s"],
                       "rss": max(first["rss_mb"], cached["rss_mb"]), "rate": rate,
                       "learn": first["phases"].get("training tokenizer", 0.0),
                       "import": cached["import_s"]}
                if kind == "bpe":
                    row["own"] = encode_batch_rate(folder, cache)
                rows.append(row)
                own = f", encode_batch alone {row['own']:.2f} MB/s ({rate / row['own']:.2f}x)" if "own" in row else ""
                learn = f", BPE learnt in {row['learn']:.1f} s" if kind == "bpe" else ""
                print(f"{size:>6g} MB {kind:<5} first start {row['first']:7.2f} s | cached start {row['cached']:5.2f} s "
                      f"| peak RSS {row['rss']:6.0f} MB | tokenizing {rate:6.2f} MB/s{learn}{own}", flush=True)
                shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if not rows:
        print("measured nothing")
        return 1
    for kind in kinds:
        of_kind = [r for r in rows if r["kind"] == kind]
        small, large = of_kind[0], of_kind[-1]
        growth = large["rss"] / small["rss"]
        print(f"{kind}: peak RSS {small['rss']:.0f} MB at {small['size']:g} MB -> {large['rss']:.0f} MB at "
              f"{large['size']:g} MB ({growth:.2f}x for {large['size'] / small['size']:.0f}x the text); "
              f"slowest cached start {max(r['cached'] for r in of_kind):.2f} s")
        if args.quick:
            continue
        if large["rss"] > 1.25 * small["rss"] + 100 or large["rss"] > RSS_LIMIT_MB:
            failures.append(f"{kind}: peak RSS grows with the corpus ({small['rss']:.0f} -> {large['rss']:.0f} MB)")
        for r in of_kind:
            if r["cached"] > CACHED_START_LIMIT_S:
                failures.append(f"{r['size']:g} MB {kind}: cached start {r['cached']:.2f} s > {CACHED_START_LIMIT_S} s")
            if kind == "char" and r["rate"] < CHAR_RATE_MIN_MB_S:
                failures.append(f"{r['size']:g} MB char: tokenizing {r['rate']:.1f} MB/s < {CHAR_RATE_MIN_MB_S}")
    if args.quick:
        print("quick mode: the goals are not checked (the corpora are too small to show them)")
    for failure in failures:
        print(f"GOAL MISSED: {failure}")
    if not failures and not args.quick:
        print("all goals met")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
