"""Several processes: torchrun + DDP on 2 CPU processes with gloo, against one process.

The maths: 2 processes of micro_batch x accum give the per-step losses of 1 process of
micro_batch x (2 accum) within 1e-4, remainder windows included (a short last micro-batch, and a
window of one micro-batch where rank 1's share is empty). The rest: rank 0 owns the run dir, a
SIGTERM/SIGHUP to the process group stops every rank at the same step and resumes bit-exact with the
same world size, a resume with another world size goes on from the same position, a rank that dies
ends the other with one clear line, and bad input is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import free_port, tiny_config
from screen import screen_text

from tui_trainer.cli.launch import _died, _exit_code, check_nproc, died_line, without_nproc
from tui_trainer.config import ModelConfig
from tui_trainer.config_checks import validate
from tui_trainer.data.dataset import Window, WindowDataset, plan_windows
from tui_trainer.engine.accumulation import accumulate_window
from tui_trainer.engine.distributed import Placement, choose_backend, placement_from_environment, rank_share
from tui_trainer.errors import UserError
from tui_trainer.model.gpt import GPT
from tui_trainer.rundir.metrics import read_metrics

# 562 training sequences of 32 tokens in the small corpus; micro-batch 5 gives 113 micro-batches an
# epoch, the last one short (2 sequences); 4 micro-batches a step leave a last window of just that one.
MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--threads", "1",
         "--patience", "0", "--device", "cpu", "--precision", "fp32", "--limit-val-batches", "4", "--lr", "3e-3",
         "--log-every", "off", "--sample-tokens", "0"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tui_trainer", "train", "--no-ui", *args]


def steps(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["type"] == "step"]


def epochs(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["type"] == "epoch"]


def ended(run_dir: Path) -> dict:
    return [r for r in read_metrics(run_dir) if r["type"] == "end"][-1]


def run(args: list[str], timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


# -- the parts, one process ---------------------------------------------------------------------------

def test_no_torchrun_environment_is_one_process():
    assert placement_from_environment({}) == Placement()
    placed = placement_from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (placed.rank, placed.world_size, placed.is_main, placed.distributed) == (1, 2, False, True)


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"},
                                 {"RANK": "0", "WORLD_SIZE": "0"}])
def test_a_torchrun_environment_that_cannot_be_is_bad_input(env):
    with pytest.raises(UserError):
        placement_from_environment(env)


def test_the_backend_is_gloo_on_the_cpu_and_nccl_needs_cuda():
    assert choose_backend("auto", torch.device("cpu")) == "gloo"
    assert choose_backend("auto", torch.device("cuda", 0)) == "nccl"
    with pytest.raises(UserError, match="nccl needs CUDA"):
        choose_backend("nccl", torch.device("cpu"))


def test_each_rank_takes_every_world_size_th_micro_batch_of_the_global_window():
    windows = plan_windows(103, 5, 4)  # 21 micro-batches: 5 windows of 4, then one of 1 (3 sequences)
    for window in windows:
        shares = [rank_share(window, rank, 2) for rank in range(2)]
        assert sorted(shares[0].micro_batches + shares[1].micro_batches) == list(window.micro_batches)
        assert abs(len(shares[0]) - len(shares[1])) <= 1
        assert shares[0].examples + shares[1].examples == window.examples
    assert rank_share(windows[-1], 1, 2) == Window(()) and rank_share(windows[-1], 0, 2) == Window(((100, 103),))


def test_the_gradient_sum_keeps_each_gradient_bit_for_bit_and_an_empty_share_adds_zeros(small_corpus, monkeypatch):
    """One rank's sum (a gloo group of 1) is its own gradient, exactly, whatever the buckets (here one
    parameter or a few each); a rank with an empty share (no backward: every grad None) adds zeros."""
    import torch.distributed as dist

    from tui_trainer.engine.gradient_sum import SummedGradients

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, dropout=0.0))
    data = WindowDataset(torch.randint(0, 64, (400,)).numpy(), 16)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        for bucket_bytes in (1, 16 * 1024, 25 * 2**20):
            monkeypatch.setattr(SummedGradients, "BUCKET_BYTES", bucket_bytes)
            model.zero_grad(set_to_none=True)
            accumulate_window(model, data, torch.arange(len(data)), [(0, 3), (3, 5)], total_tokens=5 * 16)
            local = [p.grad.clone() for p in model.parameters()]
            summed = SummedGradients(model.parameters())
            summed.sum_()
            assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), local))
            assert summed.allreduces == summed.buckets == len(summed.bucket_bytes) >= 1
            assert summed.local_sq_norm.item() == pytest.approx(sum(g.square().sum().item() for g in local), rel=1e-5)
        assert SummedGradients.BUCKET_BYTES == 25 * 2**20 and summed.buckets == 1  # (this tiny model: one bucket)
        model.zero_grad(set_to_none=True)
        SummedGradients(model.parameters()).sum_()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    finally:
        dist.destroy_process_group()


def test_nproc_is_taken_out_of_what_each_worker_gets():
    assert without_nproc(["train", "--nproc", "2", "--accum", "4", "--nproc=3"]) == ["train", "--accum", "4"]


def test_the_exit_code_is_rank_0s_not_the_sigterm_torchrun_tidied_up_with():
    def failed(**codes):
        return SimpleNamespace(failures={int(k[1:]): SimpleNamespace(exitcode=v) for k, v in codes.items()})

    assert _exit_code(failed(r0=-15, r1=2)) == 2  # rank 1 exited first; torchrun then killed rank 0
    assert _exit_code(failed(r0=2, r1=2)) == 2
    assert _exit_code(failed(r0=-15, r1=-15)) == 143
    assert _died(failed(r0=143, r1=-9)) == (1, "SIGKILL") and _died(failed(r0=-15, r1=2)) is None


@pytest.mark.parametrize("nproc, message", [(0, "--nproc must be 1 or more"),
                                            (os.cpu_count() * 4 + 1, "more than this machine's")])
def test_nproc_out_of_range_is_bad_input(small_corpus, tmp_path, nproc, message):
    with pytest.raises(UserError, match=message):
        check_nproc(nproc, tiny_config(small_corpus, tmp_path / "run"))


def test_backend_and_timeout_are_checked(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run")
    with pytest.raises(UserError, match="--backend"):
        validate(cfg.replace(train=cfg.train.__class__(**{**cfg.train.__dict__, "backend": "mpi"})))
    with pytest.raises(UserError, match="--dist-timeout"):
        validate(cfg.replace(train=cfg.train.__class__(**{**cfg.train.__dict__, "dist_timeout": 0})))


# -- two processes ----------------------------------------------------------------------------------

def test_two_processes_give_the_losses_of_one_process_with_twice_the_accumulation(small_corpus, tmp_path):
    common = ["--data", str(small_corpus), *MODEL, "--dropout", "0", "--epochs", "2", "--micro-batch", "5"]
    one = run(cli(*common, "--accum", "4", "--run-dir", str(tmp_path / "one")))
    assert one.returncode == 0, one.stderr
    two = run(cli(*common, "--accum", "2", "--run-dir", str(tmp_path / "two"), "--nproc", "2"))
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    a, b = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert len(a) == len(b) >= 20
    # The remainder windows are in it: a short last micro-batch and a window of one micro-batch.
    assert [(s["effective_batch"], s["micro_steps"]) for s in b if s["effective_batch"] != 20] == [(2, 1)] * 2
    assert {s["world_size"] for s in b} == {2} and {s["world_size"] for s in a} == {1}
    for x, y in zip(a, b):
        assert (x["step"], x["tokens"], x["effective_batch"]) == (y["step"], y["tokens"], y["effective_batch"])
        assert abs(x["loss"] - y["loss"]) < 1e-4 and abs(x["grad_norm"] - y["grad_norm"]) < 1e-4
    for x, y in zip(epochs(tmp_path / "one"), epochs(tmp_path / "two")):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-4 and abs(x["val_loss"] - y["val_loss"]) < 1e-4
        assert abs(x["val_bpb"] - y["val_bpb"]) < 1e-4  # (each rank reads its share of the same windows' bytes)
        assert x["effective_batch"] == y["effective_batch"] == 20
    # Rank 0 alone wrote the run dir, and says how many processes took each step.
    assert "micro-batch 5 x accum 2 x 2 processes" in two.stdout
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    # `tui-trainer view` of it says so too (its RunStarted comes from config.json and the records).
    from tui_trainer.events import RunStarted
    from tui_trainer.ui.follow import MetricsFollower
    started = next(e for e in MetricsFollower(tmp_path / "two").poll() if isinstance(e, RunStarted))
    assert started.processes == 2 and started.micro_batch * started.accum * started.processes == 20


def start_in_own_group(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_steps(run_dir: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"type": "step"') >= count:
            return
        assert process.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.05)
    raise AssertionError(f"no {count} steps within {timeout} s")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_a_signal_to_the_process_group_stops_every_rank_at_one_step_and_resumes_bit_exact(
        small_corpus, tmp_path, stop_signal):
    common = ["--data", str(small_corpus), *MODEL, "--dropout", "0.1", "--epochs", "3", "--micro-batch", "2",
              "--accum", "2", "--nproc", "2"]
    full = run(cli(*common, "--run-dir", str(tmp_path / "full")))
    assert full.returncode == 0, full.stderr
    stopped = tmp_path / "stopped"
    process = start_in_own_group(cli(*common, "--run-dir", str(stopped)), tmp_path / "log.txt")
    wait_for_steps(stopped, 20, process)
    os.killpg(process.pid, stop_signal)  # (torchrun and both ranks, as a closing terminal or `kill -- -PGID` does)
    assert process.wait(timeout=120) == 128 + stop_signal
    end = ended(stopped)
    assert end["reason"] == "interrupted" and end["exit_signal"] == stop_signal
    assert "continue with --resume" in (tmp_path / "log.txt").read_text()
    other_world = tmp_path / "other-world"
    shutil.copytree(stopped, other_world)

    resumed = run(cli("--resume", str(stopped), "--nproc", "2", "--log-every", "off"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = steps(tmp_path / "full"), steps(stopped)
    assert [(s["step"], s["loss"], s["grad_norm"]) for s in a] == [(s["step"], s["loss"], s["grad_norm"]) for s in b]
    assert ([(e["train_loss"], e["val_loss"]) for e in epochs(tmp_path / "full")]
            == [(e["train_loss"], e["val_loss"]) for e in epochs(stopped)])

    # Another world size: the same position and data order, said to be no longer bit-exact.
    one = run(cli("--resume", str(other_world), "--log-every", "off"))
    assert one.returncode == 0, one.stderr
    assert "resumed with 1 process" in one.stdout and "no longer bit-exact" in one.stdout
    after = steps(other_world)
    assert [s["step"] for s in after] == list(range(1, len(after) + 1))
    assert after[-1]["tokens_seen"] == a[-1]["tokens_seen"]  # every example of every epoch, once
    assert {s["world_size"] for s in after[end["steps"]:]} == {1}


def rank_env(rank: int, port: int) -> dict[str, str]:
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}


def test_a_rank_that_dies_ends_the_other_with_one_clear_line_and_the_run_saved(small_corpus, tmp_path):
    """Without torchrun (which would tear the group down itself): rank 1 is killed with SIGKILL and
    rank 0, waiting in a collective, must end at once with an error naming the cause, having saved
    the last step it took; a resume goes on from there."""
    run_dir = tmp_path / "run"
    args = cli("--data", str(small_corpus), *MODEL, "--dropout", "0", "--epochs", "3", "--micro-batch", "2",
               "--accum", "2", "--run-dir", str(run_dir), "--dist-timeout", "60", "--checkpoint-every", "1000")
    port = free_port()
    rank0 = subprocess.Popen(args, env=rank_env(0, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rank1 = subprocess.Popen(args, env=rank_env(1, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_steps(run_dir, 5, rank0)
        rank1.kill()
        started = time.monotonic()
        out, err = rank0.communicate(timeout=90)
        waited = time.monotonic() - started
    finally:
        for process in (rank0, rank1):
            if process.poll() is None:
                process.kill()
    assert rank0.returncode == 1, err
    assert waited < 45  # gloo sees the closed connection: no waiting for the 60 s timeout
    assert "lost the other processes" in out + err and "Traceback" not in err
    end = ended(run_dir)
    assert end["reason"] == "error" and "is saved: continue with --resume" in end["message"]
    resumed = run(cli("--resume", str(run_dir), "--log-every", "off"))
    assert resumed.returncode == 0, resumed.stderr
    after = steps(run_dir)
    assert [s["step"] for s in after] == list(range(1, len(after) + 1))  # nothing lost, nothing twice
    assert ended(run_dir)["reason"] == "completed"


def test_more_processes_than_an_epoch_has_micro_batches_is_one_line_and_nothing_made(small_corpus, tmp_path):
    done = run(cli("--data", str(small_corpus), *MODEL, "--micro-batch", "16", "--limit-train-batches", "1",
                   "--run-dir", str(tmp_path / "run"), "--nproc", "2"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "fewer than the 2 processes" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_nproc_inside_torchrun_is_bad_input(small_corpus, tmp_path):
    done = run(cli("--data", str(small_corpus), *MODEL, "--run-dir", str(tmp_path / "run"), "--nproc", "2"),
               env=rank_env(0, free_port()))
    assert done.returncode == 2 and "--nproc inside torchrun" in done.stderr


async def test_the_app_runs_on_rank_0_shows_the_processes_pauses_them_and_q_stops_both(
        small_corpus, tmp_path, monkeypatch):
    """The real app as rank 0 of 2 (this process) with rank 1 a silent worker: the batch panel says
    "x 2 processes"; a pause longer than --dist-timeout holds both ranks without a timeout (they
    agree every 0.2 s); `q` stops both after the same step, rank 1 exiting 0 like rank 0."""
    from test_app import send_key, wait_for

    from tui_trainer.cli.main import config_from_args, parse_args
    from tui_trainer.ui.factory import create_app

    flags = ["--data", str(small_corpus), *MODEL, "--dropout", "0", "--epochs", "20", "--micro-batch", "2",
             "--accum", "2", "--run-dir", str(tmp_path / "run"), "--dist-timeout", "4"]
    port = free_port()
    rank1 = subprocess.Popen(cli(*flags), env=rank_env(1, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            monkeypatch.setenv(key, rank_env(0, port)[key])
        cfg, given = config_from_args(parse_args(["train", *flags]))
        app = create_app(cfg, overrides=given)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.view.step >= 3, timeout=180, what="three steps")
            assert "micro-batch 2 x accum 2 x 2 processes" in " ".join(screen_text(app).split())
            send_key(app, "p")
            await wait_for(pilot, lambda: app.view.state == "paused", timeout=120, what="the pause")
            paused_at = app.view.step
            # longer than --dist-timeout 4: no collective may wait that long (it was 2 s: little margin
            # for a step of rank 0, which shares its process with the app, on a loaded machine)
            await pilot.pause(4.5)
            assert app.view.step == paused_at and rank1.poll() is None
            send_key(app, "p")
            await wait_for(pilot, lambda: app.view.step > paused_at + 2, timeout=120, what="steps after the pause")
            send_key(app, "q")
            await wait_for(pilot, lambda: not app.engine.running, timeout=120, what="the engine to end")
        assert rank1.wait(timeout=120) == 0, rank1.stderr.read()
    finally:
        if rank1.poll() is None:
            rank1.kill()
    end = ended(tmp_path / "run")
    assert end["reason"] == "interrupted" and end["steps"] == steps(tmp_path / "run")[-1]["step"]
    # One gradient all-reduce round per optimizer step (each DDP bucket once), not one per micro-step.
    sync = app.engine.trainer.session.grad_sync
    assert sync.most_rounds_in_a_window == 1 and sync.allreduces >= end["steps"]
    assert "error" not in rank1.stdout.read() + rank1.stderr.read()


def test_a_one_process_run_resumed_on_two_goes_on_from_its_odd_position(small_corpus, tmp_path):
    """A 1-process checkpoint at a cursor that is no window boundary of 2 processes (4 sequences into
    windows of 8): the windows go on from the cursor, every sequence of each epoch trained once."""
    from tui_trainer.cli.main import config_from_args, parse_args
    from tui_trainer.control import Control
    from tui_trainer.engine.loop import Trainer
    from tui_trainer.events import StepEvent

    run_dir = tmp_path / "run"
    flags = ["--data", str(small_corpus), *MODEL, "--dropout", "0", "--micro-batch", "2", "--accum", "2",
             "--epochs", "2", "--limit-train-batches", "6", "--run-dir", str(run_dir)]  # 12 sequences an epoch
    cfg, _ = config_from_args(parse_args(["train", *flags]))
    control = Control()

    class StopAfterTheFirstStep:
        def emit(self, event):
            if isinstance(event, StepEvent) and event.step == 1:
                control.stop()

    assert Trainer(cfg, StopAfterTheFirstStep(), control).run().reason == "interrupted"
    assert steps(run_dir)[-1]["tokens_seen"] == 4 * 32  # cursor 4: inside a 2-process window of 8
    resumed = run(cli("--resume", str(run_dir), "--nproc", "2", "--log-every", "off"))
    assert resumed.returncode == 0, resumed.stderr
    assert "saved with 1 process, resumed with 2 processes" in resumed.stdout
    after = steps(run_dir)
    assert [s["step"] for s in after] == list(range(1, len(after) + 1))
    assert [s["effective_batch"] for s in after] == [4, 8, 8, 4]  # epoch 1: 4 then the 8 left; epoch 2: 8 + 4
    assert after[-1]["tokens_seen"] == 2 * 12 * 32
    assert ended(run_dir)["reason"] == "completed"


OVERFLOW_ON_RANK_1 = '''
import os
if os.environ.get("RANK") == "1":
    import torch
    from tui_trainer.model import gpt

    forward, calls = gpt.GPT.forward, [0]

    def overflowing(self, idx, targets=None):
        out = forward(self, idx, targets)
        if targets is not None and self.training:
            calls[0] += 1
            if calls[0] in (3, 4):  # rank 1's micro-batches of optimizer step 2 (accum 2)
                out.register_hook(lambda grad: grad * float("inf"))
        return out

    gpt.GPT.forward = overflowing
'''


def test_fp16_every_rank_skips_the_step_one_rank_overflowed(small_corpus, tmp_path):
    """An inf in rank 1's gradient alone (injected from outside, by a sitecustomize): the all-reduce
    carries it to rank 0, whose scaler skips that step as rank 1's does (the same summed gradient, the
    same inf check), and the run goes on, not counting it towards --max-bad-steps 1."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(OVERFLOW_ON_RANK_1, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")])}
    model = [a if a != "fp32" else "fp16" for a in MODEL]
    done = run(cli("--data", str(small_corpus), *model, "--epochs", "1", "--micro-batch", "4", "--accum", "2",
                   "--limit-train-batches", "16", "--max-bad-steps", "1", "--run-dir", str(tmp_path / "run"),
                   "--nproc", "2"), env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    records = steps(tmp_path / "run")
    assert [r["skipped"] for r in records] == [False, True, False, False]
    assert ended(tmp_path / "run")["reason"] == "completed"


def test_a_killed_rank_gets_one_line_and_no_resume_advice_rank_0_did_not_give():
    # (a hostile trial: after a kill -9 during set-up the launcher said "continue with --resume RUN_DIR",
    # and the resume said there was no such run dir)
    assert died_line(1, "SIGKILL") == "error: rank 1 died (SIGKILL) and the other processes were stopped"
    assert "if the run dir has one" in died_line(0, "SIGKILL")


def test_rank_0s_word_after_a_lost_peer_reaches_the_launcher_and_joins_the_killed_ranks_line(tmp_path, monkeypatch):
    from tui_trainer.cli.launch import EXIT_CODE_FILE, _rank0_word, report_exit_code

    assert not report_exit_code(1, "error: lost")  # no launcher of ours: rank 0 says it itself
    path = tmp_path / "exit" / "exit-code"
    path.parent.mkdir()
    monkeypatch.setenv(EXIT_CODE_FILE, str(path))
    assert report_exit_code(1, "error: rank 0 lost the other processes (x)", "step 3 is saved:\ncontinue")
    assert _rank0_word(path) == (1, "error: rank 0 lost the other processes (x)", "step 3 is saved: continue")
    assert not path.parent.exists()  # (read once, then removed)
    path.parent.mkdir()
    report_exit_code(0)
    assert _rank0_word(path) == (0, "", "")
    assert _rank0_word(path) == (None, "", "")  # rank 0 died before it could write
    assert died_line(1, "SIGKILL", advice="step 3 is saved: continue with --resume r") == \
        "error: rank 1 died (SIGKILL) and the other processes were stopped; step 3 is saved: continue with --resume r"


def _rank_1_of(launcher: int) -> int | None:
    """The worker under the launcher whose environment says RANK=1."""
    found, todo = None, [launcher]
    while todo and found is None:
        pid = todo.pop()
        for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
            try:
                if b"RANK=1" in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
                    found = int(child)
            except OSError:
                pass
            todo.append(int(child))
    return found


def test_nproc_2_with_rank_1_killed_says_it_in_one_line_with_the_resume(small_corpus, tmp_path):
    """The launcher's end to end (about 6 s idle): rank 0 sees the loss, saves, and leaves its
    advice to the launcher, whose one line names the rank, the signal and the --resume; before,
    rank 0's "lost the other processes" line and the launcher's "rank 1 died" line both came."""
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(cli("--data", str(small_corpus), *MODEL, "--epochs", "50", "--micro-batch", "2",
                                    "--accum", "2", "--run-dir", str(run_dir), "--nproc", "2"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_steps(run_dir, 3, launcher)
        rank1 = _rank_1_of(launcher.pid)
        assert rank1 is not None
        os.kill(rank1, signal.SIGKILL)
        out, err = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: rank 1 died (SIGKILL)") and f"continue with --resume {run_dir}" in lines[0]
    assert ended(run_dir)["reason"] == "error"
