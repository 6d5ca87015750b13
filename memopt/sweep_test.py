"""The sweep's choice, what trials and seed runs train with, and each regime's defaults."""
import math

import torch

from memopt import optim
from memopt.config import CompareConfig
from memopt.models import build_model
from memopt.regimes import LEARNING_BAR, regime_hyperparameters, why_not_learning
from memopt.sweep import Trial, best_trial, grid_edge, resolved_lr, seed_options, trial_options


def test_the_best_trial_has_the_lowest_loss_and_a_failed_one_never_wins():
    trials = [Trial(1e-3, 2.0), Trial(3e-3, 1.5), Trial(1e-2, None, "NonFiniteLoss"), Trial(3e-2, math.nan)]
    assert best_trial(trials).lr == 3e-3
    assert best_trial([Trial(1e-3, 1.0), Trial(3e-3, 1.0)]).lr == 1e-3, "a tie goes to the first in grid order"
    assert best_trial([Trial(1e-2, None, "NonFiniteLoss"), Trial(3e-2, math.inf)]) is None


def test_a_winner_on_an_end_of_the_grid_is_flagged():
    grid = [1e-3, 3e-3, 1e-2]
    assert [grid_edge(grid, lr) for lr in grid] == ["lowest", "", "highest"]
    assert grid_edge([1e-3], 1e-3) == "", "one value: nothing to widen"


def test_trials_are_short_runs_of_the_same_options_and_seed_runs_the_whole_budget():
    cfg = CompareConfig(methods=["adamw", "galore"], max_steps=100, sweep_steps=20, warmup_steps=30, seeds=[3, 4],
                        metric_for_best_model="val_loss", batch_size=4)
    trial = trial_options(cfg, 3e-3)
    assert (trial.max_steps, trial.lr, trial.seed, trial.warmup_steps, trial.batch_size) == (20, 3e-3, 3, 20, 4)
    assert trial.metric_for_best_model == ""
    seed = seed_options(cfg, 4, 1e-2)
    assert (seed.max_steps, seed.lr, seed.seed, seed.warmup_steps, seed.metric_for_best_model) == (100, 1e-2, 4, 30, "val_loss")
    assert seed_options(cfg, 4, None).lr is None


def test_a_method_given_an_lr_is_not_swept_and_the_grid_can_be_its_own():
    cfg = CompareConfig(methods=["adamw", "galore", "blockllm"], method_lr_grid={"blockllm": [1e-2, 3e-2]},
                        method_args={"galore": {"lr": 0.02}})
    assert (cfg.lr_source("adamw"), cfg.lr_grid_for("adamw")) == ("sweep", [1e-3, 3e-3, 1e-2])
    assert (cfg.lr_source("galore"), cfg.lr_grid_for("galore"), resolved_lr(cfg, "galore")) == ("method_args", [], 0.02)
    assert cfg.lr_grid_for("blockllm") == [1e-2, 3e-2]
    one_lr = CompareConfig(methods=["adamw"], lr=5e-4)
    assert (one_lr.lr_source("adamw"), one_lr.lr_grid_for("adamw"), resolved_lr(one_lr, "adamw")) == ("--lr", [], 5e-4)
    no_sweep = CompareConfig(methods=["galore"], sweep_steps=0)
    assert (no_sweep.lr_source("galore"), resolved_lr(no_sweep, "galore")) == ("default", 0.01)


def test_blockllm_takes_the_authors_defaults_of_each_regime():
    """Fine-tuning: the packaged class (embed/lm_head frozen); pretraining: their C4 path (every tensor a
    candidate); in both the budget is (1 - sparsity) of the candidates' elements."""
    assert regime_hyperparameters("pretrain", "blockllm") == {"frozen_patterns": ()}
    assert regime_hyperparameters("finetune", "blockllm") == {} and regime_hyperparameters("pretrain", "galore") == {}
    for regime, frozen in (("finetune", {"model.embed_tokens.weight", "lm_head.weight"}), ("pretrain", set())):
        cfg = CompareConfig(methods=["blockllm"], model_name="llama-micro", regime=regime)
        model = build_model("llama-micro", vocab_size=64)
        opt = optim.build("blockllm", model, **cfg.method_hyperparameters("blockllm"))
        assert set(opt.frozen_names) == frozen, regime
        named = dict(model.named_parameters())
        candidates = sum(p.numel() for n, p in named.items() if n not in frozen)
        assert opt.budget == int(0.1 * candidates), regime
    mine = CompareConfig(methods=["blockllm"], regime="pretrain", method_args={"blockllm": {"frozen_patterns": ["embed"]}})
    assert mine.method_hyperparameters("blockllm")["frozen_patterns"] == ["embed"], "the user's own value wins"


def test_the_report_says_why_a_method_does_not_learn_only_when_it_does_not():
    assert why_not_learning("blockllm", "pretrain", LEARNING_BAR) == ""
    assert "re-selects them only every" in why_not_learning("blockllm", "pretrain", 0.9)
    assert why_not_learning("galore", "finetune", 0.95).endswith("it did not learn clearly within this budget")
    assert why_not_learning("adamw", "pretrain", None) == ""


def test_a_pretrained_folder_is_fine_tuned_as_it_is_and_pretrained_from_random_weights(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "m")
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "m").state_dict()
    finetune = build_model(str(tmp_path / "m")).state_dict()
    pretrain, again = (build_model(str(tmp_path / "m"), pretrained=False, seed=1).state_dict() for _ in range(2))
    assert all(torch.equal(saved[k], finetune[k]) for k in saved)
    assert set(pretrain) == set(saved) and not torch.equal(pretrain["lm_head.weight"], saved["lm_head.weight"])
    assert all(torch.equal(pretrain[k], again[k]) for k in pretrain), "seeded"
