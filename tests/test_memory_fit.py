"""--batch with --micro-batch auto: the budget parsed, the candidates, and a measured choice that
stays under the budget and leaves the run's RNG alone (engine/memory_fit.py)."""

import pytest
import torch

from tui_trainer.config import ModelConfig
from tui_trainer.engine.memory_fit import candidates, fit_micro_batch, measure_step_peak, parse_memory_budget
from tui_trainer.errors import UserError
from tui_trainer.model.gpt import GPT

GB = 10 ** 9


@pytest.mark.parametrize(("text", "expected"), [
    ("6GB", 6 * GB), ("6 gb", 6 * GB), ("512MiB", 512 * 2 ** 20), ("1.5G", int(1.5 * GB)), ("50%", 4 * GB),
])
def test_a_memory_budget_is_a_size_or_a_share_of_what_is_free(text, expected):
    assert parse_memory_budget(text, available=8 * GB, total=16 * GB) == expected


@pytest.mark.parametrize("text", ["lots", "6XB", "0GB", "0%", "150%", "-1GB", "32GB"])
def test_a_memory_budget_that_is_no_size_or_too_big_is_one_clear_error(text):
    with pytest.raises(UserError) as error:
        parse_memory_budget(text, available=8 * GB, total=16 * GB)
    assert "--memory-budget" in error.value.one_line()


def test_candidates_are_powers_of_two_that_split_the_batch_evenly():
    assert candidates(128, 1) == [128, 64, 32, 16, 8, 4, 2, 1]
    assert candidates(96, 2) == [16, 8, 4, 2, 1]
    assert candidates(12, 1) == [4, 2, 1]


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=65, dropout=0.1))


def test_a_bigger_micro_batch_measures_a_bigger_peak():
    model = _model()
    small, _ = measure_step_peak(model, 2, 64, 65, torch.device("cpu"), None)
    large, _ = measure_step_peak(model, 64, 64, 65, torch.device("cpu"), None)
    assert large > small + 10 * 2 ** 20, (small, large)  # ~9 KB a token more activations: tens of MB


def test_the_choice_stays_under_two_budgets_and_leaves_the_rng_alone():
    model = _model()
    device = torch.device("cpu")
    peak_32, _ = measure_step_peak(model, 32, 64, 65, device, None)
    peak_8, _ = measure_step_peak(model, 8, 64, 65, device, None)
    rng_before = torch.get_rng_state()
    weights_before = [p.detach().clone() for p in model.parameters()]
    roomy = fit_micro_batch(model, batch=32, processes=1, block_size=64, vocab_size=65, device=device,
                            autocast_dtype=None, budget_bytes=4 * peak_32, state_bytes=0)
    tight = fit_micro_batch(model, batch=32, processes=1, block_size=64, vocab_size=65, device=device,
                            autocast_dtype=None, budget_bytes=int(1.5 * peak_8), state_bytes=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    for fit in (roomy, tight):
        assert fit.micro_batch * fit.accum == 32
        assert fit.peak_bytes <= fit.budget_bytes
    assert tight.micro_batch < 32 and tight.micro_batch <= roomy.micro_batch
    assert "micro-batch" in tight.describe() and "budget" in tight.describe()


def test_nothing_fits_names_the_levers():
    with pytest.raises(UserError) as error:
        fit_micro_batch(_model(), batch=2, processes=1, block_size=64, vocab_size=65, device=torch.device("cpu"),
                        autocast_dtype=None, budget_bytes=1000, state_bytes=0)
    assert "--checkpoint-activations" in error.value.one_line()


def test_the_reason_says_which_size_fits_and_which_was_picked_for_speed():
    from tui_trainer.engine.memory_fit import Probe, choose

    # (a CPU where tokens/s stops growing past 16: 64 fits, 16 is taken; the words said "the largest
    # that fits" in the help and the flags, whichever was taken)
    flat = [Probe(64, 300, 1000.0), Probe(32, 200, 990.0), Probe(16, 100, 960.0), Probe(8, 50, 700.0)]
    chosen, reason = choose(flat, "cpu")
    assert chosen.micro_batch == 16
    assert reason.startswith("64 is the largest that fits the budget; 16 was picked for speed"), reason
    # The largest is also the fastest (the smaller ones over 5% slower): both facts, one size.
    steep = [Probe(64, 300, 1000.0), Probe(32, 200, 900.0)]
    chosen, reason = choose(steep, "cpu")
    assert chosen.micro_batch == 64 and reason.startswith("the largest that fits the budget, and on this CPU the "
                                                          "fastest too"), reason
    assert choose(steep[:1], "cpu")[1] == "the largest that fits the budget"  # nothing smaller was probed
    assert choose(flat, "cuda") == (flat[0], "the largest that fits the budget")
