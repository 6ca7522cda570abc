"""The model's GELU choice: exact (erf, the default: every old run unchanged) or tanh (GPT-2's)."""

from __future__ import annotations

import math

import torch

from tui_trainer.cli.main import main
from tui_trainer.config import ModelConfig, RunConfig
from tui_trainer.model.gpt import GPT


def test_a_config_written_before_the_choice_loads_as_exact():
    old = RunConfig().to_dict()
    del old["model"]["gelu"], old["model"]["init_from"]
    assert RunConfig.from_dict(old).model.gelu == "exact"


def test_tanh_is_gpt2s_formula_and_differs_from_exact():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.0, vocab_size=11)
    torch.manual_seed(0)
    exact = GPT(cfg)
    tanh = GPT(ModelConfig(**{**cfg.__dict__, "gelu": "tanh"}))
    tanh.load_state_dict(exact.state_dict())
    mlp = tanh.blocks[0].mlp
    h = torch.randn(2, 8, 16) * 20  # pre-activations of a few units: where the two GELUs part
    x = mlp.fc(h)
    gelu_new = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))  # GPT-2's formula
    with torch.no_grad():
        assert torch.allclose(mlp(h), mlp.proj(gelu_new), atol=1e-6)
        assert not torch.allclose(exact.blocks[0].mlp(h), mlp.proj(gelu_new), atol=1e-6)
        ids = torch.randint(0, 11, (2, 8))
        assert not torch.equal(exact(ids), tanh(ids))


def test_an_unknown_gelu_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["--no-ui", "--gelu", "sigmoid", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--gelu must be exact or tanh" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()

