"""Every config file composes; misspelled keys fail with a message naming them."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose

CONF = REPO / "conf"
GROUPS = ["model", "task", "generator", "algorithm", "experiment"]


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_primary_configs_compose_with_defaults():
    cfg = compose("train")
    assert cfg.model.name == "tiny_arith" and cfg.model.arch.head_dim == 64
    assert set(cfg.verifier) == {"integer", "format"}
    assert compose("sft").sft.steps == compose("sft").max_steps
    ev = compose("eval")
    assert list(ev.benchmarks) == ["gsm8k", "math500"] and set(ev.data) >= {"gsm8k", "olympiadbench"}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_file_composes(group, option):
    extra = ["model.path=/some/folder"] if (group, option) == ("model", "hf") else []
    cfg = compose("train", [f"{group}={option}", *extra])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("option", _options("verifier"))
def test_every_verifier_file_composes(option):
    cfg = compose("train", [f"verifier=[{option}]"])
    assert list(cfg.verifier) == [option]
    assert cfg.verifier[option]["_target_"].startswith("reasonrl.verifiers.")


def test_experiment_presets_set_what_they_promise():
    r1 = compose("train", ["experiment=r1_zero_arith"])
    cs = compose("train", ["experiment=sft_cold_start_arith"])
    assert r1.experiment_name == "r1_zero_arith" and not r1.cold_start.enabled
    assert cs.experiment_name == "sft_cold_start_arith" and cs.cold_start.enabled


def test_stable_overrides():
    cfg = compose("train", ["max_steps=7", "generator=hf", "experiment=r1_zero_arith", "algorithm=grpo"])
    assert cfg.max_steps == 7 and cfg.generator["_target_"] == "reasonrl.rollout.HFGenerator"


def test_misspelled_override_names_the_key():
    with pytest.raises(Exception, match="max_stpes"):
        compose("train", ["max_stpes=3"])
    with pytest.raises(Exception, match="lerning_rate"):
        compose("train", ["optim.lerning_rate=0.1"])


def test_misspelled_key_in_a_config_file_names_the_key(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from reasonrl.config import register

    register()
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    for sub in ("model", "task", "generator", "verifier", "algorithm"):
        (conf / sub).mkdir()
        for f in (CONF / sub).glob("*.yaml"):
            (conf / sub / f.name).write_text(f.read_text())
    (conf / "train.yaml").write_text((CONF / "train.yaml").read_text())
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\nrollout:\n  temprature: 0.7\n")
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        with pytest.raises(Exception, match="temprature"):
            hydra_compose(config_name="train", overrides=["experiment=typo"])


def test_unknown_generator_option_is_named_at_build():
    from reasonrl.build import build_generator

    cfg = compose("train", ["+generator.batchsize=8"])
    with pytest.raises(ValueError, match="batchsize"):
        build_generator(cfg.generator, model=None, tokenizer=None)


def test_build_refuses_targets_outside_the_allowlist():
    from reasonrl.build import instantiate

    with pytest.raises(ValueError, match="outside the allowed modules"):
        instantiate({"_target_": "os.system", "command": "true"}, "generator")


def test_sft_runs_have_no_training_checkpoint_keys():
    """reasonrl-sft writes only its final folder: a training-checkpoint knob there is an error, not a no-op."""
    from hydra.errors import ConfigCompositionException

    assert compose("sft", ["checkpoint.final=false"]).checkpoint.final is False
    with pytest.raises(ConfigCompositionException, match="every"):
        compose("sft", ["checkpoint.every=5"])


def test_a_negative_pass_cost_is_refused_by_name():
    from reasonrl.config import check_train_config

    check_train_config(compose("train", ["rollout.pass_cost_tokens=null", "cold_start.pass_cost_tokens=0"]))
    with pytest.raises(ValueError, match=r"rollout.pass_cost_tokens must be >= 0 .* not -1"):
        check_train_config(compose("train", ["rollout.pass_cost_tokens=-1"]))
    with pytest.raises(ValueError, match=r"cold_start.pass_cost_tokens"):
        check_train_config(compose("train", ["cold_start.pass_cost_tokens=-5"]))
