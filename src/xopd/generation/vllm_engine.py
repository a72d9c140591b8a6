"""A colocated vLLM rollout engine (``rollout_engine: vllm``), one engine per process.

Like TRL's colocate mode and verl's hybrid engine: vLLM runs in the trainer's own process and serves
the student's LM exported as a plain Hugging Face causal LM. Prompts go in as the student's own prompt
embeddings (:class:`~xopd.models.base.PromptBatch`: audio through xopd's tower and projector), so
every xopd student works without vLLM's audio processors. Weights:

* the engine starts from the LM's config with placeholder weights (``load_format="dummy"``) and
  takes the real ones at once through :meth:`update_weights`, the same path as after every
  optimizer step: vLLM's in-place ``reload_weights`` fed one tensor at a time (an FSDP2 shard is
  gathered per tensor with ``full_tensor()``, never the whole LM at once), which also re-runs the
  weight post-processing (the CPU backend keeps packed copies that a bare ``load_weights`` leaves
  stale);
* on CUDA the engine sleeps (level 1: weights to host memory, KV cache dropped) outside rollouts.

Its sampling log-probs come from vLLM's kernels, not the trainer's (``trainer_logprobs = False``): the
algorithm rescores the samples for pi_old and logs the gap (:mod:`xopd.generation.engine`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from xopd.errors import ConfigError
from xopd.generation.backend import SampleSpec
from xopd.generation.engine import RolloutEngine
from xopd.generation.sampling import Rollout
from xopd.generation.seeds import derive_seed
from xopd.models.base import PolicyModel, PromptBatch

FALLBACK = "set rollout_engine: hf (xopd's own decode loop) to train without vLLM"


def _import_vllm():
    # in-process engine: weights stream from the trainer's tensors, which a separate engine process
    # cannot see (TRL's colocate mode does the same)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(f"rollout_engine vllm: vLLM is not installed here ({e}); install it (GPU: pip install "
                          f"vllm; CPU: bash scripts/setup_vllm.sh builds .venv-vllm/) or {FALLBACK}") from e
    return vllm


def _mrope(config: Any) -> bool:
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    return isinstance(rope, dict) and "mrope_section" in rope


def check_servable(student: PolicyModel, cfg: Any) -> Any:
    """The student's LM if vLLM can serve it as a plain causal LM; else one line naming the cause."""
    if getattr(cfg, "lora_r", 0):
        raise ConfigError(f"rollout_engine vllm: LoRA adapters are not synced to vLLM (lora_r "
                          f"{cfg.lora_r}); train full weights (lora_r: 0) or {FALLBACK}")
    lm = student.causal_lm()
    config = lm.config
    if _mrope(config) or _mrope(getattr(config, "text_config", None)):
        raise ConfigError(f"rollout_engine vllm: {type(student).__name__}'s LM uses multimodal rotary positions "
                          f"(mrope); a plain causal-LM export would roll out with wrong positions; {FALLBACK}")
    _import_vllm()
    from vllm.model_executor.models import ModelRegistry

    arch = type(lm).__name__
    if arch not in ModelRegistry.get_supported_archs():
        raise ConfigError(f"rollout_engine vllm: vLLM does not know the LM class {arch}; {FALLBACK}")
    return lm


def _export_config(lm: torch.nn.Module, out: Path) -> Path:
    """``config.json`` of the LM as a plain HF causal LM (weights follow through update_weights)."""
    out.mkdir(parents=True, exist_ok=True)
    data = lm.config.to_dict()
    data["architectures"] = [type(lm).__name__]
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(out / "config.json")
    return out


def _full_tensors(lm: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) one at a time; an FSDP2 shard is gathered for its tensor only."""
    for name, t in lm.state_dict().items():
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        yield name, t.detach()


class VLLMEngine(RolloutEngine):
    name = "vllm"
    trainer_logprobs = False

    def __init__(self, student: PolicyModel, cfg: Any) -> None:
        lm = check_servable(student, cfg)
        vllm = _import_vllm()
        self._vllm = vllm
        self.device = student.device
        out = Path(getattr(cfg, "output_dir", ".")) / "rollout_engine"
        self.sleep_mode = self.device.type == "cuda" and getattr(cfg, "vllm_sleep", True)
        # the engine serves in the dtype the trainer's forwards run in: bf16 under CUDA autocast (fp32
        # master weights would otherwise make vLLM hold and run an fp32 copy)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" and getattr(cfg, "autocast_bf16", False) \
            else next(lm.parameters()).dtype
        dtype = str(self.dtype).removeprefix("torch.")
        kwargs: dict[str, Any] = dict(
            model=str(_export_config(lm, out)), load_format="dummy", skip_tokenizer_init=True,
            enable_prompt_embeds=True, dtype=dtype, seed=int(getattr(cfg, "seed", 0)),
            max_model_len=int(getattr(cfg, "vllm_max_model_len", 4096)),
            enforce_eager=self.device.type != "cuda", logprobs_mode="processed_logprobs",
        )
        if self.device.type == "cuda":
            kwargs.update(gpu_memory_utilization=float(getattr(cfg, "vllm_gpu_memory_utilization", 0.3)),
                          enable_sleep_mode=self.sleep_mode)
        self.llm = vllm.LLM(**kwargs)
        self.vocab = int(lm.config.vocab_size)
        self._asleep = False
        self.update_weights(student)
        self._probe(student)
        self.sleep()

    def _probe(self, student: PolicyModel) -> None:
        """One token from one position now, so a model vLLM's kernels cannot run (e.g. a head size the
        CPU attention lacks) fails before training with one line, not in the first rollout."""
        hidden = int(student.causal_lm().config.hidden_size)
        embeds = torch.zeros(1, hidden, dtype=self.dtype)
        try:
            self.llm.generate([{"prompt_embeds": embeds}], self._vllm.SamplingParams(max_tokens=1, detokenize=False),
                              use_tqdm=False)
        except RuntimeError as e:
            raise ConfigError(f"rollout_engine vllm: vLLM cannot run {type(student.causal_lm()).__name__} here "
                              f"({str(e).splitlines()[0]}); {FALLBACK}") from e

    # -- weights and memory ------------------------------------------------------------------------
    def update_weights(self, model: PolicyModel) -> None:
        was_asleep = self._asleep
        if was_asleep:
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": _full_tensors(model.causal_lm()),
                                                          "is_checkpoint_format": True})
        if was_asleep:
            self.llm.sleep(level=1)

    def sleep(self) -> None:
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # -- rollouts ----------------------------------------------------------------------------------
    def _params(self, model: PolicyModel, spec: SampleSpec, seed: int):
        allowed = list(range(spec.vocab_limit)) if spec.vocab_limit is not None and spec.vocab_limit < self.vocab \
            else None
        return self._vllm.SamplingParams(
            n=1, temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k, max_tokens=spec.max_new_tokens,
            seed=seed, logprobs=0, stop_token_ids=list(model.eos_token_ids), detokenize=False,
            skip_special_tokens=False, allowed_token_ids=allowed)

    def generate(self, model: PolicyModel, prompts: PromptBatch, spec: SampleSpec,
                 generator: torch.Generator | None = None, row_seeds: Sequence[int] | None = None) -> Rollout:
        n, b = spec.n, prompts.embeds.shape[0]
        if row_seeds is not None and len(row_seeds) != b:
            raise ValueError(f"{len(row_seeds)} row seeds for {b} prompts")
        keep = prompts.attention_mask.bool()
        requests, params = [], []
        for i in range(b):
            embeds = prompts.embeds[i][keep[i]].detach().to(self.dtype)
            for j in range(n):
                if row_seeds is not None:
                    seed = derive_seed(row_seeds[i], j)
                else:
                    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                                             device=generator.device if generator is not None else "cpu"))
                requests.append({"prompt_embeds": embeds})
                params.append(self._params(model, spec, seed % (2**63)))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return self._rollout(outputs, n, model.pad_token_id, prompts.embeds.device)

    @staticmethod
    def _rollout(outputs, n: int, pad: int, device: torch.device) -> Rollout:
        done = [o.outputs[0] for o in outputs]
        width = max(1, max(len(c.token_ids) for c in done))
        ids = torch.full((len(done), width), pad, dtype=torch.long)
        mask = torch.zeros(len(done), width, dtype=torch.bool)
        logprobs = torch.zeros(len(done), width)
        for r, c in enumerate(done):
            toks = list(c.token_ids)
            ids[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            mask[r, : len(toks)] = True
            logprobs[r, : len(toks)] = torch.tensor([c.logprobs[t][tok].logprob for t, tok in enumerate(toks)])
        ended = torch.tensor([c.finish_reason == "stop" for c in done], dtype=torch.bool)
        return Rollout(ids=ids.to(device), mask=mask.to(device), logprobs=logprobs.to(device),
                       prompt_index=torch.arange(len(done) // n, device=device).repeat_interleave(n),
                       ended=ended.to(device))
