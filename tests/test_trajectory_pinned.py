"""A short run's losses pinned to figures recorded before the engine was split into loop.py and
run_dir.py (issue 15): same seed, same code path, the same floats bit for bit on CPU (fp32).

Two epochs of 10 micro-batches at accum 3: windows of 3, 3, 3 and a remainder of 1 each epoch,
so the epoch boundary and the short last window are both covered. If a deliberate change to the
numerics ever moves these, record the new figures from a run of the old code first and say why.
"""

from __future__ import annotations

from conftest import tiny_config, with_limits

from tui_trainer.engine.loop import Trainer
from tui_trainer.events import EpochEvent, ListSink, StepEvent

STEP_LOSSES = [4.062983512878418, 3.995417594909668, 3.8893311818440757, 3.840831995010376,
               3.791172663370768, 3.7255446116129556, 3.7023493448893228, 3.7237091064453125]
GRAD_NORMS = [1.3100495338439941, 1.306474208831787, 1.147149682044983, 1.0170490741729736,
              0.9610438346862793, 1.0373696088790894, 1.0403965711593628, 1.065449833869934]
EPOCH_LOSSES = [(3.968402886390686, 3.7987022399902344), (3.7380908966064452, 3.746732234954834)]


def test_a_short_run_gives_the_losses_recorded_before_the_refactor(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", accum=3, epochs=2), 10)
    sink = ListSink()
    end = Trainer(cfg, sink).run()
    steps = sink.of(StepEvent)
    assert end.reason == "completed"
    assert [e.micro_steps for e in steps] == [3, 3, 3, 1, 3, 3, 3, 1]
    assert [e.loss for e in steps] == STEP_LOSSES
    assert [e.grad_norm for e in steps] == GRAD_NORMS
    assert [(e.train_loss, e.val_loss) for e in sink.of(EpochEvent)] == EPOCH_LOSSES
