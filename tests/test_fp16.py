"""fp16 with loss scaling inside the exact accumulation (loss_scaling.py), on the CPU: fp16 autocast and
GradScaler("cpu") run the same code paths a CUDA card without bf16 runs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from helpers import nan_loss_at, tiny_config, with_limits

from tui_trainer.cli.main import main
from tui_trainer.config import ModelConfig
from tui_trainer.data.dataset import WindowDataset, load_corpus
from tui_trainer.engine.accumulation import accumulate_window
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.loss_scaling import LossScaling
from tui_trainer.engine.precision import Bf16Support, auto_precision, choose_precision, cuda_bf16_native
from tui_trainer.errors import UserError
from tui_trainer.events import ListSink, RunStarted, StepEvent
from tui_trainer.model.gpt import GPT
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.checkpoint_contents import check_contents
from tui_trainer.rundir.loop_state import LoopState

CPU = torch.device("cpu")


def fp16_config(corpus, run_dir, **train):
    settings = dict(precision="fp16", accum=3, epochs=2, max_bad_steps=1)
    settings.update(train)
    cfg = with_limits(tiny_config(corpus, run_dir, **settings), 12)
    return cfg.replace(optim=replace(cfg.optim, warmup_tokens=4 * 12 * 32))  # the LR moves every step


def overflow_at(trainer: Trainer, steps: set[int]) -> None:
    """Make one weight's gradient inf in the given optimizer steps (1-based), from outside: a tensor
    hook, as an fp16 overflow in the backward would leave it. The loss stays finite."""
    weight = trainer.model.lm_head.weight

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("inf")) if trainer.state.step + 1 in steps else grad

    weight.register_hook(hook)


def run(cfg, *, overflow: set[int] = frozenset(), nan: set[int] = frozenset(), **kwargs):
    sink = ListSink()
    trainer = Trainer(cfg, sink, **kwargs)
    overflow_at(trainer, set(overflow))
    nan_loss_at(trainer, frozenset(nan))
    end = trainer.run()
    return trainer, sink, end


# -- the maths: loss-scaled accumulation ------------------------------------------------------------

def test_fp16_loss_scaled_accumulation_equals_fp32_within_fp16_tolerance(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path)
    corpus = load_corpus(cfg.data, cfg.model.block_size)
    data = WindowDataset(corpus.train_tokens, cfg.model.block_size, CPU)
    model_cfg = replace(cfg.model, vocab_size=corpus.vocab.size)
    micro_batches = [(0, 4), (4, 8), (8, 10)]  # a short last micro-batch: the remainder's weighting too
    torch.manual_seed(0)
    model = GPT(model_cfg)
    accumulate_window(model, data, torch.arange(10), micro_batches)
    fp32 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    scaling = LossScaling(CPU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss_total, _ = accumulate_window(model, data, torch.arange(10), micro_batches, autocast_dtype=torch.float16,
                                      loss_scale=scaling.scale)
    assert loss_total.dtype == torch.float32
    scaled_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    scaling.unscale_(optimizer)
    fp16 = [p.grad for p in model.parameters()]
    flat32, flat16 = torch.cat([g.flatten() for g in fp32]), torch.cat([g.flatten() for g in fp16])
    assert scaled_norm == pytest.approx(65536.0 * float(flat32.norm()), rel=1e-2)  # it was scaled, then unscaled
    # fp16's 11-bit mantissa: ~5e-4 per rounding; a few roundings deep, 1% of the gradient's norm.
    assert float((flat16 - flat32).norm() / flat32.norm()) < 1e-2
    assert all(g.dtype == torch.float32 for g in fp16)


# -- skipped steps --------------------------------------------------------------------------------

def test_a_step_the_scaler_skips_is_reported_does_not_advance_the_schedule_and_is_not_bad(small_corpus, tmp_path):
    trainer, sink, end = run(fp16_config(small_corpus, tmp_path / "run"), overflow={2, 3})
    assert end.reason == "completed", end.message  # --max-bad-steps 1: one bad step would have ended it
    steps = sink.of(StepEvent)
    assert [s.skipped for s in steps[:5]] == [False, True, True, False, False]
    assert trainer.state.bad_steps_total == 0
    # Steps 2 and 3 taught nothing: step 4 takes the LR step 2 would have had, and the run's LR stays
    # two steps behind the token count, which goes on counting every token fed.
    assert steps[1].lr == steps[2].lr == steps[3].lr and steps[4].lr != steps[3].lr
    assert [s.tokens_seen for s in steps] == sorted({s.tokens_seen for s in steps})
    assert trainer.state.tokens_skipped == steps[1].tokens + steps[2].tokens
    assert trainer.session.loss_scaling.scaler.get_scale() == 65536.0 / 4  # halved by each overflow


def test_an_overflow_with_the_scale_below_its_floor_is_a_divergence(small_corpus, tmp_path):
    cfg = fp16_config(small_corpus, tmp_path / "run", max_bad_steps=2, epochs=5)  # 4 steps an epoch
    trainer, sink, end = run(cfg, overflow=set(range(1, 40)))
    # 17 skips at scales 65536 (2^16) down to 1, the floor; at 1/2 and 1/4, two bad steps in a row.
    assert end.reason == "error" and "non-finite steps in a row" in end.message
    assert trainer.state.step == 17 + 2 and trainer.state.bad_steps_total == 2


def test_a_nan_loss_in_fp16_still_counts_as_bad(small_corpus, tmp_path):
    trainer, _, end = run(fp16_config(small_corpus, tmp_path / "run", max_bad_steps=2), nan={2, 3})
    assert end.reason == "error" and trainer.state.step == 3


def test_gradients_are_unscaled_before_the_clip_sees_them(small_corpus, tmp_path, monkeypatch):
    clip = torch.nn.utils.clip_grad_norm_
    seen: list[float] = []

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        seen.append(float(torch.cat([p.grad.flatten() for p in parameters]).norm()))
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    _, fp16_sink, _ = run(fp16_config(small_corpus, tmp_path / "fp16", epochs=1))
    fp16_seen, seen[:] = list(seen), []
    _, fp32_sink, _ = run(fp16_config(small_corpus, tmp_path / "fp32", epochs=1, precision="fp32"))
    # The clip saw the true norm (scaled, it would be 65536 times this), the one the step reports.
    assert fp16_seen[0] == pytest.approx(seen[0], rel=2e-2)
    assert fp16_sink.of(StepEvent)[0].grad_norm == pytest.approx(fp16_seen[0], rel=1e-5)


# -- resume -------------------------------------------------------------------------------------------

def test_the_scaler_state_in_the_checkpoint_gives_a_bit_exact_fp16_resume(small_corpus, tmp_path):
    whole, whole_sink, _ = run(fp16_config(small_corpus, tmp_path / "whole"), overflow={2, 3})
    want = [(s.step, s.loss, s.grad_norm, s.lr, s.skipped) for s in whole_sink.of(StepEvent)]
    run_dir = tmp_path / "run"
    cfg = fp16_config(small_corpus, run_dir)
    sink = ListSink()
    first = Trainer(cfg, sink)
    overflow_at(first, {2, 3})
    sink.emit = lambda e, emit=sink.emit: (emit(e), isinstance(e, StepEvent) and e.step == 5
                                           and first.control.stop("interrupted"))
    assert first.run().reason == "interrupted"
    saved = torch.load(ckpt.checkpoint_path(run_dir), weights_only=False)
    assert saved["grad_scaler"]["scale"] == 65536.0 / 4
    second, second_sink, end = run(fp16_config(small_corpus, tmp_path / "ignored"), resume=run_dir)
    assert end.reason == "completed", end.message
    got = [(s.step, s.loss, s.grad_norm, s.lr, s.skipped) for s in sink.of(StepEvent) + second_sink.of(StepEvent)]
    assert got == want  # every step's loss ==, not approximately
    assert second.session.loss_scaling.state_dict() == whole.session.loss_scaling.state_dict()


def test_a_damaged_scaler_state_is_refused_in_one_line(small_corpus, tmp_path):
    run(fp16_config(small_corpus, tmp_path / "run", epochs=1))
    path = ckpt.checkpoint_path(tmp_path / "run")
    state = torch.load(path, weights_only=False)
    check_contents(state, path, LoopState)  # whole: fits
    state["grad_scaler"]["scale"] = float("nan")
    with pytest.raises(UserError, match="loss-scaler scale"):
        check_contents(state, path, LoopState)


# -- auto per device, and bad input -------------------------------------------------------------------

def support(native: bool, fp16: bool = True) -> Bf16Support:
    return Bf16Support(works=native, native=native, why="test", fp16=fp16)


@pytest.mark.parametrize("device_type, native, fp16, expected", [
    ("cuda", True, True, "bf16"),  # compute capability >= 8.0
    ("cuda", False, True, "fp16"),  # older CUDA cards
    ("mps", True, True, "bf16"),
    ("mps", False, False, "fp32"),
    ("cpu", True, True, "bf16"),  # a model wide enough (CPU_BF16_MIN_WIDTH; narrower: fp32, test_precision.py)
    ("cpu", False, True, "fp32"),  # fp16 on a CPU works but is slow: never auto
    ("xpu", True, True, "fp32"),  # nobody measured it
])
def test_auto_precision_is_the_table_of_the_docs(device_type, native, fp16, expected):
    wide = ModelConfig(n_layer=6, n_head=8, n_embd=256, block_size=128)  # (on a CPU: past bf16's crossover)
    assert auto_precision(device_type, support(native, fp16), wide) == expected


@pytest.mark.parametrize("capability, native", [((6, 1), False), ((7, 5), False), ((7, 0), False),
                                                ((8, 0), True), ((8, 6), True), ((9, 0), True)])
def test_bf16_units_come_with_compute_capability_8(capability, native):
    assert cuda_bf16_native(capability) is native


def test_bf16_on_a_gpu_without_bf16_units_and_fp16_where_it_cannot_run_are_refused():
    emulated = Bf16Support(works=True, native=False, why="Tesla T4, compute capability 7.5: older than Ampere")
    with pytest.raises(UserError, match="no bf16.*T4") as refused:
        choose_precision("bf16", torch.device("cuda"), emulated)
    assert "fp16" in refused.value.hint
    with pytest.raises(UserError, match="--precision fp16.*cannot run fp16"):
        choose_precision("fp16", torch.device("mps"), support(True, fp16=False))
    assert choose_precision("fp16", CPU, support(False)) == ("fp16", torch.float16)


def test_fp16_on_a_cpu_runs_and_its_run_line_says_it_is_slow(small_corpus, tmp_path, capsys):
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), "--precision", "fp16",
                 "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--epochs", "1",
                 "--limit-train-batches", "2", "--limit-val-batches", "1", "--micro-batch", "2", "--accum", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "precision=fp16" in out and "fp16 on a CPU is slow" in out


def test_step_records_carry_flops_but_no_mfu_on_a_cpu(small_corpus, tmp_path):
    trainer, sink, _ = run(fp16_config(small_corpus, tmp_path / "run", epochs=1, precision="fp32"))
    step = sink.of(StepEvent)[0]
    assert step.mfu is None
    assert step.flops_per_s == pytest.approx(step.tokens_per_s * trainer.session.flops.per_token)
    assert math.isfinite(step.flops_per_s) and step.flops_per_s > 0
    assert sink.of(RunStarted)[0].precision == "fp32"


# -- where the figures show ---------------------------------------------------------------------------

def step_event(**figures) -> StepEvent:
    return StepEvent(epoch=1, step=1, step_in_epoch=1, steps_in_epoch=4, micro_steps=2, accum=2, micro_batch=4,
                     effective_batch=8, tokens=1000, loss=4.0, lr=1e-3, grad_norm=1.0, tokens_seen=1000,
                     tokens_per_s=1000.0, **figures)


def test_the_stats_panel_shows_mfu_on_a_known_gpu_and_flops_elsewhere():
    from tui_trainer.ui.view import RunView
    from tui_trainer.ui.widgets.stats import StatsPanel

    gpu, cpu, old = RunView(), RunView(), RunView()
    gpu.apply(step_event(flops_per_s=2e12, mfu=0.25), now=0.0)  # 2e9 FLOPs a token at 1,000 tokens/s
    cpu.apply(step_event(flops_per_s=3.2e9), now=0.0)
    old.apply(step_event(), now=0.0)  # a run recorded before the figures: nothing beside tokens/s
    assert gpu.mfu == pytest.approx(0.25) and StatsPanel._flops(gpu) == " · MFU 25%"
    assert cpu.mfu is None and StatsPanel._flops(cpu) == " · 3.2 GFLOP/s"
    assert StatsPanel._flops(old) == ""


def test_the_headless_progress_line_carries_mfu_or_flops():
    from tui_trainer.cli.headless import flops_figure

    assert flops_figure(step_event(flops_per_s=2e12, mfu=0.25), tokens_per_s=500.0) == " mfu=12.5%"
    assert flops_figure(step_event(flops_per_s=3.2e9), tokens_per_s=1000.0) == " flops/s=3.20e+09"
    assert flops_figure(step_event(), tokens_per_s=1000.0) == ""


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_one_host_sync_per_optimizer_step(precision, small_corpus, tmp_path, monkeypatch):
    """Every way Python reads a tensor's value back to the host, counted between two step records
    (gpu_check.py counts the same on CUDA with torch's sync debug mode): exactly one, fp16's scale
    included (it rides in the step's one ``.tolist()``)."""
    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    per_step: list[list[str]] = []

    class Counting(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, StepEvent):
                per_step.append(list(reads))
                reads.clear()

    trainer = Trainer(fp16_config(small_corpus, tmp_path / "run", precision=precision, epochs=1), Counting())
    overflow_at(trainer, {3} if precision == "fp16" else set())  # a skipped step syncs no more than a taken one
    trainer.run()
    assert len(per_step) == 4
    assert per_step[1:] == [["tolist"]] * 3  # (the first step follows the set-up's reads)


@pytest.mark.parametrize(("width", "flops_shown"), [(80, False), (120, True)])
async def test_flops_beside_tokens_per_s_only_where_it_fits_uncut(width, flops_shown):
    # At 80 columns the stats panel's half-width value cell held "737 · 3.83 GFLOP/s" cut to
    # "737 · 3.83 GFLO…": the FLOP/s figure goes where it fits whole, and nowhere else.
    from textual.app import App

    from tui_trainer.ui.view import RunView
    from tui_trainer.ui.widgets.stats import StatsPanel

    view = RunView()
    view.apply(step_event(flops_per_s=3.83e9), now=0.0)

    class One(App):
        def compose(self):
            yield StatsPanel()

    app = One()
    async with app.run_test(size=(width, 24)) as pilot:
        panel = app.query_one(StatsPanel)
        panel.styles.width = width // 2  # the app's 80-column layout gives the panel half the screen
        panel.show(view, 0.0)
        await pilot.pause()
        text = "\n".join(line.text for line in panel.render_lines(panel.region.reset_offset))
    assert "…" not in text, text
    assert ("GFLOP/s" in text) == flops_shown, text
