"""Multi-turn rollouts (:mod:`reasonrl.agent`): token-exact appends, masks, limits, tools that misbehave,
concurrency, and the gradient of a two-turn batch.

The policy is a real Llama that is a bigram model (``helpers.scripted_model``): its next token depends on the
current one only, with a margin that makes sampling deterministic in practice, so a test writes the turns it
wants (``helpers.chain``) and the real generator, sandbox and update run on them.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
import torch
from helpers import chain, scripted_model, tool_tokenizer

from reasonrl.agent import AgentGenerator, Limits, Observation, PythonTool, SingleTurn, build_environment, cell_program
from reasonrl.data import pack
from reasonrl.rollout import HFGenerator, Sampling

TAGS = dict(open="<python>", close="</python>", stop_strings=("</python>",), output="<output>{output}</output>")
CALL = "?<think><python>print(1+2)</python>"
ANSWER = "</output></think><answer>3</answer>"


@pytest.fixture(scope="module")
def tok():
    return tool_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def agent(tok, script, env=None, limits=None, max_context=None, record=None):
    gen = HFGenerator(scripted_model(tok, script), tok)
    if record is not None:  # every call's sampled tokens, as the generator returned them
        inner = gen.generate

        def generate(prompt_ids, n, sampling, on_group=None):
            out = inner(prompt_ids, n, sampling, on_group=on_group)
            record.extend(list(r.completion_ids) for r in out)
            return out

        gen.generate = generate
    return AgentGenerator(gen, env or PythonTool(**TAGS), tok, limits or Limits(), max_context=max_context)


def run(a, tok, n=2, max_new_tokens=40, prompts=("Q:1+2=?",), on_group=None):
    return a.generate([ids(tok, p) for p in prompts], n, Sampling(temperature=1.0, max_new_tokens=max_new_tokens, seed=3),
                      on_group=on_group)  # fmt: skip


# -- token-exact append and mask ------------------------------------------------------------------------------------
def test_a_tool_turn_appends_the_observation_tokens_once_masked_and_the_packed_batch_agrees(tok):
    sampled: list[list[int]] = []
    a = agent(tok, {**chain(CALL, tok), **chain(ANSWER, tok)}, record=sampled)
    ros = run(a, tok)
    obs = ids(tok, "<output>3</output>")
    for r in ros:
        model1, model2 = ids(tok, CALL[1:]), ids(tok, ANSWER[len("</output>") :]) + [tok.eos_token_id]
        assert r.completion_ids == model1 + obs + model2  # the observation tokenised once, appended as is
        assert r.loss_mask == [1] * len(model1) + [0] * len(obs) + [1] * len(model2)
        assert r.logprobs[len(model1) : len(model1) + len(obs)] == [0.0] * len(obs)
        assert [t.role for t in r.turns] == ["model", "tool", "model"] and r.turns[1].status == "ok"
        assert r.finish_reason == "stop" and r.text == "<think><python>print(1+2)</python></think><answer>3</answer>"
        assert r.transcript == "<think><python>print(1+2)</python><output>3</output></think><answer>3</answer>"
        assert r.model_tokens == len(model1) + len(model2)
    # the trained tokens are exactly the sampled ones: every model position of the packed batch holds, in order,
    # what a generator call returned, and nothing else trains
    b = pack(ros, tok.pad_token_id)
    for i, r in enumerate(ros):
        p = len(r.prompt_ids)
        targets = b.input_ids[i, p : p + len(r.completion_ids)]
        mask = b.completion_mask[i, p - 1 : p - 1 + len(r.completion_ids)]
        assert mask.tolist() == [float(m) for m in r.loss_mask]
        trained = targets[mask.bool()].tolist()
        turns = [t for t in sampled if t]  # the first call's two samples, then the continuations
        assert trained == turns[i] + turns[2 + i]
    assert float(b.completion_mask.sum()) == sum(r.model_tokens for r in ros)


def test_no_trained_token_differs_from_a_sampled_one_under_a_template_that_rewrites_history(tok):
    # a chat template that drops earlier think blocks (as Qwen3's does): re-rendering the conversation after a
    # tool turn would change tokens the policy already sampled; the loop only ever appends
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ m['content'].split('<think>')[0] }}{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    tok.chat_template = template
    try:
        prompt = tok.apply_chat_template([{"role": "user", "content": "Q:1+2=?"}], tokenize=False)
        sampled: list[list[int]] = []
        a = agent(tok, {**chain(CALL, tok), **chain(ANSWER, tok)}, record=sampled)
        r = run(a, tok, n=1, prompts=(prompt,))[0]
        rerendered = tok.apply_chat_template(
            [{"role": "user", "content": "Q:1+2=?"}, {"role": "assistant", "content": r.turns[0].text},
             {"role": "tool", "content": r.turns[1].text}, {"role": "assistant", "content": r.turns[2].text}],
            tokenize=False,
        )  # fmt: skip
        assert ids(tok, rerendered) != r.prompt_ids + r.completion_ids  # re-rendering would rewrite sampled tokens
        assert r.prompt_ids == ids(tok, prompt)
        model = [t for t, m in zip(r.completion_ids, r.loss_mask) if m]
        assert model == [t for call in sampled for t in call]
    finally:
        tok.chat_template = None


# -- limits and finish reasons --------------------------------------------------------------------------------------
LOOP = {**chain(CALL, tool_tokenizer()), "</output>": "<python>"}  # calls the tool after every output


@pytest.mark.parametrize(
    "limits, max_new, context, reason, calls",
    [
        (Limits(max_turns=2, max_tool_calls=5), 80, None, "turns", 1),
        (Limits(max_turns=9, max_tool_calls=2), 80, None, "tool_calls", 2),
        (Limits(max_total_tokens=14), 80, None, "context", 0),  # 13 model tokens: the observation does not fit
        (Limits(), 80, 7 + 20, "context", 1),  # the model's positions: prompt 7 + 20
        (Limits(), 8, None, "length", 0),  # the model's budget ends inside its first turn
        (Limits(max_turns=4, max_tool_calls=9), 30, None, "length", 2),  # its budget counts its own tokens only
    ],
)
def test_every_limit_ends_the_rollout_with_its_finish_reason(tok, limits, max_new, context, reason, calls):
    a = agent(tok, LOOP, limits=limits, max_context=context)
    for r in run(a, tok, max_new_tokens=max_new):
        assert r.finish_reason == reason
        assert len(r.tool_turns) == calls
        assert r.model_tokens <= max_new
        if limits.max_total_tokens:
            assert len(r.completion_ids) <= limits.max_total_tokens
        if context:
            assert len(r.prompt_ids) + len(r.completion_ids) <= context


def test_a_model_that_never_closes_its_block_runs_out_of_tokens_and_runs_nothing(tok):
    a = agent(tok, {**chain("?<think><python>x", tok), "x": "x"})
    for r in run(a, tok, max_new_tokens=20):
        assert r.finish_reason == "length" and r.tool_turns == [] and r.model_tokens == 20


def test_long_observations_are_cut_to_their_token_cap(tok):
    a = agent(tok, {**chain("?<think><python>print(1+2)", tok), ")": "</python>", "</output>": "</think>"},
              env=PythonTool(**{**TAGS, "output": "<output>{output}" + "9" * 50 + "</output>"}),
              limits=Limits(max_observation_tokens=10))  # fmt: skip
    r = run(a, tok, n=1)[0]
    assert r.turns[1].end - r.turns[1].start == 10


def test_single_turn_is_the_generator_itself(tok):
    script = chain("?<think>12</think><answer>3</answer>", tok)
    gen = HFGenerator(scripted_model(tok, script), tok)
    plain = gen.generate([ids(tok, "Q:1+2=?")] * 2, 3, Sampling(temperature=1.0, max_new_tokens=30, seed=5))
    through = AgentGenerator(gen, SingleTurn(), tok).generate([ids(tok, "Q:1+2=?")] * 2, 3,
                                                               Sampling(temperature=1.0, max_new_tokens=30, seed=5))  # fmt: skip
    assert [(r.completion_ids, r.logprobs, r.text, r.finish_reason, r.loss_mask, r.turns) for r in plain] == [
        (r.completion_ids, r.logprobs, r.text, r.finish_reason, r.loss_mask, r.turns) for r in through
    ]


# -- the python tool ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, statuses, says",
    [
        ("while True:\n    pass\n", ("timeout",), "timeout"),  # hangs
        ("print('x' * 10**8)\n", ("output_limit",), "output_limit"),  # floods
        ("import os\nwhile True:\n    os.fork()\n", ("error", "timeout", "memory"), ""),  # forks without end
        ("import ctypes\nctypes.string_at(0)\n", ("error",), "error"),  # crashes (a segfault)
        ("1/0\n", ("error",), "ZeroDivisionError"),
        ("print(1+\n", ("error",), "SyntaxError"),
    ],
)
def test_a_misbehaving_tool_is_an_observation_with_its_status(code, statuses, says):
    ep = PythonTool(**{**TAGS, "timeout_s": 1.0}).start({})
    obs = ep.run(code)
    assert obs.status in statuses and says in obs.text and obs.status in obs.text, obs
    assert obs.text.startswith("<output>") and len(obs.text) < 600


def test_state_is_kept_within_a_rollout_and_never_shared_between_rollouts():
    tool = PythonTool(**TAGS)
    one, two = tool.start({}), tool.start({})
    assert one.run("x = 20\ny = x + 1\n").text == "<output></output>"  # nothing printed: the replay stays silent
    assert one.run("print(x * 2)").text == "<output>40</output>"
    assert one.run("y").text == "<output>21</output>"  # the last expression is shown, as in a notebook
    leaked = two.run("print(x)")
    assert leaked.status == "error" and "NameError" in leaked.text
    stateless = PythonTool(**{**TAGS, "stateful": False}).start({})
    assert stateless.run("x = 1").status == "ok" and stateless.run("print(x)").status == "error"
    assert "_cell('y=2', False)" in cell_program(["y=2"])


def test_a_tool_that_raises_is_an_infra_error_observation_and_the_run_goes_on(tok):
    class Broken(PythonTool):
        def start(self, problem):
            ep = super().start(problem)
            ep.run = lambda call: (_ for _ in ()).throw(OSError("no sandbox slot"))
            return ep

    a = agent(tok, {**chain(CALL, tok), **chain(ANSWER, tok)}, env=Broken(**TAGS))
    for r in run(a, tok):
        assert r.turns[1].status == "infra_error" and r.finish_reason == "stop"


def test_a_stop_string_that_closes_no_call_lets_the_model_go_on(tok):
    script = {**chain("?<think>1</python>2</think><answer>3</answer>", tok)}
    r = run(agent(tok, script), tok, n=1)[0]
    assert r.finish_reason == "stop" and r.tool_turns == [] and r.text == "<think>1</python>2</think><answer>3</answer>"
    assert r.loss_mask == [1] * len(r.completion_ids)


# -- concurrency ----------------------------------------------------------------------------------------------------
class SlowFor:
    """A test environment: its calls take ``slow_s`` for problem ``slow`` and nothing for the others."""

    name, multi_turn, stop = "slow", True, ("</python>",)

    def __init__(self, slow_s: float):
        self.slow_s = slow_s

    def start(self, problem):
        env = self

        class Ep:
            def tool_call(self, turn):
                return "call" if turn.endswith("</python>") else None

            def run(self, call):
                time.sleep(env.slow_s if problem["slow"] else 0.0)
                return Observation("<output>3</output>")

            def close(self):
                pass

        return Ep()


def test_a_slow_tool_does_not_hold_up_the_other_rollouts(tok):
    slow_s = 2.0
    gen = HFGenerator(scripted_model(tok, LOOP), tok)
    a = AgentGenerator(gen, SlowFor(slow_s), tok, Limits(max_turns=4, max_tool_calls=3))
    done: dict[int, float] = {}
    t0 = time.perf_counter()
    p = ids(tok, "Q:1+2=?")
    ros = a.generate([p, p], 2, Sampling(temperature=1.0, max_new_tokens=80, seed=1),
                     on_group=lambda g: done.setdefault(g[0].prompt_index, time.perf_counter() - t0),
                     problems=[{"slow": True}, {"slow": False}])  # fmt: skip
    assert all(len(r.tool_turns) == 3 for r in ros)  # both made all their calls
    assert done[0] >= 3 * slow_s * 0.95, done  # the slow one waited for its own three calls
    # the fast problem's three rounds did not wait for them: had each wave waited for every tool, it would have
    # finished within the slow problem's last call
    assert done[1] + slow_s < done[0], done
    assert threading.active_count() < 20


# -- the gradient of a two-turn batch --------------------------------------------------------------------------------
def test_the_gradient_of_a_two_turn_batch_is_the_hand_worked_one(tok):
    from oracle import token_logprobs

    from reasonrl.update import UpdateSettings, update_policy

    from conftest import compose

    # two different two-turn rollouts of one prompt: the right answer after the tool, and a wrong one
    ros = [
        run(agent(tok, {**chain(CALL, tok), **chain(answer, tok)}), tok, n=1)[0] for answer in (ANSWER, ANSWER.replace("3", "4"))
    ]
    assert ros[0].completion_ids != ros[1].completion_ids and all(len(r.turns) == 3 for r in ros)
    # a policy that is not the script: logprobs and gradients of every token are non-trivial
    from helpers import llama_of_vocab

    model = llama_of_vocab(len(tok), layers=1, seed=3)
    for r in ros:
        r.logprobs = [0.0] * len(r.completion_ids)  # replaced below by the policy's own (on-policy: ratio 1)
    b = pack(ros, tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model(input_ids=b.input_ids).logits[:, :-1], b.input_ids[:, 1:])
    for i, r in enumerate(ros):
        p = len(r.prompt_ids)
        r.logprobs = lp[i, p - 1 : p - 1 + len(r.completion_ids)].tolist()
    # by hand: rewards 1 and 0 -> advantages +-0.5 / (unbiased std 0.7071 + 1e-6); token-mean over model tokens only
    adv = torch.tensor([0.5, -0.5]) / (torch.tensor([1.0, 0.0]).std() + 1e-6)
    model_pos = [torch.tensor([m for m in r.loss_mask], dtype=torch.bool) for r in ros]
    n_model = sum(int(m.sum()) for m in model_pos)
    ref = llama_of_vocab(len(tok), layers=1, seed=3)
    logits = ref(input_ids=b.input_ids).logits[:, :-1]
    lp_ref = token_logprobs(logits, b.input_ids[:, 1:])
    loss = 0.0
    for i, r in enumerate(ros):
        p = len(r.prompt_ids)
        loss = loss - adv[i] * lp_ref[i, p - 1 : p - 1 + len(r.completion_ids)][model_pos[i]].sum() / n_model
    loss.backward()
    cfg = compose("train", [])
    settings = UpdateSettings(alg=cfg.algorithm, pad_id=tok.pad_token_id, grad_clip=1e9, share_prompt=False)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    update_policy(model, opt, sched, ros, torch.tensor([1.0, 0.0]), [False, False], 2, settings)
    grads = dict(ref.named_parameters())
    worst = max(float((before[k] - v.detach() - grads[k].grad).abs().max()) for k, v in model.named_parameters())
    assert worst < 1e-6, worst
    assert any(float(g.grad.abs().max()) > 1e-3 for g in grads.values())


def test_the_env_node_builds_its_environment_and_names_a_misspelt_option():
    assert isinstance(build_environment({"name": "single_turn"}), SingleTurn)
    tool = build_environment({"name": "python", "max_turns": 3, "tool": {"timeout_s": 1.5, "stop_strings": ["</py>"]}})
    assert tool.timeout_s == 1.5 and tool.stop == ("</py>",)
    with pytest.raises(ValueError, match="did you mean 'timeout_s'"):
        build_environment({"name": "python", "tool": {"timeout": 1}})
    with pytest.raises(ValueError, match="env.name='shell'"):
        build_environment({"name": "shell"})
    assert Limits.from_config({"max_turns": 2, "max_total_tokens": None}).max_turns == 2
    with pytest.raises(ValueError, match="env.max_turns"):
        Limits(max_turns=0)


def test_the_tool_schema_and_the_tool_agree_on_every_default():
    import dataclasses

    from reasonrl.config import ToolConfig

    fields = dataclasses.fields(ToolConfig)
    schema = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in fields}
    tool = PythonTool()
    assert schema == {k: (list(getattr(tool, k)) if k == "stop_strings" else getattr(tool, k)) for k in schema}


def test_the_samples_do_not_depend_on_how_long_the_tools_took(tok):
    """Which rollouts a wave of continuations holds depends on when their tools finished; every rollout samples
    with its own seed and turn number, so two runs whose tools take different times sample the same tokens."""
    import itertools

    class Staggered(SlowFor):
        """Calls return at once (step 0) or at staggered times, each in a wave of its own."""

        def __init__(self, step_s):
            super().__init__(0.0)
            self.step_s, self.calls = step_s, itertools.count()

        def start(self, problem):
            ep = super().start(problem)
            inner = ep.run

            def run(call):
                time.sleep(self.step_s * (next(self.calls) % 4))
                return inner(call)

            ep.run = run
            return ep

    script = {k: v for text in ("?<think><python>print(1+2)</python>", "</output></think><answer>3</answer>")
              for k, v in chain(text, tok).items()}  # fmt: skip
    gen = HFGenerator(scripted_model(tok, {**script, "</output>": "<python>"}, margin=6.0), tok)  # noisy: rollouts differ
    inner, waves = gen.generate, []

    def generate(prompt_ids, n, sampling, on_group=None):
        waves[-1].append(len(prompt_ids))
        return inner(prompt_ids, n, sampling, on_group=on_group)

    gen.generate = generate
    outs = []
    for step_s in (0.0, 0.15):
        waves.append([])
        a = AgentGenerator(gen, Staggered(step_s), tok, Limits(max_turns=4, max_tool_calls=3))
        p = ids(tok, "Q:1+2=?")
        ros = a.generate([p, p], 8, Sampling(temperature=1.0, max_new_tokens=60, seed=9),
                         problems=[{"slow": False}] * 2)  # fmt: skip
        outs.append([(r.completion_ids, r.token_mask(), r.finish_reason) for r in ros])
    assert waves[0] != waves[1], "the tools' timing must change the waves for this test to mean anything"
    assert outs[0] == outs[1]
    assert len({tuple(c) for c, _, _ in outs[0]}) > 2 and sum(0 in m for _, m, _ in outs[0]) >= 3


@pytest.mark.parametrize(
    "override, says",
    [
        ("env.name=shell", "env.name='shell' is not an environment"),
        ("env.max_turns=0", "env.max_turns must be at least 1"),
        ("env.tool.isolation=foo", "env.tool.isolation must be bwrap or none"),
        ("env.tool.output=nothing", "env.tool.output must hold {output}"),
    ],
)
def test_a_bad_env_value_is_refused_by_name_before_a_model_loads(override, says):
    from reasonrl.agent import ENVIRONMENTS
    from reasonrl.config import ENV_NAMES, ConfigError, check_eval_config, check_train_config

    from conftest import compose

    assert set(ENV_NAMES) == set(ENVIRONMENTS)
    for name, check in (("train", check_train_config), ("eval", check_eval_config)):
        with pytest.raises(ConfigError, match=re.escape(says)):
            check(compose(name, ["env.name=python", override]))


def test_the_overlong_penalty_counts_the_model_tokens_only(tok):
    """A tool's output does not bring a rollout nearer the overlong penalty: 13 + 4 model tokens against a limit
    of 21 with a buffer of 4 (penalised above 17) cost nothing, though the 3 observation tokens make the completion
    20 long."""
    from reasonrl.collect import GroupPlan, collect_groups
    from reasonrl.verifiers.integer import IntegerVerifier

    a = agent(tok, {**chain(CALL, tok), **chain(ANSWER.replace("</answer>", ""), tok)})  # 17 model tokens
    plan = GroupPlan(B=1, G=2, sampling=Sampling(temperature=1.0, max_new_tokens=21), overlong_buffer=4)
    batch = collect_groups(a, tok, iter([{"question": "1+2", "answer": "3"}] * 4), lambda p: "Q:1+2=?",
                           {"integer": (IntegerVerifier(), 1.0)}, None, plan, seed=0)  # fmt: skip
    for r in batch.rollouts:
        assert r.model_tokens == 17 and len(r.completion_ids) == 20 and r.tool_turns
    assert batch.stats.overlong_penalty_mean == 0.0
