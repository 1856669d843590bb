"""Generation: the generator protocol, rollouts, and the transformers generator.

A generator turns tokenized prompts into rollouts (token ids, text, finish
reason and the sampler's per-token logprobs) and receives the policy's weights
after every optimizer step. The trainer only talks to this protocol, so the
transformers generator here and a vLLM engine plug in the same way.

Logprobs are those of the sampled token under the temperature-scaled logits,
before top-p truncation. Rollouts come back prompt-major: the ``n`` samples of
prompt ``i`` are contiguous.

It does not score, pack or train: see :mod:`reasonrl.verifiers`,
:mod:`reasonrl.data` and :mod:`reasonrl.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None
    # token ids that may not be the first generated token (used to force a
    # non-empty think block in diagnostics)
    banned_first_tokens: tuple[int, ...] = ()


@dataclass
class Rollout:
    """One sampled completion: what the generator returned, then its score.

    ``loss_mask`` has one entry per completion token: 1 for tokens the policy
    wrote, 0 for tokens it did not (say, a tool's output inserted mid-completion);
    None means every token is the policy's. ``policy_version`` is the number of
    optimizer steps the sampling policy had taken.
    """

    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finish_reason: str  # "stop" (eos generated) or "length" (hit max_new_tokens)
    logprobs: list[float] = field(default_factory=list)  # the sampler's, per completion token
    loss_mask: list[int] | None = None
    policy_version: int = 0
    reward: float = 0.0
    verdicts: dict = field(default_factory=dict)  # verifier name -> Verdict | None
    masked: bool = False  # a timeout/error verdict: out of the loss, the counts and the group baseline

    def token_mask(self) -> list[int]:
        return [1] * len(self.completion_ids) if self.loss_mask is None else list(self.loss_mask)


@dataclass
class RolloutBatch:
    """One step's sampled groups: B problems x G scored rollouts, prompt-major."""

    problems: list[dict]
    rollouts: list[Rollout]
    group_size: int
    stats: dict = field(default_factory=dict)  # generate_s, verify_s, dropped, redraws, zero_std_frac, ...

    @property
    def rewards(self) -> torch.Tensor:
        return torch.tensor([r.reward for r in self.rollouts], dtype=torch.float32)  # (N,)

    @property
    def masked(self) -> list[bool]:
        return [r.masked for r in self.rollouts]


class Generator(Protocol):
    # True when the logprobs come from the very module the trainer updates (no
    # sampler/trainer mismatch to correct)
    exact_logprobs: bool

    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling) -> list[Rollout]: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the next generation use ``model``'s current weights."""

    def sleep(self) -> None:
        """Release generation memory while the policy trains (may be a no-op)."""

    def wake_up(self) -> None: ...


class HFGenerator:
    """``transformers.generate`` on the policy module itself (colocated, no copy).

    Because it samples from the very module the trainer updates, weight sync is
    a no-op. ``batch_size`` bounds how many sequences are generated at once.
    """

    exact_logprobs = True

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 256, model_path: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        if tokenizer.pad_token_id is None:
            raise ValueError("HFGenerator needs a tokenizer with a pad token")

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling) -> list[Rollout]:
        from transformers import GenerationConfig

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        greedy = sampling.temperature <= 0
        gen_cfg = GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy or sampling.top_p >= 1 else sampling.top_p,
            top_k=None,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            begin_suppress_tokens=list(sampling.banned_first_tokens) or None,
            num_return_sequences=n,
            return_dict_in_generate=True,
            output_logits=True,
        )
        was_training = self.model.training
        self.model.eval()
        per_chunk = max(1, self.batch_size // n)
        out: list[Rollout] = []
        try:
            for start in range(0, len(prompt_ids), per_chunk):
                chunk = prompt_ids[start : start + per_chunk]
                out.extend(self._generate_chunk(chunk, start, n, gen_cfg, sampling.temperature))
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, chunk, offset: int, n: int, gen_cfg, temperature: float) -> list[Rollout]:
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(p) for p in chunk)
        device = next(self.model.parameters()).device
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):  # left padding
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        res = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
        new = res.sequences[:, width:].cpu()  # (len(chunk)*n, steps)
        logits = torch.stack(res.logits, dim=1).float().cpu()  # (len(chunk)*n, steps, V)
        if temperature > 0:
            logits = logits / temperature
        lp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        rollouts = []
        for row in range(new.shape[0]):
            toks = new[row].tolist()
            if eos in toks:
                k = toks.index(eos) + 1
                toks, reason = toks[:k], "stop"
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
