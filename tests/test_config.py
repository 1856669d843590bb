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
    assert compose("sft").max_steps == 150  # reasonrl-sft's length: max_steps, as for reasonrl-train
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


def test_evaluation_length_follows_the_rollout_length_unless_set():
    assert compose("train", ["rollout.max_new_tokens=30"]).eval.max_new_tokens == 30
    assert compose("train", ["rollout.max_new_tokens=30", "eval.max_new_tokens=7"]).eval.max_new_tokens == 7
    assert compose("sft").eval.max_new_tokens == 48  # no rollout there: the schema's own default
    for preset in ("smollm2_gsm8k", "smollm2_math", "smollm2_mbpp", "sft_cold_start_gsm8k"):
        cfg = compose("train", [f"experiment={preset}"])
        assert cfg.eval.max_new_tokens == cfg.rollout.max_new_tokens > 48, preset


def test_the_lora_preset_is_smollm2_gsm8k_with_adapters():
    """experiment=smollm2_gsm8k_lora: the GSM8K preset, rank-16 adapters on every linear layer, a tenfold learning
    rate; nothing else differs."""
    from reasonrl.config import check_train_config

    full, lora = compose("train", ["experiment=smollm2_gsm8k"]), compose("train", ["experiment=smollm2_gsm8k_lora"])
    assert (lora.model.lora.r, lora.model.lora.alpha, list(lora.model.lora.target_modules)) == (16, 32, ["all-linear"])
    assert lora.optim.lr == pytest.approx(10 * full.optim.lr) and lora.experiment_name == "smollm2_gsm8k_lora"
    a, b = OmegaConf.to_container(full, resolve=True), OmegaConf.to_container(lora, resolve=True)
    for c in (a, b):
        c["model"].pop("lora"), c["optim"].pop("lr"), c.pop("experiment_name")
    assert a == b
    check_train_config(lora)


def test_smollm2_presets_share_one_cpu_base():
    """What the SmolLM2 presets share is written once (conf/experiment/_smollm2_cpu.yaml); each says what differs."""
    presets = ("smollm2_gsm8k", "smollm2_math", "smollm2_mbpp", "sft_cold_start_gsm8k")
    for preset in presets:
        text = (CONF / "experiment" / f"{preset}.yaml").read_text()
        assert "- _smollm2_cpu" in text and "prompts_per_step" not in text and "max_model_len" not in text
        cfg = compose("train", [f"experiment={preset}"])
        assert cfg.model.name == "smollm2_135m" and cfg.generator._target_.endswith("VLLMGenerator")
        assert (cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt, cfg.rollout.micro_batch_size) == (4, 4, 4)
        assert (cfg.task.heldout_size, cfg.generator.max_model_len, cfg.optim.lr, cfg.eval.sampled) == (32, 1024, 1e-6, False)
    # what a preset sets still wins over the base, and the command line over both
    assert compose("train", ["experiment=sft_cold_start_gsm8k"]).max_steps == 5
    assert compose("train", ["experiment=smollm2_math"]).eval.every == 5
    assert compose("train", ["experiment=smollm2_gsm8k"]).model.compute_dtype == "float32"
    cfg = compose("train", ["experiment=smollm2_gsm8k", "generator=hf", "rollout.prompts_per_step=8"])
    assert cfg.generator._target_.endswith("HFGenerator") and cfg.rollout.prompts_per_step == 8


def _constructor(option):
    import inspect

    from reasonrl.build import _resolve

    cfg = compose("train", [f"verifier=[{option}]"])
    return cfg.verifier[option], inspect.signature(_resolve(cfg.verifier[option]["_target_"])).parameters


@pytest.mark.parametrize("option", _options("verifier"))
def test_verifier_files_say_only_what_differs_from_the_constructor(option):
    """A verifier's defaults are written once, in its constructor: the composed node holds every option at the
    constructor's value (so any is overridable without '+'), and the file restates none of them."""
    import yaml

    node, params = _constructor(option)
    own = (yaml.safe_load((CONF / "verifier" / f"{option}.yaml").read_text()) or {}).get(option, {})
    for key, value in own.items():
        if key in params:
            assert value != params[key].default, f"verifier/{option}.yaml restates {key}={value!r}"
    if option == "integer":  # its file predates the constructor's option; a resumed run compares the node as saved
        return
    for key, p in params.items():
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        assert node[key] == default, key


def test_verifier_options_are_overridable_without_plus():
    cfg = compose("train", ["verifier=[math,format,code]", "verifier.math.rel_tol=1e-6", "verifier.format.partial_credit=true"])
    assert cfg.verifier.math.rel_tol == 1e-6 and cfg.verifier.format.partial_credit is True
    assert cfg.verifier.format.weight == 0.1 and cfg.verifier.code.timeout_s == 5.0


@pytest.mark.parametrize(
    "kind,key",
    [("train", "cold_start.eval_every"), ("sft", "sft.enabled"), ("sft", "sft.steps")],
)
def test_removed_knobs_are_unknown_keys(kind, key):
    """Knobs nothing read are gone from the schema: setting one is the usual unknown-key error, not a no-op."""
    from reasonrl.cli import key_problem
    from reasonrl.config import SCHEMAS

    assert key_problem(SCHEMAS[kind], key).startswith(f"unknown key {key!r}")
    with pytest.raises(Exception, match=key.split(".")[-1]):
        compose(kind, [f"{key}=3"])


def test_a_checkpoint_holding_a_removed_key_still_resumes():
    from reasonrl.checkpoint import config_changes

    new = {"cold_start": {"enabled": False, "steps": 150}, "seed": 0}
    assert config_changes({**new, "cold_start": {**new["cold_start"], "eval_every": 50}}, new) == []


def test_algorithm_values_are_checked_in_the_config_naming_the_key():
    from reasonrl.config import check_train_config

    for bad, key in (
        (["algorithm.dual_clip=1.0"], "algorithm.dual_clip must be above 1"),
        (["algorithm.overlong_buffer=-2"], "algorithm.overlong_buffer must be >= 0"),
        (["algorithm.overlong_buffer=49"], "algorithm.overlong_buffer=49 exceeds rollout.max_new_tokens=48"),
    ):
        with pytest.raises(ValueError, match=key):
            check_train_config(compose("train", bad))
    check_train_config(compose("train", ["algorithm.dual_clip=3.0", "algorithm.overlong_buffer=48"]))


def test_micro_batch_knobs_are_one_node_for_rl_and_sft():
    """rollout, cold_start and sft carry the same micro-batch knobs (MicroBatchConfig), read one way by the RL
    update and by SFT, and checked one way, naming the node."""
    import dataclasses

    from reasonrl.config import (
        ColdStartConfig,
        ConfigError,
        FinetuneConfig,
        MicroBatchConfig,
        RolloutConfig,
        check_sft_config,
        check_train_config,
        micro_batching,
    )
    from reasonrl.update import UpdateSettings

    knobs = [f.name for f in dataclasses.fields(MicroBatchConfig)]
    for node in (RolloutConfig, ColdStartConfig, FinetuneConfig):
        assert issubclass(node, MicroBatchConfig)
    cfg = compose(
        "train", ["rollout.micro_batch_size=8", "rollout.max_tokens_per_micro_batch=512", "rollout.pass_cost_tokens=null"]
    )
    settings = UpdateSettings.from_config(cfg, pad_id=0, use_tis=False)
    assert {k: getattr(settings, k) for k in knobs} == micro_batching(cfg.rollout) == dict(zip(knobs, [8, 512, None]))
    assert micro_batching(compose("sft").sft) == micro_batching(compose("train").cold_start) == dict(zip(knobs, [0, 16384, 128]))
    with pytest.raises(ConfigError, match=r"sft.pass_cost_tokens must be >= 0 .* not -1"):
        check_sft_config(compose("sft", ["sft.pass_cost_tokens=-1"]))
    with pytest.raises(ConfigError, match=r"rollout.micro_batch_size must be at least 1, not 0"):
        check_train_config(compose("train", ["rollout.micro_batch_size=0"]))
    with pytest.raises(ConfigError, match=r"cold_start.max_tokens_per_micro_batch must be >= 0"):
        check_train_config(compose("train", ["cold_start.max_tokens_per_micro_batch=-1"]))
    check_train_config(compose("train", ["cold_start.micro_batch_size=0"]))  # SFT: 0 is the whole batch
