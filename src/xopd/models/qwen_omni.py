"""Adapter: the *thinker* of Qwen2.5-Omni / Qwen3-Omni (transformers' own classes) as a :class:`PolicyModel`.

The paper trains Qwen3-Omni's thinker (the LLM that reads audio and writes text; the talker that
speaks is not involved). transformers ships it as ``Qwen2_5OmniThinkerForConditionalGeneration``
and ``Qwen3OmniMoeThinkerForConditionalGeneration``; this adapter keeps their contract exactly,
mirroring :mod:`xopd.models.qwen2_audio`:

* features are the checkpoint's Whisper feature extractor (128 mel bins for the real models) at the
  clip's true length -- these audio towers chunk by ``n_window`` and take any length, so nothing is
  padded to 30 s;
* the user turn carries ``<audio_start><AUDIO><audio_end>`` and the single audio token is expanded
  to as many tokens as the model's own ``get_audio_features`` returns for the clip, whose embeddings
  are then the audio features (what the model's forward does with ``masked_scatter``);
* positions: for audio-only prompts the models' 3-D M-RoPE indices are equal in all three sections
  and sequential (``get_rope_index`` gives audio tokens ``arange(len) + start``), so the plain 1-D
  positions every policy here uses are passed and expanded to 3-D by the text model itself.

``causal_lm()`` is a small view over the thinker's text model and ``lm_head`` (shared modules, not
a registered submodule), because the text config class has no ``AutoModelForCausalLM`` entry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from xopd.errors import ModelError
from xopd.models.base import PolicyModel, Prompt, PromptBatch, cache_kwarg, left_pad, render_chat_ids

#: config model_type -> transformers thinker class name (full-model checkpoints load their thinker).
THINKER_CLASSES = {
    "qwen2_5_omni": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen3_omni_moe": "Qwen3OmniMoeThinkerForConditionalGeneration",
    "qwen3_omni_moe_thinker": "Qwen3OmniMoeThinkerForConditionalGeneration",
}
_END_TOKENS = ("<|audio_eos|>", "<|audio_end|>")


class ThinkerCausalLM(nn.Module):
    """``inputs_embeds -> logits`` over the thinker's text model + ``lm_head`` (shared, not copied)."""

    def __init__(self, thinker: nn.Module) -> None:
        super().__init__()
        # transformers >= 5.2x nests the text model (model.language_model); earlier 5.x has it as model
        self.body = getattr(thinker.model, "language_model", thinker.model)
        self.head = thinker.lm_head
        self.config = thinker.config.text_config
        self.generation_config = thinker.generation_config
        self.__dict__["thinker"] = thinker

    def get_input_embeddings(self) -> nn.Module:
        return self.body.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    @property
    def supports_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.__dict__["thinker"], "supports_gradient_checkpointing", False))

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.__dict__["thinker"].gradient_checkpointing_enable(**kwargs)

    def forward(
        self,
        inputs_embeds,
        attention_mask=None,
        position_ids=None,
        cache=None,
        use_cache=False,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        """``[B, T, D]`` embeddings -> ``logits [B, T or logits_to_keep, V]`` and the KV cache."""
        extra = {cache_kwarg(type(self.body)): cache} if cache is not None else {}
        out = self.body(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **extra,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return SimpleNamespace(logits=self.head(h), cache=new_cache, past_key_values=new_cache)


def drop_vision_tower(thinker: nn.Module) -> int:
    """Remove the thinker's vision tower (xopd's prompts are audio and text only): its ~0.5-0.7 B frozen
    parameters would otherwise sit on every GPU. Saved checkpoints then lack ``visual.*``;
    ``xopd export`` takes those from the base checkpoint. Returns the parameters dropped."""
    base = getattr(thinker, "model", thinker)
    visual = getattr(base, "visual", None)
    if visual is None:
        return 0
    n = sum(p.numel() for p in visual.parameters())
    base.visual = None
    return n


class OmniThinkerStudent(PolicyModel):
    """A Qwen2.5-Omni or Qwen3-Omni thinker (or a tiny random config of one) as a student."""

    adapter = None  # no CTC front end

    def __init__(self, model: nn.Module, tokenizer, feature_extractor) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        cfg = model.config
        tid = getattr(cfg, "audio_token_id", None)
        self.audio_token_id = int(tid if tid is not None else cfg.audio_token_index)
        start = getattr(cfg, "audio_start_token_id", None)
        end = getattr(cfg, "audio_end_token_id", None)
        vocab = tokenizer.get_vocab()
        if end is None:
            end = next((vocab[t] for t in _END_TOKENS if t in vocab), None)
        if start is None or end is None:
            raise ModelError(
                "Omni thinker: config/tokenizer lack the audio start/end tokens (audio_start_token_id, "
                f"{' or '.join(_END_TOKENS)}); is this an Omni checkpoint?"
            )
        toks = tokenizer.convert_ids_to_tokens([int(start), self.audio_token_id, int(end)])
        if any(
            t is None or vocab.get(t) != i for t, i in zip(toks, (int(start), self.audio_token_id, int(end)))
        ):
            raise ModelError(
                f"Omni thinker: tokenizer and config disagree on the audio tokens {toks}; "
                "use the tokenizer saved with the checkpoint"
            )
        self.audio_token = toks[1]
        self.audio_prompt = "".join(toks)
        if feature_extractor.feature_size != cfg.audio_config.num_mel_bins:
            raise ModelError(
                f"feature extractor gives {feature_extractor.feature_size} mel bins but the audio tower "
                f"takes {cfg.audio_config.num_mel_bins}; use the checkpoint's preprocessor_config.json"
            )
        self.__dict__["_lm_view"] = ThinkerCausalLM(model)

    # -- PolicyModel --------------------------------------------------------------------------------
    def causal_lm(self) -> nn.Module:
        return self.__dict__["_lm_view"]

    def encode_audio(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """One ``[n_i, D]`` tensor of audio-token embeddings per clip (the model's own tower + projection).

        Clips are encoded one at a time: the towers flatten a batch into one sequence and their
        per-clip lengths differ by model version; one call per clip needs neither.
        """
        fe = self.feature_extractor
        tower = self.model.model.audio_tower if hasattr(self.model, "model") else self.model.audio_tower
        first = next(tower.parameters())
        dev, dtype = first.device, first.dtype
        out = []
        for w in wavs:
            feats = fe(
                [np.asarray(w, dtype=np.float32)],
                sampling_rate=fe.sampling_rate,
                padding="longest",
                truncation=False,  # the extractor's default cuts at 30 s; these towers take any length
                return_attention_mask=True,
                return_tensors="pt",
            )
            n = int(feats["attention_mask"].sum())
            x = feats["input_features"][:, :, :n].to(dev, dtype)
            mask = torch.ones(1, n, dtype=torch.long, device=dev)
            h = self.model.get_audio_features(x, feature_attention_mask=mask).last_hidden_state
            out.append(h.to(self.model.get_input_embeddings().weight.dtype))
        return out

    def prompt_ids(self, prompt: Prompt, n_audio: int | None = None) -> list[int]:
        """Chat-templated ids; for S the audio token is expanded to ``n_audio`` copies."""
        if prompt.view == "T":
            return self.text_prompt_ids(prompt)
        if prompt.history:
            raise ModelError(
                "the Omni thinker adapter takes single-turn spoken prompts only; multi-turn audio "
                "(Prompt.history) is supported by SpeechLLM and Qwen2-Audio students"
            )
        ids = render_chat_ids(self.tokenizer, self.audio_prompt + (prompt.text or ""), prompt.system)
        where = [k for k, i in enumerate(ids) if i == self.audio_token_id]
        if len(where) != 1:
            raise ModelError(
                f"Omni chat template rendered {len(where)} {self.audio_token!r} tokens (need exactly 1): the "
                "template must keep the user content verbatim and the instruction must not contain it"
            )
        k = where[0]
        return ids[:k] + [self.audio_token_id] * int(n_audio if n_audio is not None else 1) + ids[k + 1 :]

    def embed_prompts(self, prompts: Sequence[Prompt]) -> PromptBatch:
        if not prompts:
            raise ValueError("embed_prompts needs at least one prompt")
        emb = self.model.get_input_embeddings()
        s_idx = [i for i, p in enumerate(prompts) if p.view == "S"]
        audio = dict(zip(s_idx, self.encode_audio([prompts[i].audio for i in s_idx]))) if s_idx else {}
        rows = []
        for i, p in enumerate(prompts):
            if p.view == "T":
                rows.append(emb(torch.tensor(self.prompt_ids(p), device=self.device)))
                continue
            a = audio[i]
            ids = self.prompt_ids(p, a.shape[0])
            k = ids.index(self.audio_token_id)
            e = emb(torch.tensor(ids, device=self.device))
            rows.append(torch.cat([e[:k], a, e[k + a.shape[0] :]], dim=0))
        return left_pad(rows)

    # -- training helpers ---------------------------------------------------------------------------
    def freeze(self, encoder: bool = True, projector: bool = True, lm: bool = False,
               adapter: bool = True) -> OmniThinkerStudent:
        """Which parts train. The tower's output projection into the LLM width (``proj`` in Qwen2.5-Omni,
        ``proj1``/``proj2`` in Qwen3-Omni) counts as the projector."""
        base = self.model.model
        base.audio_tower.requires_grad_(not encoder)
        for name in ("proj", "proj1", "proj2"):
            if hasattr(base.audio_tower, name):
                getattr(base.audio_tower, name).requires_grad_(not projector)
        if getattr(base, "visual", None) is not None:
            base.visual.requires_grad_(False)
        base.language_model.requires_grad_(not lm)
        self.model.lm_head.requires_grad_(not lm)
        return self

    # -- save / load --------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.feature_extractor.save_pretrained(path)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        device: str | torch.device = "cpu",
        frozen: bool = False,
    ) -> OmniThinkerStudent:
        """Load a thinker (or full Omni) directory: config.json, weights, tokenizer, preprocessor_config.json."""
        import json

        import transformers
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
        mtype = json.loads(cfg_file.read_text()).get("model_type")
        cls_name = THINKER_CLASSES.get(mtype)
        model_cls = getattr(transformers, cls_name, None) if cls_name else None
        if model_cls is None:
            raise ModelError(
                f"{path}: model_type {mtype!r} has no thinker class in transformers "
                f"{transformers.__version__} (need one of {sorted(THINKER_CLASSES)})"
            )
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            fe = WhisperFeatureExtractor.from_pretrained(path)
            model = model_cls.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot load as an Omni thinker: {str(e).splitlines()[0]}") from e
        if not getattr(tok, "chat_template", None):
            for name in ("chat_template.jinja", "chat_template.json"):
                f = path / name
                if f.is_file():
                    text = f.read_text()
                    tok.chat_template = json.loads(text)["chat_template"] if name.endswith(".json") else text
                    break
        drop_vision_tower(model)
        student = cls(model.to(device), tok, fe)
        if frozen:
            student.requires_grad_(False)
            student.eval()
        return student
