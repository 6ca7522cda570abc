"""gpu_check.py's `memory wall` rows (issue 26): the memory limits of a real CUDA card, met for real.

    memory wall: auto     a model whose micro-batch 64 needs more than the --memory-budget given (the budget
                          is BUDGET_SHARE of what a first probe measured micro-batch 64 to need, not a number
                          of GB written here); --batch 64 --micro-batch auto through the engine: the chosen
                          micro-batch below 64, every step's torch.cuda.max_memory_allocated under the budget,
                          and the losses of AUTO_STEPS steps those of the hand-given split (LOSS_TOLERANCE)
    memory wall: oom      the process capped (torch.cuda.set_per_process_memory_fraction) between what
                          micro-batch OOM_MICRO_BATCH and half of it need, once micro-step 1 of step OOM_STEP
                          is done: micro-step 2 raises a real torch.OutOfMemoryError; the run must go on at
                          half the micro-batch and twice the accumulation (SplitChanged, the `memory` record
                          of metrics.jsonl), its step losses those of an uninterrupted run at that split

Both in fp32 with TF32 off once the session is built (the engine turns TF32 on for fp32 matmuls on a
card with bf16 units; the bar here is fp32's, as the CPU suite's tests/test_memory_split.py). The cap
is released afterwards, whatever happens. The arithmetic (the budget from the probe, where the cap
goes, the losses' comparison) is pure and tested on the CPU: tests/test_gpu_memory_wall.py.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from _common import run_config

from tui_trainer.config import ModelConfig
from tui_trainer.data.dataset import load_corpus
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.memory_fit import measure_step_peak
from tui_trainer.engine.split import BYTES_PER_FLOAT
from tui_trainer.events import ListSink, MicroStep, RunStarted, SplitChanged, StepEvent
from tui_trainer.model.gpt import GPT
from tui_trainer.rundir.metrics import read_metrics

# ~10.9M parameters at context 512: activations dominate (measured on the CPU, dropout 0: ~90 MB a
# sequence above ~0.1 GB of gradients; so micro-batch 64 some 6 GB by that measure, far from an 80 GB card's
# limit: the wall here is the budget, and the cap).
WALL_MODEL = ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=512, dropout=0.0)
WALL_BATCH = 64
BUDGET_SHARE = 0.40  # the budget: this share of what micro-batch 64 needs (probe + optimizer state)
AUTO_STEPS = 3
AUTO_DROPOUT = 0.1  # auto vs hand-given at the same split: the probes must leave the dropout masks alone too
LOSS_TOLERANCE = 1e-5  # relative, fp32 (tests/test_memory_split.py's bar)
OOM_MICRO_BATCH, OOM_ACCUM = 16, 4  # 64 a step; recovered: 8 x 8
OOM_STEP, OOM_MICRO_STEP = 3, 2  # the out-of-memory comes at this step's micro-step (of OOM_ACCUM): mid-window
OOM_STEPS = 4
CAP_AT = 0.5  # the cap: this far from what the half micro-batch needs to what the whole one needs
MIN_GAP = 0.10  # the two needs must differ by this share of the larger, or no cap tells them apart
GB = 1e9
CORPUS = Path(__file__).resolve().parent.parent / "datasets" / "tinyshakespeare.txt"

Row = list[str]


# -- the arithmetic (pure) ---------------------------------------------------------------------------

def need_at(micro_batch: int, probed_micro_batch: int, probed_peak: int, state_bytes: int) -> int:
    """What training at ``micro_batch`` needs (as the engine's fit projects it: the step's peak above
    the weights + the optimizer's state), from a probe at ``probed_micro_batch``: the activations and
    their gradients grow with the micro-batch (the probe's peak holds the parameters' gradients too,
    so a probe smaller than the target makes this an overestimate, never an under-)."""
    if probed_micro_batch < 1 or micro_batch < 1:
        raise ValueError("micro-batches are positive")
    return probed_peak * micro_batch // probed_micro_batch + state_bytes


def budget_from_probe(need_bytes: int, share: float = BUDGET_SHARE) -> int:
    """The --memory-budget (bytes) that micro-batch 64 must not fit: ``share`` of what it needs."""
    if not 0 < share < 1:
        raise ValueError(f"the budget's share must be between 0 and 1, not {share}")
    return int(need_bytes * share)


@dataclass(frozen=True)
class Cap:
    """A limit on the process's CUDA memory: ``bytes`` in all, ``fraction`` of the card
    (torch.cuda.set_per_process_memory_fraction's argument)."""

    bytes: int
    fraction: float


def cap_between(base: int, need_small: int, need_large: int, total: int, at: float = CAP_AT,
                min_gap: float = MIN_GAP) -> Cap:
    """The cap under which a step needing ``need_large`` (bytes above ``base``, what is allocated before
    the run) runs out of memory and one needing ``need_small`` does not: ``at`` of the way from the
    small need to the large one. (The cap counts the allocator's reserved memory: give the large need
    as allocated, which reserved never undercuts, and the small one as reserved, which the allocator,
    freeing its cache before it gives up, needs at most.) ValueError when the needs are too close for a
    cap to tell them apart, or the cap would not be under the card's ``total``."""
    if not 0 < at < 1:
        raise ValueError(f"the cap goes strictly between the two needs (at {at})")
    if need_large - need_small < min_gap * need_large:
        raise ValueError(f"the needs {need_small / GB:.2f} and {need_large / GB:.2f} GB are within "
                         f"{min_gap:.0%} of each other: no cap tells them apart")
    cap = base + need_small + int((need_large - need_small) * at)
    if cap >= total:
        raise ValueError(f"the cap {cap / GB:.2f} GB is not under the card's {total / GB:.2f} GB")
    return Cap(cap, cap / total)


def losses_match(got: list[float], want: list[float], rel: float = LOSS_TOLERANCE) -> tuple[bool, float]:
    """(every step's loss within ``rel`` of the other's, and as many steps; the worst relative difference)."""
    if not got or len(got) != len(want):
        return False, float("inf")
    worst = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(got, want))
    return worst <= rel, worst


def verdict(ok: bool) -> str:
    return "ok" if ok else "FAILED"


# -- runs on the card --------------------------------------------------------------------------------

class HookedSink(ListSink):
    """Collects every event and hands each to ``hook`` (the row's: stop at a step, cap the memory)."""

    def __init__(self, hook: Callable[[object], None]) -> None:
        super().__init__()
        self.hook = hook

    def emit(self, event) -> None:
        super().emit(event)
        self.hook(event)


def free_cuda() -> int:
    """What the earlier rows and runs left behind, released; returns what is still allocated."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def wall_config(corpus: Path, run_dir: Path, *, dropout: float, **train) -> object:
    cfg = run_config("small", run_dir, val_batches=1, device="cuda", data=str(corpus), precision="fp32")
    return cfg.replace(model=replace(WALL_MODEL, dropout=dropout), train=replace(cfg.train, **train))


def wall_run(cfg, stop_at: int, on_event: Callable[[object, ListSink], None] | None = None) -> ListSink:
    """One engine run on the card, stopped once step ``stop_at`` is done, fp32 with TF32 off from its
    first step (the session turns it on while it is built); ``on_event(event, sink)`` sees each event.
    Returns the events; nothing of the run is left holding memory on the card."""
    trainer: Trainer | None = None

    def hook(event) -> None:
        if on_event is not None:
            on_event(event, sink)
        if isinstance(event, StepEvent) and event.step == stop_at:
            trainer.control.stop("interrupted")

    sink = HookedSink(hook)
    trainer = Trainer(cfg, sink)
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        end = trainer.run()
        error = trainer.error
    finally:
        sink.hook = lambda event: None  # (the hook held the trainer, and so its model and optimizer)
        trainer = None
        free_cuda()
    if error is not None:
        raise error
    if end.steps != stop_at:
        raise RuntimeError(f"the run ended after {end.steps} steps, not {stop_at}: {end.reason} {end.message}")
    return sink


def step_losses(sink: ListSink) -> list[float]:
    return [e.loss for e in sink.of(StepEvent)]


def probe_need(vocab_size: int, dropout: float) -> tuple[int, int]:
    """What micro-batch WALL_BATCH needs (bytes, the engine's projection: measure_step_peak + AdamW's two
    moments + the noise scale's copy of the gradients), and the micro-batch probed: WALL_BATCH, or half
    of it while the card itself runs out (then scaled up: need_at)."""
    torch.manual_seed(0)
    model = GPT(replace(WALL_MODEL, vocab_size=vocab_size, dropout=dropout)).cuda().train()
    device = torch.device("cuda")
    state = 3 * model.num_parameters() * BYTES_PER_FLOAT
    try:
        measure_step_peak(model, 1, WALL_MODEL.block_size, vocab_size, device, None)  # one-time allocations
        probed = WALL_BATCH
        while True:
            try:
                peak, _ = measure_step_peak(model, probed, WALL_MODEL.block_size, vocab_size, device, None)
                return need_at(WALL_BATCH, probed, peak, state), probed
            except torch.OutOfMemoryError:
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                if probed == 1:
                    raise
                probed //= 2
    finally:
        del model
        free_cuda()


def check_auto_fits(scratch: Path, corpus: Path = CORPUS) -> list[Row]:
    need, probed = probe_need(wall_vocab(), AUTO_DROPOUT)
    budget = budget_from_probe(need)
    base = free_cuda()
    auto_sink = wall_run(wall_config(corpus, scratch / "wall-auto", dropout=AUTO_DROPOUT, batch=WALL_BATCH,
                                     micro_batch="auto", memory_budget=str(budget)), AUTO_STEPS)
    started = auto_sink.of(RunStarted)[0]
    micro_batch, accum = started.micro_batch, started.accum
    peak = max(e.peak_memory for e in auto_sink.of(StepEvent))  # torch.cuda.max_memory_allocated, each step
    hand_sink = wall_run(wall_config(corpus, scratch / "wall-hand", dropout=AUTO_DROPOUT, batch=WALL_BATCH,
                                     micro_batch=micro_batch), AUTO_STEPS)
    same, worst = losses_match(step_losses(auto_sink), step_losses(hand_sink))
    probe = f"probed at {probed}, scaled" if probed != WALL_BATCH else "probed"
    return [
        ["memory wall: auto chooses", f"{micro_batch} x {accum} of {WALL_BATCH}",
         f"64 needs {need / GB:.2f} GB ({probe}), budget {budget / GB:.2f} GB ({BUDGET_SHARE:.0%})",
         verdict(micro_batch < WALL_BATCH and need > budget)],
        ["memory wall: auto's peak", f"{peak / GB:.2f} GB max allocated",
         f"under the budget {budget / GB:.2f} GB ({base / GB:.2f} GB held before the run)", verdict(peak <= budget)],
        [f"memory wall: auto = hand {micro_batch}x{accum}", f"max rel diff {worst:.1e}",
         f"{AUTO_STEPS} step losses, dropout {AUTO_DROPOUT}, tol {LOSS_TOLERANCE:g}", verdict(same)],
    ]


def check_recovered_oom(scratch: Path, corpus: Path = CORPUS) -> list[Row]:
    half, twice = OOM_MICRO_BATCH // 2, OOM_ACCUM * 2
    free_cuda()
    base_reserved = torch.cuda.memory_reserved()
    reserved: list[int] = []

    def note_reserved(event, sink: ListSink) -> None:  # (each step resets the peaks: read before the next)
        if isinstance(event, StepEvent):
            reserved.append(torch.cuda.max_memory_reserved())

    steady_sink = wall_run(wall_config(corpus, scratch / "wall-steady", dropout=0.0, micro_batch=half,
                                       accum=twice), OOM_STEPS, note_reserved)
    # What the half micro-batch needs, as the cap counts it: the most the allocator reserved (>= allocated).
    need_small = max(reserved) - base_reserved
    base = free_cuda()
    total = torch.cuda.get_device_properties(0).total_memory
    ooms_before = torch.cuda.memory_stats().get("num_ooms", 0)
    capped: list[Cap] = []

    def cap_mid_window(event, sink: ListSink) -> None:
        """Once micro-step OOM_MICRO_STEP - 1 of step OOM_STEP is done (its gradients held): the cap. The
        whole micro-batch's steps allocated more than it (no freeing makes them fit), the half one's
        run reserved less."""
        if (isinstance(event, MicroStep) and event.step == OOM_STEP and event.micro_step == OOM_MICRO_STEP - 1
                and not capped):
            need_large = max(e.peak_memory for e in sink.of(StepEvent)) - base  # the steps before: max allocated
            capped.append(cap_between(base, need_small, need_large, total))
            torch.cuda.set_per_process_memory_fraction(capped[0].fraction)
            torch.cuda.empty_cache()  # the cap counts reserved memory: the cached blocks of the earlier steps go

    run_dir = scratch / "wall-oom"
    try:
        sink = wall_run(wall_config(corpus, run_dir, dropout=0.0, micro_batch=OOM_MICRO_BATCH, accum=OOM_ACCUM),
                        OOM_STEPS, cap_mid_window)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)  # released, whatever happened: later rows are unaffected
        free_cuda()
    ooms = torch.cuda.memory_stats().get("num_ooms", 0) - ooms_before
    changes = [c for c in sink.of(SplitChanged) if c.phase == "training"]
    records = [r for r in read_metrics(run_dir) if r.get("type") == "memory"]
    splits = [(e.micro_batch, e.accum) for e in sink.of(StepEvent)]
    want_splits = [(OOM_MICRO_BATCH, OOM_ACCUM)] * (OOM_STEP - 1) + [(half, twice)] * (OOM_STEPS - OOM_STEP + 1)
    change = changes[0] if changes else None
    raised = (ooms >= 1 and len(changes) == 1 and change.step == OOM_STEP
              and (change.old_micro_batch, change.new_micro_batch, change.old_accum, change.new_accum)
              == (OOM_MICRO_BATCH, half, OOM_ACCUM, twice))
    recorded = (len(records) == 1 and records[0].get("step") == OOM_STEP
                and records[0].get("new_micro_batch") == half and splits == want_splits)
    same, worst = losses_match(step_losses(sink), step_losses(steady_sink))
    cap = capped[0] if capped else None
    late_peak = max((e.peak_memory for e in sink.of(StepEvent) if e.step >= OOM_STEP), default=0)
    where = (f"cap {cap.bytes / GB:.2f} GB ({cap.fraction:.1%} of the card) after micro-step {OOM_MICRO_STEP - 1} "
             f"of step {OOM_STEP}; {half} reserved {need_small / GB:.2f} GB above {base / GB:.2f}" if cap else
             "the cap was never set")
    return [
        [f"memory wall: OOM at {OOM_MICRO_BATCH}", f"{ooms} torch OOM{'' if ooms == 1 else 's'}", where,
         verdict(raised)],
        [f"memory wall: went on at {half}x{twice}", _runs(splits),
         (change.describe() if change else "no SplitChanged") + f"; {len(records)} memory record"
         f"{'' if len(records) == 1 else 's'}; peak after {late_peak / GB:.2f} GB", verdict(recorded)],
        [f"memory wall: recovered = steady {half}x{twice}", f"max rel diff {worst:.1e}",
         f"{OOM_STEPS} step losses, fp32, tol {LOSS_TOLERANCE:g}", verdict(same)],
    ]


def _runs(splits: list[tuple[int, int]]) -> str:
    """[(16, 4), (16, 4), (8, 8), (8, 8)] → "16x4 x2, 8x8 x2"."""
    runs: list[list] = []
    for split in splits:
        if runs and runs[-1][0] == split:
            runs[-1][1] += 1
        else:
            runs.append([split, 1])
    return ", ".join(f"{m}x{a} x{n}" for (m, a), n in runs)


def wall_vocab() -> int:
    return load_corpus(run_config("small", "unused", data=str(CORPUS)).data, WALL_MODEL.block_size).vocab.size


def with_matmul_precision_kept(check: Callable[[], list[Row]]) -> list[Row]:
    """Run ``check``, then set torch's fp32 matmul precision back (the rows turn TF32 off)."""
    precision = torch.get_float32_matmul_precision()
    try:
        return check()
    finally:
        torch.set_float32_matmul_precision(precision)
