"""The cached step for one token of one sequence (tui_trainer/model/one_position.py): taken where it
can be, the same logits as the general cached step and the training forward, and left alone where
numpy can't take the model."""

from __future__ import annotations

import warnings

import pytest
import torch
from threadpoolctl import threadpool_info

from tui_trainer.config import ModelConfig
from tui_trainer.model import one_position
from tui_trainer.model.gpt import GPT
from tui_trainer.model.one_position import blas_threads, cache_size_bytes, last_level_cache_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_with_clear_choices(gelu: str = "exact") -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=24, dropout=0.0, vocab_size=29, gelu=gelu))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, param.shape[-1] ** -0.5)  # larger than the init's: logits far apart
    return model.eval()


def general_cache(model: GPT, batch: int = 1):
    """A cache whose every step takes the general path (the one-position step switched off)."""
    cache = model.new_kv_cache(batch)
    cache.one_position = None
    return cache


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_each_token_matches_the_general_step_and_the_training_forward(gelu):
    model = model_with_clear_choices(gelu)
    ids = torch.randint(0, 29, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        fast, general = model.new_kv_cache(), general_cache(model)
        assert fast.one_position is not None  # a float32 CPU model, one sequence: the step is taken
        model.forward_cached(ids[:, :5], fast)
        model.forward_cached(ids[:, :5], general)
        for position in range(5, 24):
            token = ids[:, position:position + 1]
            logits = model.forward_cached(token, fast)
            assert torch.allclose(logits, model.forward_cached(token, general), atol=1e-5, rtol=0)
            full = model(ids[:, :position + 1])[:, -1]
            assert torch.allclose(logits, full, atol=1e-5, rtol=0), position
        assert fast.length == general.length == 24
        # the keys and values it wrote are the ones the general step wrote
        for mine, theirs in zip(fast.buffers, general.buffers):
            assert torch.allclose(mine, theirs, atol=1e-5, rtol=0)


def test_its_logits_are_not_overwritten_by_the_next_token():
    model = model_with_clear_choices()
    with torch.inference_mode():
        cache = model.new_kv_cache()
        model.forward_cached(torch.tensor([[3, 4]]), cache)
        first = model.forward_cached(torch.tensor([[5]]), cache)
        kept = first.clone()
        second = model.forward_cached(torch.tensor([[6]]), cache)
    assert torch.equal(first, kept)
    assert not torch.equal(first, second)


def test_it_reads_the_parameters_themselves_so_an_update_in_place_shows():
    model = model_with_clear_choices()
    with torch.inference_mode():
        cache = model.new_kv_cache()
        model.forward_cached(torch.tensor([[1, 2, 3]]), cache)
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight.mul_(1.5)  # after the cache was made (keys of positions 0-2 kept)
        model.lm_head.weight.add_(0.1)
    with torch.inference_mode():
        logits = model.forward_cached(torch.tensor([[4]]), cache)
        general = general_cache(model)
        general.buffers[0].copy_(cache.buffers[0])
        general.buffers[1].copy_(cache.buffers[1])
        general.length = 3
        expected = model.forward_cached(torch.tensor([[4]]), general)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0)


def test_what_numpy_cannot_take_keeps_the_general_step():
    model = model_with_clear_choices()
    assert model.new_kv_cache(batch=2).one_position is None  # several sequences: a matrix product
    bf16 = model_with_clear_choices().to(torch.bfloat16)
    assert bf16.new_kv_cache().one_position is None
    transposed = model_with_clear_choices()
    fc = transposed.blocks[0].mlp.fc
    fc.weight = torch.nn.Parameter(fc.weight.detach().t().contiguous().t())  # same values, column-major
    assert transposed.new_kv_cache().one_position is None
    with torch.inference_mode():  # and that model still generates, by the general step
        cache = transposed.new_kv_cache()
        logits = transposed.forward_cached(torch.tensor([[1, 2, 3]]), cache)
        logits = transposed.forward_cached(torch.tensor([[4]]), cache)
        full = transposed(torch.tensor([[1, 2, 3, 4]]))[:, -1]
    assert torch.allclose(logits, full, atol=1e-5, rtol=0)


def test_with_autograd_on_the_general_step_runs_and_its_output_keeps_its_history():
    model = model_with_clear_choices()
    cache = model.new_kv_cache()
    model.forward_cached(torch.tensor([[1, 2]]), cache)
    logits = model.forward_cached(torch.tensor([[3]]), cache)  # grad on: a numpy product would drop it
    assert logits.requires_grad and logits.grad_fn is not None
    with torch.inference_mode():
        assert not model.forward_cached(torch.tensor([[4]]), cache).requires_grad


def test_a_diverged_model_gives_non_finite_logits_without_a_numpy_warning():
    model = model_with_clear_choices()
    with torch.no_grad():  # token 3 at position 2: inf + -inf in the embedding's add, NaN from then on
        model.token_embedding.weight[3, 0] = float("inf")
        model.position_embedding.weight[2, 0] = float("-inf")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered" would raise here
        cache = model.new_kv_cache()
        model.forward_cached(torch.tensor([[1, 2]]), cache)
        assert cache.one_position is not None
        logits = model.forward_cached(torch.tensor([[3]]), cache)
    assert not torch.isfinite(logits).all()


def test_overflow_in_the_products_is_quiet_too():
    model = model_with_clear_choices()
    with torch.no_grad():
        model.token_embedding.weight[7].fill_(3e38)  # squares overflow in the products
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = model.new_kv_cache()
        model.forward_cached(torch.tensor([[1, 2]]), cache)
        model.forward_cached(torch.tensor([[7]]), cache)


def test_under_cpu_autocast_the_general_step_runs():
    model = model_with_clear_choices()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_kv_cache()
        model.forward_cached(torch.tensor([[1, 2]]), cache)
        logits = model.forward_cached(torch.tensor([[3]]), cache)  # numpy can't read bf16 activations
    assert logits.shape == (1, 29) and logits.dtype == torch.bfloat16


@pytest.mark.parametrize("token", [-1, 29])
def test_an_id_outside_the_vocabulary_is_refused_and_the_cache_does_not_move(token):
    model = model_with_clear_choices()
    with torch.inference_mode():
        cache = model.new_kv_cache()
        model.forward_cached(torch.tensor([[1, 2]]), cache)
        with pytest.raises(IndexError):  # numpy alone would take -1 as the last row
            model.forward_cached(torch.tensor([[token]]), cache)
    assert cache.length == 2


def test_torch_threads_are_restored_after_a_step_and_after_a_failed_one():
    model = model_with_clear_choices()
    torch.set_num_threads(2)  # (the module's fixture puts it back to 1, then to what it was)
    with torch.inference_mode():
        cache = model.new_kv_cache()
        model.forward_cached(torch.tensor([[1, 2]]), cache)
        model.forward_cached(torch.tensor([[3]]), cache)
        assert torch.get_num_threads() == 2
        with pytest.raises(IndexError):
            model.forward_cached(torch.tensor([[-5]]), cache)
        assert torch.get_num_threads() == 2


def test_the_choice_between_steps_runs_at_one_torch_thread_and_the_count_comes_back(monkeypatch):
    from tui_trainer.model import sampling

    seen: list[int] = []
    real_pick_next = sampling.pick_next

    def pick_next_seen(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_pick_next(*args, **kwargs)

    monkeypatch.setattr(sampling, "pick_next", pick_next_seen)
    torch.set_num_threads(2)
    sampling.generate(model_with_clear_choices(), [1, 2, 3], sampling.SamplingSettings(max_new_tokens=30, temperature=0))
    assert seen == [1] * 30  # 30 tokens over a context of 24: slides included
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("text, size", [("32768K", 32 << 20), ("1M", 1 << 20), ("512", 512), ("2G\n", 2 << 30),
                                        ("", 0), ("-1K", 0), ("12T", 0), ("1" * 40, 0)])
def test_a_cache_size_as_sysfs_writes_it(text, size):
    assert cache_size_bytes(text) == size


def test_the_last_level_cache_is_the_highest_level_listed(tmp_path):
    for name, level, size in (("index0", "1", "32K"), ("index2", "2", "1024K"), ("index3", "3", "32768K"),
                              ("index4", "x", "64M")):  # a level that isn't a number is passed over
        (tmp_path / name).mkdir()
        (tmp_path / name / "level").write_text(level + "\n")
        (tmp_path / name / "size").write_text(size + "\n")
    (tmp_path / "index9").mkdir()  # no files: passed over
    assert last_level_cache_bytes(tmp_path) == 32 << 20
    assert last_level_cache_bytes(tmp_path / "absent") == 0


def test_numpy_blas_gets_one_thread_for_a_model_in_the_cache_and_torchs_count_for_a_larger_one(monkeypatch):
    assert blas_threads(19 << 20, 2, 32 << 20) == 1
    assert blas_threads(340 << 20, 2, 32 << 20) == 2
    assert blas_threads(19 << 20, 2, 0) == 2  # the cache unknown: torch's count
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not blas:
        pytest.skip("numpy has no BLAS threadpoolctl can see")
    model = model_with_clear_choices()  # ~20 KB of weights
    torch.set_num_threads(2)
    for cache_bytes, expected in ((1 << 30, 1), (1 << 10, 2)):
        monkeypatch.setattr(one_position, "last_level_cache_bytes", lambda: cache_bytes)
        with torch.inference_mode():
            cache = model.new_kv_cache()
            model.forward_cached(torch.tensor([[1, 2]]), cache)
            model.forward_cached(torch.tensor([[3]]), cache)
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {expected}
