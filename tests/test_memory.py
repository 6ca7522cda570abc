"""The pre-flight memory floor: its parts match the real model and what autograd really keeps."""

from __future__ import annotations

import pytest
import torch

from tui_trainer.config import ModelConfig, RunConfig, TrainConfig
from tui_trainer.engine.memory import (
    attention_matrix_bytes,
    cgroup_room,
    check_fits,
    parameter_count,
    saved_for_backward_bytes,
    training_bytes_floor,
)
from tui_trainer.errors import UserError
from tui_trainer.model.gpt import GPT


@pytest.mark.parametrize("shape", [(1, 2, 32, 16, 65), (3, 4, 64, 40, 100), (6, 8, 256, 128, 65)])
def test_parameter_count_is_exact(shape):
    n_layer, n_head, n_embd, block_size, vocab = shape
    cfg = ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab)
    assert parameter_count(cfg) == GPT(cfg).num_parameters()


def test_attention_term_is_what_dropout_makes_autograd_keep_on_cpu():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=256, vocab_size=65, dropout=0.1)
    idx = torch.randint(0, 65, (2, 256))
    with_dropout = GPT(cfg).train()
    without = GPT(ModelConfig(**{**cfg.__dict__, "dropout": 0.0})).train()
    extra = saved_for_backward_bytes(with_dropout, idx, idx) - saved_for_backward_bytes(without, idx, idx)
    predicted = attention_matrix_bytes(cfg, micro_batch=2, device_type="cpu")
    # The other dropout masks (embeddings, residuals, MLP) are linear in T: small beside T^2 at T=256.
    assert 0.9 * predicted <= extra <= 1.2 * predicted


def test_a_run_that_cannot_fit_is_refused_before_it_starts_and_a_normal_one_passes():
    model = ModelConfig(vocab_size=65)
    check_fits(RunConfig(model=model), torch.device("cpu"))  # the default run fits any machine that runs tests
    huge = RunConfig(model=model, train=TrainConfig(micro_batch=10_000_000))
    with pytest.raises(UserError, match="needs at least"):
        check_fits(huge, torch.device("cpu"))
    # A micro-batch never holds more sequences than the training split has: this one runs as 500.
    check_fits(huge, torch.device("cpu"), train_windows=500)


def test_bf16_autocast_halves_the_activations_in_the_floor():
    cfg = RunConfig(model=ModelConfig(vocab_size=65, dropout=0.0), train=TrainConfig(micro_batch=64, noise_scale=False))
    state = 4 * parameter_count(cfg.model) * 4
    fp32 = training_bytes_floor(cfg, "cuda") - state
    assert training_bytes_floor(cfg, "cuda", autocast_bf16=True) - state == fp32 // 2


def test_the_noise_scale_counts_one_more_copy_of_the_gradients():
    without = RunConfig(model=ModelConfig(vocab_size=65), train=TrainConfig(noise_scale=False))
    with_it = without.replace(train=TrainConfig(noise_scale=True))
    extra = training_bytes_floor(with_it, "cpu") - training_bytes_floor(without, "cpu")
    assert extra == parameter_count(without.model) * 4
    one_micro_batch = without.replace(train=TrainConfig(noise_scale=True, accum=1))  # nothing to measure
    assert training_bytes_floor(one_micro_batch, "cpu") == training_bytes_floor(without, "cpu")


def test_a_container_memory_limit_counts(tmp_path):
    limit, usage, stat = tmp_path / "memory.max", tmp_path / "memory.current", tmp_path / "memory.stat"
    files = ((str(limit), str(usage), str(stat), "inactive_file"),)
    limit.write_text("4294967296\n")
    usage.write_text("3221225472\n")  # 3 GiB used, 2 GiB of it page cache the kernel can drop
    stat.write_text("anon 1073741824\ninactive_file 2147483648\nactive_file 0\n")
    assert cgroup_room(files) == 3 * 2 ** 30
    stat.unlink()  # no stat file: all of the usage counts
    assert cgroup_room(files) == 2 ** 30
    limit.write_text("max\n")
    assert cgroup_room(files) is None
    assert cgroup_room(((str(tmp_path / "none"), str(usage), str(stat), "inactive_file"),)) is None
