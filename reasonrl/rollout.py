"""Generation: the generator protocol, rollouts, and the transformers generator.

A generator turns tokenized prompts into rollouts (token ids, text, finish
reason and the sampler's per-token logprobs) and receives the policy's weights
after every optimizer step. The trainer only talks to this protocol, so the
transformers generator here and a vLLM engine plug in the same way.

Logprobs are those of the sampled token under the temperature-scaled logits,
before top-p truncation. Rollouts come back prompt-major: the ``n`` samples of
prompt ``i`` are contiguous.

It does not score, pack or train: see :mod:`reasonrl.verifiers`,
:mod:`reasonrl.data` and :mod:`reasonrl.update`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import torch

from reasonrl.runtime import Runtime
from reasonrl.sharding import full_tensors, full_weights, is_sharded

TRUNCATED = ("length", "context")  # finish reasons of a completion cut short by a token budget


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None
    # token ids that may not be the first generated token (used to force a
    # non-empty think block in diagnostics)
    banned_first_tokens: tuple[int, ...] = ()
    # strings that end a completion besides the stop tokens, kept in it (a tool call's closing tag): the
    # completion ends with the token that completes the first one
    stop: tuple[str, ...] = ()
    # one seed per prompt instead of ``seed`` for all (engines that seed each request; the transformers
    # generator draws every row from one generator and uses ``seed``)
    prompt_seeds: tuple[int, ...] | None = None


@dataclass
class Rollout:
    """One sampled completion: what the generator returned, then its score.

    ``loss_mask`` has one entry per completion token: 1 for tokens the policy
    wrote, 0 for tokens it did not (say, a tool's output inserted mid-completion);
    None means every token is the policy's. ``policy_version`` is the version of
    the policy that sampled it (the trainer's steps done when its weights were
    published); the update compares it with the version it trains.

    A multi-turn rollout (:mod:`reasonrl.agent`) lists its ``turns`` in order
    (the model's and the tools', with their token spans in ``completion_ids``);
    its ``text`` is what the model wrote (its turns joined, the tools' output
    left out: what verifiers read) and :attr:`transcript` everything. A
    single-turn rollout has no ``turns``.
    """

    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    # "stop" (eos or a stop string), "length" (the model's token budget); multi-turn also "turns" (max_turns),
    # "tool_calls" (max_tool_calls), "context" (the completion's or the model's total token budget)
    finish_reason: str
    logprobs: list[float] = field(default_factory=list)  # the sampler's, per completion token
    loss_mask: list[int] | None = None
    policy_version: int = 0
    reward: float = 0.0
    verdicts: dict = field(default_factory=dict)  # verifier name -> Verdict | None
    masked: bool = False  # a timeout/error verdict: out of the loss, the counts and the group baseline
    turns: list["Turn"] = field(default_factory=list)  # multi-turn only: model and tool turns, in order
    env_reward: float = 0.0  # what the environment added over the turns (added to ``reward`` when scored)

    def token_mask(self) -> list[int]:
        return [1] * len(self.completion_ids) if self.loss_mask is None else list(self.loss_mask)

    @property
    def model_tokens(self) -> int:
        """Completion tokens the policy wrote (what length limits, penalties and normalisers count)."""
        return len(self.completion_ids) if self.loss_mask is None else int(sum(self.loss_mask))

    @property
    def tool_turns(self) -> list["Turn"]:
        return [t for t in self.turns if t.role == "tool"]

    @property
    def transcript(self) -> str:
        """The whole completion as text: the model's turns and the tools' output, in order."""
        return "".join(t.text for t in self.turns) if self.turns else self.text


@dataclass
class Turn:
    """One turn of a multi-turn rollout: ``completion_ids[start:end]``, written by the model or a tool."""

    role: str  # "model" | "tool"
    start: int
    end: int
    text: str
    status: str = ""  # tool turns: the run's status (ok, error, timeout, memory, output_limit, infra_error)
    seconds: float = 0.0  # tool turns: the tool's wall time


@dataclass
class BatchStats:
    """What sampling one step's batch took and found (one rank's, until :meth:`reduce`)."""

    generate_s: float = 0.0  # seconds spent generating (wall clock)
    verify_s: float = 0.0  # seconds spent scoring beyond generation (wall clock)
    dropped: int = 0  # signal-free groups set aside by dynamic sampling, groups
    redraws: int = 0  # extra draws dynamic sampling made, draws
    zero_std_frac: float = 0.0  # fraction of the first draw's groups whose rewards were all equal
    overlong_penalty_mean: float = 0.0  # mean soft overlong penalty of the first draw, reward units

    def reduce(self, runtime: Runtime) -> "BatchStats":
        """Every rank's statistics as one: times are the slowest rank's, counts summed, fractions averaged
        (every rank samples as many groups). A world of one returns itself."""
        if not runtime.distributed:
            return self
        rt = runtime
        return BatchStats(
            generate_s=rt.max(self.generate_s),
            verify_s=rt.max(self.verify_s),
            dropped=int(rt.sum(self.dropped)),
            redraws=int(rt.sum(self.redraws)),
            zero_std_frac=rt.sum(self.zero_std_frac) / rt.world_size,
            overlong_penalty_mean=rt.sum(self.overlong_penalty_mean) / rt.world_size,
        )


@dataclass
class RolloutBatch:
    """One step's sampled groups: B problems x G scored rollouts, prompt-major."""

    problems: list[dict]
    rollouts: list[Rollout]
    group_size: int
    stats: BatchStats = field(default_factory=BatchStats)

    @property
    def rewards(self) -> torch.Tensor:
        return torch.tensor([r.reward for r in self.rollouts], dtype=torch.float32)  # (N,)

    @property
    def masked(self) -> list[bool]:
        return [r.masked for r in self.rollouts]


OnGroup = Callable[[list["Rollout"]], None]


class Generator(Protocol):
    # True when the logprobs come from the very module the trainer updates (no
    # sampler/trainer mismatch to correct)
    exact_logprobs: bool

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling, on_group: OnGroup | None = None
    ) -> list[Rollout]:
        """All ``n`` completions of every prompt, prompt-major; ``on_group(rollouts)`` is called with each
        prompt's ``n`` rollouts as soon as they exist (before the call returns), so scoring can start early."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the next generation use ``model``'s current weights (waking a sleeping engine first)."""

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the next generation use these (name, whole tensor) weights, named as in the policy's state dict
        (a published version, see :mod:`reasonrl.actor`)."""

    def sleep(self) -> None:
        """Release generation memory while the policy trains (may be a no-op)."""

    def wake_up(self) -> None: ...


class HFGenerator:
    """``transformers.generate`` on the policy module itself (colocated, no copy).

    Because it samples from the very module the trainer updates, weight sync is
    a no-op. ``batch_size`` bounds how many sequences are generated at once;
    ``stop_token_ids`` end a completion as the tokenizer's eos does. A sharded
    (FSDP2) policy is gathered once per call and sampled from locally.
    """

    exact_logprobs = True
    samples_from_policy = True  # asynchronous rollouts give it a copy of the policy (reasonrl.actor)

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        batch_size: int = 256,
        model_path: str | None = None,
        compute_dtype: str = "float32",
        stop_token_ids: Sequence[int] = (),
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.compute_dtype = getattr(torch, compute_dtype)  # generation runs under autocast to it
        self.stop_ids = [tokenizer.eos_token_id, *[int(t) for t in stop_token_ids if int(t) != tokenizer.eos_token_id]]
        if tokenizer.pad_token_id is None:
            raise ValueError("HFGenerator needs a tokenizer with a pad token")

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.load_weights(full_tensors(model))

    @torch.no_grad()
    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load these tensors into the copy it samples from: all of them, or a part (a LoRA policy's adapter)."""
        given = dict(tensors)
        unexpected = self.model.load_state_dict(given, strict=False).unexpected_keys
        if unexpected:
            raise KeyError(f"weights the sampled model does not have: {unexpected[:5]}")

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling, on_group: OnGroup | None = None
    ) -> list[Rollout]:
        from transformers import GenerationConfig

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        greedy = sampling.temperature <= 0
        # per-prompt seeds: each row samples with its own noise (see SeededSampler), so a row's sample does not
        # depend on which other rows share its batch; transformers then only takes the argmax
        seeded = sampling.prompt_seeds is not None and not greedy
        if seeded and len(sampling.prompt_seeds) != len(prompt_ids):
            raise ValueError(f"sampling.prompt_seeds has {len(sampling.prompt_seeds)} seeds for {len(prompt_ids)} prompts")
        gen_cfg = GenerationConfig(
            do_sample=not greedy and not seeded,
            temperature=None if greedy or seeded else sampling.temperature,
            top_p=None if greedy or seeded or sampling.top_p >= 1 else sampling.top_p,
            top_k=None,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_ids if len(self.stop_ids) > 1 else self.stop_ids[0],
            begin_suppress_tokens=list(sampling.banned_first_tokens) or None,
            num_return_sequences=n,
            return_dict_in_generate=True,
        )
        was_training = self.model.training
        self.model.eval()
        per_chunk = max(1, self.batch_size // n)
        out: list[Rollout] = []
        device = next(self.model.parameters()).device
        cast = (
            torch.autocast(device.type, self.compute_dtype) if self.compute_dtype != torch.float32 else contextlib.nullcontext()
        )
        try:
            # a sharded policy's gathered weights must stay usable for training: no_grad, not inference mode
            grad_off = torch.no_grad() if is_sharded(self.model) else torch.inference_mode()
            with full_weights(self.model), grad_off, cast:
                for start in range(0, len(prompt_ids), per_chunk):
                    chunk = prompt_ids[start : start + per_chunk]
                    seeds = sampling.prompt_seeds[start : start + per_chunk] if seeded else None
                    done = self._generate_chunk(chunk, start, n, gen_cfg, sampling, seeds)
                    out.extend(done)
                    if on_group is not None:  # this chunk's groups, while the next chunk generates
                        for g in range(0, len(done), n):
                            on_group(done[g : g + n])
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, chunk, offset: int, n: int, gen_cfg, sampling: Sampling, seeds=None) -> list[Rollout]:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from reasonrl.kvcache import preallocated_cache

        pad, stops = self.tokenizer.pad_token_id, set(self.stop_ids)
        width = max(len(p) for p in chunk)
        device = next(self.model.parameters()).device
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):  # left padding
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        temperature, stop = sampling.temperature, sampling.stop
        recorder = SampledLogprobs(temperature)
        processors = [recorder]
        if seeds is not None:  # after the recorder: it reads the unperturbed scores
            processors.append(SeededSampler(temperature, sampling.top_p, [s * 1_000_003 + j for s in seeds for j in range(n)]))
        res = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=gen_cfg,
            logits_processor=LogitsProcessorList(processors),
            **({"stopping_criteria": StoppingCriteriaList([StopStrings(self.tokenizer, stop, width)])} if stop else {}),
            **preallocated_cache(self.model, width + gen_cfg.max_new_tokens),
            # the weights are gathered for the whole call (full_weights): the ranks need not step together, and
            # may make different numbers of calls' worth of steps (the agent loop's continuations)
            synced_gpus=False,
        )
        new = res.sequences[:, width:]  # (len(chunk)*n, steps)
        lp = recorder.finish(new).cpu()  # (len(chunk)*n, steps)
        new = new.cpu()
        rollouts = []
        for row in range(new.shape[0]):
            toks = new[row].tolist()
            end = next((k for k, t in enumerate(toks) if t in stops), None)
            end = min_or_none(end, stop_string_end(self.tokenizer, toks[: None if end is None else end + 1], stop))
            if end is not None:
                toks, reason = toks[: end + 1], "stop"
            else:
                reason = "length"
            pi = row // n
            rollouts.append(
                Rollout(
                    prompt_index=offset + pi,
                    prompt_ids=list(chunk[pi]),
                    completion_ids=toks,
                    text=self.tokenizer.decode(toks, skip_special_tokens=True),
                    finish_reason=reason,
                    logprobs=lp[row, : len(toks)].tolist(),
                )
            )
        return rollouts


class StopStrings:
    """A stopping criterion: a row is done once the text of its newest generated tokens holds one of ``stop``
    (each token's text is decoded once and cached). It only ends rows early; :func:`stop_string_end` makes the
    exact cut."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
        self.tokenizer, self.stop, self.start = tokenizer, tuple(stop), prompt_width
        self.span = max(len(s) for s in self.stop)  # every token is at least one character
        self.pieces: dict[int, str] = {}

    def _piece(self, t: int) -> str:
        if t not in self.pieces:
            self.pieces[t] = self.tokenizer.decode([t], skip_special_tokens=False)
        return self.pieces[t]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.span) :].tolist()
        done = [any(s in "".join(self._piece(t) for t in row) for s in self.stop) for row in tail]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def min_or_none(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def stop_string_end(tokenizer, toks: Sequence[int], stop: Sequence[str]) -> int | None:
    """The index of the token that completes the first of the ``stop`` strings in ``toks``' text, or None.

    Decoding is monotone in the prefix here (a longer prefix's text starts with a shorter one's, up to the
    last token), so the first prefix whose text holds a stop string is found by bisection."""
    if not stop or not toks:
        return None

    def holds(k: int) -> bool:
        text = tokenizer.decode(toks[:k], skip_special_tokens=False)
        return any(s in text for s in stop)

    if not holds(len(toks)):
        return None
    lo, hi = 1, len(toks)  # holds(hi) is true; find the smallest such k
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


_M64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _M64
    return x - (1 << 64) if x >> 63 else x


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping products, logical shifts)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _signed(0xBF58476D1CE4E5B9)
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _signed(0x94D049BB133111EB)
    return x ^ ((x >> 31) & ((1 << 33) - 1))


class SeededSampler:
    """Sampling as a logits processor, one counter-based random stream per row: at step ``t`` row ``r`` adds
    Gumbel noise drawn from hash(seed_r, t, token) to its temperature-scaled, top-p-filtered log-probabilities,
    and generation takes the argmax, which is a sample from that distribution. A row's tokens then depend on its
    own seed and prefix only, never on the other rows of the batch (a batch whose make-up varies from run to run,
    as the agent loop's continuations do, samples the same)."""

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int]):
        self.temperature, self.top_p = temperature, top_p
        self.base = torch.tensor([_signed(s * 0x9E3779B97F4A7C15) for s in seeds], dtype=torch.int64)  # (N,)
        self.step = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # (N, V)
        if self.top_p < 1:
            sorted_lp, order = logp.sort(dim=-1, descending=True)
            before = sorted_lp.exp().cumsum(dim=-1) - sorted_lp.exp()  # mass above each token
            drop = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, order, before > self.top_p)
            logp = logp.masked_fill(drop, float("-inf"))
        vocab = torch.arange(logp.shape[-1], dtype=torch.int64)
        x = (
            self.base[:, None].to(logp.device)
            + _signed((self.step + 1) * 0xD1B54A32D192ED03)
            + vocab[None, :] * _signed(0xA24BAED4963EE407)
        )
        bits = (_mix64(_mix64(x)) >> 11) & ((1 << 53) - 1)
        u = (bits.double() + 0.5) / float(1 << 53)  # in (0, 1)
        self.step += 1
        return (logp.double() - torch.log(-torch.log(u))).to(logp.dtype)


class SampledLogprobs:
    """A logits processor that records, step by step, the log-probability of each sampled token under the
    temperature-scaled logits (before top-p), keeping one step's (sequences x V) row at a time: memory
    O(sequences x steps), never O(sequences x steps x V). It runs before transformers' temperature and top-p
    warpers, and at step t reads the token sampled at step t-1 from the ids it is given."""

    def __init__(self, temperature: float):
        self.temperature = temperature if temperature > 0 else 1.0
        self.last: torch.Tensor | None = None  # (N, V) log-softmax of the previous step
        self.steps: list[torch.Tensor] = []  # (N,) per generated token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            self.steps.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.last = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """(N, steps) logprobs of ``new_tokens`` (N, steps), the generated part of the sequences."""
        if self.last is not None and new_tokens.shape[1] > len(self.steps):
            self.steps.append(self.last.gather(-1, new_tokens[:, len(self.steps) : len(self.steps) + 1]).squeeze(-1))
        self.last = None
        if not self.steps:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.steps, dim=1)[:, : new_tokens.shape[1]]
