"""Multi-turn rollouts: environments, and the agent loop that drives any generator through them.

An :class:`Environment` says how a rollout goes on after the model's turn. For
each problem it starts an :class:`Episode`; given the text of the model's
latest turn, the episode names the tool call the turn ends with (or none: the
model has answered) and runs it, returning an :class:`Observation` to append
(text the policy did not write), and may add a reward and end the rollout.

:class:`AgentGenerator` wraps any generator (:class:`reasonrl.rollout.Generator`)
and is one itself, so training, its evaluation and ``reasonrl-eval`` sample
through it unchanged. For every rollout it

1. generates the model's turn until a stop token, one of the environment's
   stop strings (a tool call's closing tag) or the token budget;
2. asks the episode for the tool call the turn ends with; runs it in a thread
   (tools never hold up generation: the other rollouts' turns go on; a rollout
   whose tool is done is added to a running vLLM engine at once, or joins the
   next wave of continuations with other generators; each continuation is
   seeded from its rollout and turn, so tool timing never changes a sample);
3. tokenizes the observation once and appends its tokens (cut to
   ``max_observation_tokens``), then continues from the exact token prefix:
   prompt, every sampled token, every observation token. Nothing is ever
   re-rendered, so the tokens trained on are exactly the tokens sampled (a chat
   template that rewrites earlier turns, say one that drops old think blocks,
   never runs between turns).

The rollout's ``loss_mask`` is 1 on the model's tokens and 0 on observations,
whose sampler logprobs are 0 (never used); its ``text`` is the model's own
words (its turns joined: what verifiers read, so a tool that prints an answer
earns nothing by itself), ``transcript`` everything, ``turns`` the spans.

Limits, each with its finish reason: ``max_turns`` model turns (``turns``),
``max_tool_calls`` calls (``tool_calls``), the model-token budget
``max_new_tokens`` (``length``), and ``max_total_tokens`` of model plus
observation tokens, or the model's context (``context``). ``stop``: the model
answered (eos, or a turn that calls no tool).

Single-turn is the trivial environment: its episodes never call a tool, so a
rollout is the generator's own, untouched (the same samples as without the
loop).

It does not score (verifiers do, on ``Rollout.text``) and does not train.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol, Sequence

import torch

from reasonrl.rollout import OnGroup, Rollout, Sampling, Turn

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length", "turns", "tool_calls", "context")


@dataclass
class Observation:
    """What a tool call gives back: ``text`` to append (the model did not write it), its ``status`` (the
    sandbox's: ok, error, timeout, memory, output_limit, infra_error), a ``reward`` to add, and whether the
    rollout ends here (``done``)."""

    text: str
    status: str = "ok"
    reward: float = 0.0
    done: bool = False
    seconds: float = 0.0


class Episode(Protocol):
    def tool_call(self, turn: str) -> str | None:
        """The call the model's turn ends with (the code of a closed python block), or None: no call."""

    def run(self, call: str) -> Observation:
        """Run ``call`` (in a worker thread; never raises for anything the model wrote)."""

    def close(self) -> None: ...


class Environment(Protocol):
    name: str
    stop: tuple[str, ...]  # strings that end a model turn besides eos (a tool call's closing tag)
    multi_turn: bool  # False: episodes never call a tool (the loop then returns the generator's rollouts as they are)

    def start(self, problem: Mapping[str, Any]) -> Episode: ...


class _NoTool:
    def tool_call(self, turn: str) -> None:
        return None

    def run(self, call: str) -> Observation:  # pragma: no cover - never called: tool_call is None
        raise RuntimeError("the single-turn environment has no tool")

    def close(self) -> None:
        pass


class SingleTurn:
    """The trivial environment: the model answers in one turn."""

    name = "single_turn"
    stop: tuple[str, ...] = ()
    multi_turn = False

    def start(self, problem: Mapping[str, Any]) -> Episode:
        return _NoTool()


# --------------------------------------------------------------------------- the Python tool
PRELUDE = """\
import ast as _ast, contextlib as _cl, io as _io, sys as _sys
_g = {"__name__": "__main__"}
def _cell(src, quiet):
    tree = _ast.parse(src, "<cell>", "exec")
    last = tree.body[-1] if tree.body else None
    if not quiet and isinstance(last, _ast.Expr) and not (isinstance(last.value, _ast.Call)
            and getattr(last.value.func, "id", None) == "print"):
        tree.body[-1] = _ast.Expr(_ast.Call(_ast.Name("print", _ast.Load()), [last.value], []))
        _ast.fix_missing_locations(tree)
    code = compile(tree, "<cell>", "exec")
    if quiet:
        with _cl.redirect_stdout(_io.StringIO()), _cl.redirect_stderr(_io.StringIO()):
            exec(code, _g)
    else:
        exec(code, _g)
"""


def cell_program(cells: Sequence[str]) -> str:
    """One program that replays the earlier ``cells`` silently (the rollout's state) and runs the last one,
    printing its last expression's value as a notebook would."""
    lines = [PRELUDE]
    lines += [f"_cell({c!r}, True)" for c in cells[:-1]]
    lines.append(f"_cell({cells[-1]!r}, False)")
    return "\n".join(lines) + "\n"


@dataclass
class PythonTool:
    """A Python interpreter in :mod:`reasonrl.sandbox`: a turn that ends with a closed block
    ``open ... close`` (by default a fenced python block) runs the block, and its output comes back in
    ``output`` (``{output}`` filled with stdout, or with the status and the end of stderr on failure; either
    cut to ``max_output_chars``). ``stateful``: a rollout's later calls see what its earlier successful calls
    defined (they are replayed, silently, before the new block); rollouts never share state. The sandbox's
    limits apply to every call (``timeout_s`` of CPU, ``memory_mb``, its process and output caps)."""

    open: str = "```python\n"
    close: str = "```"
    stop_strings: tuple[str, ...] = ("```\n",)  # what ends the turn: the closing fence and its newline
    output: str = "```output\n{output}\n```\n"
    timeout_s: float = 2.0
    memory_mb: int = 256
    max_output_chars: int = 400
    stateful: bool = True
    isolation: str = "bwrap"  # the sandbox's: bwrap, or none (no isolation; never for untrusted code)
    name: str = "python"
    multi_turn: bool = True
    _sandbox: Any = field(default=None, init=False, repr=False)

    @property
    def stop(self) -> tuple[str, ...]:
        return tuple(self.stop_strings)

    @property
    def sandbox(self):
        if self._sandbox is None:
            from reasonrl.sandbox import Sandbox

            self._sandbox = Sandbox(isolation=self.isolation)
            self._sandbox.check()  # a machine that cannot isolate says so before the first rollout
        return self._sandbox

    def start(self, problem: Mapping[str, Any]) -> Episode:
        self.sandbox  # noqa: B018 - made (and checked) here, in the caller's thread, not in a tool thread
        return _PythonEpisode(self)


class _PythonEpisode:
    def __init__(self, tool: PythonTool):
        self.tool = tool
        self.cells: list[str] = []  # the rollout's successful calls, replayed before each new one

    def tool_call(self, turn: str) -> str | None:
        t = self.tool
        end = turn.rstrip()
        if not end.endswith(t.close.rstrip()) and not any(turn.endswith(s) for s in t.stop):
            return None
        body_end = turn.rfind(t.close)
        start = turn.rfind(t.open, 0, body_end)
        if start < 0 or body_end < 0:
            return None
        code = turn[start + len(t.open) : body_end]
        return code if code.strip() else None

    def run(self, call: str) -> Observation:
        t = self.tool
        cells = [*self.cells, call] if t.stateful else [call]
        t0 = time.perf_counter()  # the model's code is parsed only in the sandbox (a compile bomb costs us nothing)
        r = t.sandbox.run(cell_program(cells), timeout_s=t.timeout_s, memory_mb=t.memory_mb)
        seconds = time.perf_counter() - t0
        if r.status == "ok":
            if t.stateful:
                self.cells.append(call)
            return self._observe(r.stdout, "ok", seconds)
        tail = (r.stderr or r.reason or "").strip().splitlines()[-3:]
        return self._observe(f"{r.status}: " + "\n".join(tail), r.status, seconds)

    def _observe(self, text: str, status: str, seconds: float) -> Observation:
        t = self.tool
        text = text.strip()
        if len(text) > t.max_output_chars:
            text = text[: t.max_output_chars] + "...[cut]"
        return Observation(t.output.format(output=text), status=status, seconds=seconds)

    def close(self) -> None:
        self.cells.clear()


ENVIRONMENTS = {"single_turn": SingleTurn, "python": PythonTool}


def build_environment(node: Mapping[str, Any] | None) -> Environment:
    """The environment an ``env`` config node names (``name``: single_turn | python; the python tool's options
    beside it)."""
    from omegaconf import OmegaConf

    spec = dict(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else (node or {}))
    name = spec.pop("name", "single_turn")
    for key in LIMIT_KEYS:
        spec.pop(key, None)
    if name not in ENVIRONMENTS:
        raise ValueError(f"env.name={name!r} is not an environment; known: {sorted(ENVIRONMENTS)}")
    if name == "single_turn":
        return SingleTurn()
    tool = spec.pop("tool", {}) or {}
    if "stop_strings" in tool:
        tool["stop_strings"] = tuple(tool["stop_strings"])
    from reasonrl.build import did_you_mean

    known = {f for f in PythonTool.__dataclass_fields__ if not f.startswith("_") and f not in ("name", "multi_turn")}
    unknown = sorted(set(tool) - known)
    if unknown:
        raise ValueError(f"env.tool.{unknown[0]} is not a python tool option{did_you_mean(unknown[0], sorted(known))}")
    return PythonTool(**tool)


def build_agent(env_node: Mapping[str, Any] | None, generator, tokenizer, model=None, runtime=None) -> "AgentGenerator":
    """``generator`` driven through the environment ``env_node`` names; the model's positions (and the engine's
    ``max_model_len``) bound a rollout's context."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    engine_len = getattr(generator, "max_model_len", None)
    context = min((x for x in (positions, engine_len) if x), default=None)
    env, limits = build_environment(env_node), Limits.from_config(env_node)
    return AgentGenerator(generator, env, tokenizer, limits, max_context=context, runtime=runtime)


# --------------------------------------------------------------------------- limits
LIMIT_KEYS = ("max_turns", "max_tool_calls", "max_observation_tokens", "max_total_tokens", "tool_workers")


@dataclass(frozen=True)
class Limits:
    max_turns: int = 4  # model turns per rollout
    max_tool_calls: int = 3  # tool calls per rollout
    max_observation_tokens: int = 64  # per call: a longer observation is cut to this many tokens
    max_total_tokens: int | None = None  # model + observation tokens of a completion (None: no cap but the context)
    tool_workers: int = 4  # tool calls running at once

    def __post_init__(self):
        for k in ("max_turns", "max_tool_calls", "max_observation_tokens", "tool_workers"):
            if getattr(self, k) < 1:
                raise ValueError(f"env.{k} must be at least 1, not {getattr(self, k)}")

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> "Limits":
        node = node or {}
        return cls(**{k: node[k] for k in LIMIT_KEYS if k in node and (node[k] is not None or k == "max_total_tokens")})


# --------------------------------------------------------------------------- the loop
@dataclass
class _Live:
    """A rollout in progress."""

    index: int  # its place in the result (prompt-major)
    prompt_index: int
    prompt_ids: list[int]
    episode: Any
    ids: list[int] = field(default_factory=list)  # completion tokens so far
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    calls: int = 0
    finish: str | None = None
    first: Rollout | None = None  # the generator's rollout of the first turn


class AgentGenerator:
    """Any generator, driven through an environment's turns (see the module docstring); a generator itself."""

    def __init__(
        self,
        generator,
        env: Environment,
        tokenizer,
        limits: Limits | None = None,
        max_context: int | None = None,
        runtime=None,
    ):
        self.inner, self.env, self.tokenizer = generator, env, tokenizer
        self.runtime = runtime  # several processes: their generator calls are kept in step (reasonrl.runtime.Runtime)
        self.limits = limits or Limits()
        self.max_context = max_context  # the model's positions: prompt + completion
        self.exact_logprobs = getattr(generator, "exact_logprobs", False)
        self._eos = {tokenizer.eos_token_id, *getattr(generator, "stop_token_ids", ()), *getattr(generator, "stop_ids", ())}
        self._tools: cf.ThreadPoolExecutor | None = None
        self.last_problems: Sequence[Mapping[str, Any]] | None = None

    # the generator protocol: the rest is the wrapped generator's
    def sync_weights(self, model: torch.nn.Module) -> None:
        self.inner.sync_weights(model)

    def load_weights(self, tensors) -> None:
        self.inner.load_weights(tensors)

    def sleep(self) -> None:
        self.inner.sleep()

    def wake_up(self) -> None:
        self.inner.wake_up()

    def close(self) -> None:
        if self._tools is not None:
            self._tools.shutdown(wait=True, cancel_futures=True)
            self._tools = None
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str):  # engine attributes (llm, model, ...) stay reachable
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        sampling: Sampling,
        on_group: OnGroup | None = None,
        problems: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Rollout]:
        """``n`` rollouts of every prompt, prompt-major, each run through the environment's turns; ``problems``
        (one per prompt) start the episodes (a tool that needs none may go without)."""
        if not self.env.multi_turn:
            return self.inner.generate(prompt_ids, n, sampling, on_group=on_group)
        problems = problems if problems is not None else [{} for _ in prompt_ids]
        if len(problems) != len(prompt_ids):
            raise ValueError(f"{len(problems)} problems for {len(prompt_ids)} prompts")
        return _Run(self, prompt_ids, n, sampling, on_group, problems).go()

    def _pool(self) -> cf.ThreadPoolExecutor:
        if self._tools is None:
            self._tools = cf.ThreadPoolExecutor(self.limits.tool_workers, thread_name_prefix="reasonrl-tool")
        return self._tools


def continuation_seed(seed: int | None, index: int, turn: int) -> int:
    """A fresh, reproducible seed for rollout ``index``'s turn ``turn`` of a call sampled with ``seed``."""
    h = hashlib.blake2b(f"{seed}/{index}/{turn}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


class _Run:
    """One ``AgentGenerator.generate`` call: the first turns as one generator call, then waves of
    continuations as tools finish."""

    def __init__(self, agent: AgentGenerator, prompt_ids, n: int, sampling: Sampling, on_group, problems):
        self.a, self.n, self.sampling, self.on_group = agent, n, sampling, on_group
        self.lim = agent.limits
        self.live = [
            _Live(i * n + j, i, list(p), agent.env.start(problems[i])) for i, p in enumerate(prompt_ids) for j in range(n)
        ]
        self.pending: dict[cf.Future, _Live] = {}
        self.ready: list[_Live] = []  # observation appended: generate its next turn
        self.left = [n] * len(prompt_ids)  # rollouts of each prompt still running
        self.out: list[Rollout | None] = [None] * len(self.live)

    def go(self) -> list[Rollout]:
        s = replace(self.sampling, stop=tuple(self.a.env.stop), prompt_seeds=None)
        prompts = [self.live[i * self.n].prompt_ids for i in range(len(self.left))]

        def first_turns(group: list[Rollout]) -> None:
            for j, r in enumerate(group):
                lv = self.live[r.prompt_index * self.n + j]
                lv.first = r
                self._model_turn(lv, r.completion_ids, r.logprobs)

        rt = self.a.runtime
        together = rt is not None and rt.distributed  # every rank makes as many generator calls (they gather weights)
        if not together and hasattr(self.a.inner, "session"):
            return self._continuous(prompts, s)
        self._generate(prompts, self.n, s, first_turns)
        turn = 1
        try:
            while True:
                self._collect_tools()
                any_ready = rt.max(float(bool(self.ready))) > 0 if together else bool(self.ready)
                if not any_ready:
                    if not (rt.max(float(bool(self.pending))) > 0 if together else self.pending):
                        break  # every rollout (of every rank) is finished
                    # nothing to generate anywhere: wait for a tool (across ranks: briefly, then ask again)
                    cf.wait(list(self.pending), timeout=0.05 if together else None, return_when=cf.FIRST_COMPLETED)
                    continue
                turn += 1
                self._wave(self.ready, turn)  # across ranks, a rank with nothing ready makes an empty call
        finally:
            for f in self.pending:
                f.cancel()
        return [r for r in self.out]  # every rollout finished: the loop only ends when none is pending or ready

    def _continuous(self, prompts, s: Sampling) -> list[Rollout]:
        """With an engine its caller steps (vLLM's :class:`reasonrl.rollout_vllm.EngineSession`): a rollout's next
        turn is added the moment its tool is done, while the others go on generating."""
        session = self.a.inner.session()
        for i, p in enumerate(prompts):
            session.add(("first", i), p, self.n, s, s.seed)
        try:
            while self.pending or self.ready or session.busy():
                if session.busy():
                    for (kind, i), group in session.step():
                        lives = self.live[i * self.n : (i + 1) * self.n] if kind == "first" else [self.live[i]]
                        for lv, r in zip(lives, group):
                            if kind == "first":
                                lv.first = dataclasses.replace(r, prompt_index=lv.prompt_index)
                            self._model_turn(lv, r.completion_ids, r.logprobs)
                elif not self.ready:
                    cf.wait(list(self.pending), return_when=cf.FIRST_COMPLETED)
                self._collect_tools()
                ready, self.ready = self.ready, []
                for lv in ready:
                    budget = self._model_budget(lv)[0]
                    seed = continuation_seed(self.sampling.seed, lv.index, self._model_turns(lv))
                    cont = replace(s, max_new_tokens=budget)
                    session.add(("next", lv.index), lv.prompt_ids + lv.ids, 1, cont, seed)
        finally:
            for f in self.pending:
                f.cancel()
        return list(self.out)

    # -- turns -----------------------------------------------------------------------------------------
    def _model_budget(self, lv: _Live) -> tuple[int, str]:
        """(tokens the model may write next, the finish reason when that is what ends the rollout)."""
        model_left = self.sampling.max_new_tokens - sum(lv.mask)
        limits = [(model_left, "length")]
        if self.lim.max_total_tokens is not None:
            limits.append((self.lim.max_total_tokens - len(lv.ids), "context"))
        if self.a.max_context is not None:
            limits.append((self.a.max_context - len(lv.prompt_ids) - len(lv.ids), "context"))
        return min(limits)

    def _model_turn(self, lv: _Live, toks: list[int], logprobs: list[float]) -> None:
        a = self.a
        budget, why = self._model_budget(lv)
        cut = len(toks) > budget
        toks, logprobs = list(toks[: max(budget, 0)]), list(logprobs[: max(budget, 0)])
        start = len(lv.ids)
        lv.ids += toks
        lv.logprobs += logprobs
        lv.mask += [1] * len(toks)
        text = a.tokenizer.decode(toks, skip_special_tokens=True)
        lv.turns.append(Turn("model", start, len(lv.ids), text))
        ended_eos = bool(toks) and toks[-1] in a._eos
        if cut or (not ended_eos and len(toks) >= budget):
            return self._finish(lv, why)
        if ended_eos or not toks:
            return self._finish(lv, "stop")
        stopped = self._ended_on_stop_string(toks)
        call = lv.episode.tool_call(text) if stopped else None
        if call is None:
            if not stopped:
                return self._finish(lv, "stop")
            if self._model_turns(lv) >= self.lim.max_turns:
                return self._finish(lv, "turns")
            # a stop string that closes no call (say a fence around an example): the model goes on writing
            return self._observe(lv, "", "none", 0.0)
        if lv.calls >= self.lim.max_tool_calls:
            return self._finish(lv, "tool_calls")
        if self._model_turns(lv) >= self.lim.max_turns:
            return self._finish(lv, "turns")
        lv.calls += 1
        self.pending[self.a._pool().submit(_safe_run, lv.episode, call)] = lv

    @staticmethod
    def _model_turns(lv: _Live) -> int:
        return sum(t.role == "model" for t in lv.turns)

    def _ended_on_stop_string(self, toks: list[int]) -> bool:
        stop = self.a.env.stop
        if not stop:
            return False
        dec = self.a.tokenizer.decode
        text = dec(toks, skip_special_tokens=False)
        return any(s in text for s in stop) and not any(s in dec(toks[:-1], skip_special_tokens=False) for s in stop)

    def _collect_tools(self) -> None:
        for f in [f for f in self.pending if f.done()]:
            lv = self.pending.pop(f)
            obs = f.result()
            lv.reward += obs.reward
            self._observe(lv, obs.text, obs.status, obs.seconds, obs.done)

    def _observe(self, lv: _Live, text: str, status: str, seconds: float, done: bool = False) -> None:
        toks = self.a.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        toks = toks[: self.lim.max_observation_tokens]
        room = [self.lim.max_total_tokens - len(lv.ids)] if self.lim.max_total_tokens is not None else []
        if self.a.max_context is not None:
            room.append(self.a.max_context - len(lv.prompt_ids) - len(lv.ids))
        if room and len(toks) + 1 > min(room):  # the observation and one more model token must fit
            return self._finish(lv, "context")
        start = len(lv.ids)
        lv.ids += toks
        lv.logprobs += [0.0] * len(toks)
        lv.mask += [0] * len(toks)
        if status != "none":
            lv.turns.append(Turn("tool", start, len(lv.ids), self.a.tokenizer.decode(toks, skip_special_tokens=True),
                                 status=status, seconds=seconds))  # fmt: skip
        if done:
            return self._finish(lv, "stop")
        self.ready.append(lv)

    def _wave(self, wave: list[_Live], turn: int) -> None:
        """Every ready rollout's next turn, in one generator call (one sample each, each with its own seed)."""
        self.ready = []
        if not wave:
            self.a.inner.generate([], 1, self.sampling)
            return
        wave = sorted(wave, key=lambda lv: lv.index)  # which rollouts a wave holds depends on the tools' timing; their
        # order does not, and each samples with its own seed (Sampling.prompt_seeds): the same tokens in any wave
        budgets = [self._model_budget(lv)[0] for lv in wave]
        s = replace(
            self.sampling,
            max_new_tokens=max(budgets),
            stop=tuple(self.a.env.stop),
            # a rollout's own turn number, not the wave's: how many waves ran before depends on the tools' timing
            prompt_seeds=tuple(continuation_seed(self.sampling.seed, lv.index, self._model_turns(lv)) for lv in wave),
        )
        if self.sampling.seed is not None:
            s = replace(s, seed=continuation_seed(self.sampling.seed, -1, turn))
        prompts = [lv.prompt_ids + lv.ids for lv in wave]

        def next_turns(group: list[Rollout]) -> None:  # a tool starts the moment its call is written
            for r in group:
                self._model_turn(wave[r.prompt_index], r.completion_ids, r.logprobs)

        self._generate(prompts, 1, s, next_turns)

    def _generate(self, prompts, n: int, s: Sampling, on_group) -> None:
        from reasonrl.pipeline import streams

        if streams(self.a.inner):
            self.a.inner.generate(prompts, n, s, on_group=on_group)
            return
        out = self.a.inner.generate(prompts, n, s)
        for i in range(0, len(out), n):
            on_group(out[i : i + n])

    def _finish(self, lv: _Live, reason: str) -> None:
        lv.finish = reason
        lv.episode.close()
        single = lv.first is not None and len(lv.turns) == 1 and len(lv.first.completion_ids) == len(lv.ids)
        if single and reason in ("stop", "length"):  # one turn, untouched: the generator's own rollout
            r = lv.first
            r.finish_reason = reason
        else:
            model_text = "".join(t.text for t in lv.turns if t.role == "model")
            r = Rollout(
                prompt_index=lv.prompt_index,
                prompt_ids=lv.prompt_ids,
                completion_ids=lv.ids,
                text=model_text,
                finish_reason=reason,
                logprobs=lv.logprobs,
                loss_mask=lv.mask,
                turns=lv.turns if any(t.role == "tool" for t in lv.turns) or len(lv.turns) > 1 else [],
                env_reward=lv.reward,
            )
        self.out[lv.index] = r
        i = lv.prompt_index
        self.left[i] -= 1
        if self.left[i] == 0 and self.on_group is not None:
            self.on_group(self.out[i * self.n : (i + 1) * self.n])


def turn_row(t: Turn) -> dict[str, Any]:
    """A turn as samples.jsonl keeps it: who wrote it, its text and tokens (a tool's: its status)."""
    row: dict[str, Any] = {"role": t.role, "text": t.text, "tokens": t.end - t.start}
    if t.role == "tool":  # its time is in the metrics (time/tool_s): a sample holds what replays exactly
        row["status"] = t.status
    return row


def _safe_run(episode, call: str) -> Observation:
    """A tool run whose own failure (not the model's code: that is an observation) is one too, never a crash."""
    t0 = time.perf_counter()
    try:
        return episode.run(call)
    except Exception as e:  # noqa: BLE001 - the run goes on; the status says what happened
        log.warning("tool run failed: %s: %s", type(e).__name__, e)
        return Observation(f"infra_error: {type(e).__name__}", status="infra_error", seconds=time.perf_counter() - t0)
