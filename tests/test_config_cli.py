"""The console scripts refuse a bad command line or config at once, with one short message and a suggestion,
before anything slow happens; --help lists the main settings; torch's threads fit the cores.

Each subprocess run here ends within seconds of starting Python: a run that got past the checks would build
the tiny base model first (minutes), which the timeouts below turn into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose

BIN = Path(sys.executable).parent


def cli(program: str, *args: str, tmp_path: Path, env: dict | None = None, timeout: float = 120, cwd=None):
    """Run a console script from a neutral directory with a private, empty cache."""
    full_env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [str(BIN / program), *args],
        cwd=cwd or tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def nothing_built(tmp_path: Path) -> bool:
    return not (tmp_path / "cache" / "reasonrl" / "models").exists()


# -- unknown keys, with or without Hydra's `+` ------------------------------------------------------
@pytest.mark.parametrize("override", ["+rollout.temprature=0.5", "rollout.temprature=0.5"])
def test_a_misspelled_key_fails_with_a_suggestion_with_or_without_plus(tmp_path, override):
    out = cli("reasonrl-train", "--cfg", "job", "max_steps=1", override, tmp_path=tmp_path)
    assert out.returncode == 2, out.stdout[-500:] + out.stderr[-2000:]
    assert "unknown key 'rollout.temprature'" in out.stderr
    assert "did you mean 'rollout.temperature'" in out.stderr
    assert "To append to your config use +" not in out.stderr  # Hydra's advice, which led to the silent no-op
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_key_added_with_plus_is_refused_after_composition_too(tmp_path):
    """Keys that reach the composed config with `+` (from anywhere) stop the run before main."""
    from reasonrl.cli import _checked, unknown_keys
    from reasonrl.config import TrainConfig, check_train_config

    cfg = compose("train", ["+rollout.temprature=0.5", "+task.fields.question=prompt"])
    assert unknown_keys(cfg) == ["rollout.temprature"]  # task.fields is free-form: +task.fields.x is how it is used
    called = []
    with pytest.raises(SystemExit) as e:
        _checked(called.append, "train", check_train_config, TrainConfig)(cfg)
    assert e.value.code == 2 and called == []


def test_suggestions_search_the_whole_schema():
    from reasonrl.cli import key_problem
    from reasonrl.config import EvalRunConfig, TrainConfig

    assert "did you mean 'max_steps'" in key_problem(TrainConfig, "max_stpes")
    assert "'rollout.temperature'" in key_problem(TrainConfig, "temprature")  # the leaf, in whichever node
    assert key_problem(TrainConfig, "optim.lerning_rate").startswith("unknown key 'optim.lerning_rate'")
    assert key_problem(TrainConfig, "task.fields.anything") is None  # free-form
    assert key_problem(TrainConfig, "model.arch.num_layers") is None  # an Optional schema node
    assert key_problem(TrainConfig, "generator.batch_size") is None  # checked against the constructor instead
    assert "did you mean 'max_new_tokens'" in key_problem(EvalRunConfig, "max_new_token")


def test_a_misspelled_verifier_lists_the_available_ones(tmp_path):
    out = cli("reasonrl-train", "--cfg", "job", "verifier=[integr]", tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "did you mean 'integer'" in out.stderr
    assert "built in: code, code_format, format, integer, math" in out.stderr
    assert "plugins" in out.stderr


def test_a_misspelled_verifier_option_is_named_with_the_option_meant():
    from reasonrl.build import check_node, check_verifier_nodes

    with pytest.raises(ValueError, match=r"'wieght'.*did you mean 'weight'"):
        check_verifier_nodes(compose("train", ["+verifier.integer.wieght=2"]).verifier)
    with pytest.raises(ValueError, match=r"verifier.integr is not a configured verifier \(did you mean 'integer'"):
        check_verifier_nodes(compose("train", ["+verifier.integr.weight=2"]).verifier)
    with pytest.raises(ValueError, match=r"did you mean 'batch_size'"):
        check_node(compose("train", ["+generator.batchsize=2"]).generator, "generator", ("model", "tokenizer"))


# -- values that used to fail minutes later, inside transformers ------------------------------------
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["rollout.temperature=0"], "rollout.temperature=0 (greedy) with rollout.samples_per_prompt=8"),
        (["eval.max_new_tokens=0"], "eval.max_new_tokens must be at least 1, not 0"),
    ],
)
def test_values_that_cannot_train_are_refused_before_the_model_loads(tmp_path, overrides, message):
    out = cli("reasonrl-train", "max_steps=1", f"hydra.run.dir={tmp_path / 'run'}", *overrides, tmp_path=tmp_path, timeout=90)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr
    assert nothing_built(tmp_path)


def test_config_checks_cover_sampling_and_evaluation():
    from reasonrl.config import ConfigError, check_eval_config, check_train_config

    check_train_config(compose("train", ["rollout.temperature=0", "rollout.samples_per_prompt=1"]))  # greedy G=1 is allowed
    for bad in (["rollout.top_p=0"], ["rollout.temperature=-1"], ["eval.temperature=-0.5"], ["verify.max_failed_frac=2"]):
        with pytest.raises(ConfigError):
            check_train_config(compose("train", bad))
    with pytest.raises(ConfigError, match="n=4 samples per problem at temperature=0"):
        check_eval_config(compose("eval", ["n=4"]))
    with pytest.raises(ConfigError, match="max_new_tokens must be at least 1"):
        check_eval_config(compose("eval", ["max_new_tokens=0"]))
    check_eval_config(compose("eval", ["n=4", "temperature=0.7"]))


# -- one message under torchrun ---------------------------------------------------------------------
def test_prompts_not_dividing_among_processes_is_said_once_by_the_main_process(tmp_path):
    err = tmp_path / "err.json"
    common = ["rollout.prompts_per_step=5", f"hydra.run.dir={tmp_path / 'run'}"]
    env0 = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "TORCHELASTIC_ERROR_FILE": str(err)}
    main = cli("reasonrl-train", *common, tmp_path=tmp_path, env=env0)
    assert main.returncode == 2
    lines = main.stderr.strip().splitlines()
    said = "5 prompts per step (rollout.prompts_per_step) do not divide among 2 processes"
    assert len(lines) == 1 and said in lines[0], main.stderr
    assert "prompts_per_step" in json.loads(err.read_text())["message"]  # torchrun's failure summary shows it
    other = cli("reasonrl-train", *common, tmp_path=tmp_path, env={**env0, "RANK": "1", "LOCAL_RANK": "1"})
    assert other.returncode == 2 and other.stderr.strip() == ""  # the other ranks stay quiet
    assert nothing_built(tmp_path)


# -- --help ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "program,keys",
    [
        ("reasonrl-train", ["max_steps", "rollout.temperature", "task.skip_bad_rows", "verify.max_failed_frac"]),
        ("reasonrl-sft", ["max_steps", "sft.data_file", "task.target"]),
        ("reasonrl-eval", ["benchmarks", "max_new_tokens", "template", "REASONRL_DATA_DIR"]),
    ],
)
def test_help_lists_the_main_settings_one_line_each(tmp_path, program, keys):
    out = cli(program, "--help", "rollout.temperature=0.7" if program == "reasonrl-train" else "seed=0", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for key in keys:
        assert any(line.lstrip().startswith(key) or key in line for line in out.stdout.splitlines()), (key, out.stdout)
    assert "Main settings" in out.stdout and "--cfg job" in out.stdout
    if program == "reasonrl-train":
        line = next(ln for ln in out.stdout.splitlines() if ln.lstrip().startswith("rollout.temperature"))
        assert "sampling temperature" in line and "[now: 0.7]" in line  # the value this command line gives


def test_every_setting_the_help_names_exists():
    from reasonrl.cli import SETTINGS, key_problem
    from reasonrl.config import SCHEMAS

    for name, rows in SETTINGS.items():
        for key, text in rows:
            if not text.startswith("group"):
                assert key_problem(SCHEMAS[name], key) is None, (name, key)


# -- threads ---------------------------------------------------------------------------------------
def test_threads_follow_the_usable_cores_unless_omp_num_threads_is_set(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs: 2 cores' worth at most
    code = (
        "import os, sys, torch\n"
        "os.sched_getaffinity = lambda pid: {0, 1, 2, 3}\n"
        "import reasonrl.runtime as rt\n"
        "rt.CPU_MAX = '/nonexistent'\n"
        "print(rt.configure_threads(2), torch.get_num_threads())\n"
        "print(rt.configure_threads(1), torch.get_num_threads())\n"
        "rt.CPU_MAX = sys.argv[1]\n"
        "print(rt.usable_cores(), rt.configure_threads(1))\n"
        "os.environ['OMP_NUM_THREADS'] = '1'; torch.set_num_threads(1)\n"
        "print(rt.configure_threads(4), torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code, str(quota)], capture_output=True, text=True, env=env, cwd="/")
    assert out.returncode == 0, out.stderr
    assert [line.split() for line in out.stdout.splitlines()] == [["2", "2"], ["4", "4"], ["2", "2"], ["1", "1"]]


def test_flags_and_overrides_in_any_order(tmp_path):
    from reasonrl.cli import with_overrides

    for argv in (["p", "max_steps=2", "--cfg", "job"], ["p", "--cfg", "job", "max_steps=2"]):
        expected = ["p", "--cfg", "job", "max_steps=2", "hydra.output_subdir=null"]
        assert with_overrides(argv, ["hydra.output_subdir=null"]) == expected
    out = cli("reasonrl-train", "max_steps=2", "--cfg", "job", tmp_path=tmp_path)  # a trailing flag, then added overrides
    assert out.returncode == 0 and "max_steps: 2" in out.stdout, out.stderr[-2000:]
