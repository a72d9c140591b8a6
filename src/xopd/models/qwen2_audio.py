"""Adapter: ``transformers.Qwen2AudioForConditionalGeneration`` as an xopd :class:`PolicyModel`.

Qwen2-Audio's own contract is kept exactly: features come from its processor's Whisper feature
extractor padded to 30 s (its encoder refuses anything else), the user turn carries
``<|audio_bos|><|AUDIO|><|audio_eos|>`` and the single ``<|AUDIO|>`` is expanded to one token per
pooled encoder frame (what the processor does), whose embeddings are replaced by the projected audio
features (what the model's forward does with ``masked_scatter``). We compute the audio tower and
projector ourselves so that prompts become plain input embeddings, like every other policy here.

``causal_lm()`` is a ``<Text>ForCausalLM`` *view* built around the model's own ``language_model``
and ``lm_head`` modules (shared, not copied): Qwen2-Audio's ``language_model`` is a base model
without a head, and the full model's forward does not take ``logits_to_keep``. The view is not a
registered submodule, so state dicts, ``.to()`` and saving all go through the real model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xopd.errors import ModelError
from xopd.models.base import (
    PolicyModel,
    Prompt,
    PromptBatch,
    conversation,
    left_pad,
    n_clips,
    render_messages_ids,
    spoken_clips,
)


def _base(model: nn.Module) -> nn.Module:
    """transformers 5 nests the parts under ``model.model``; 4.x kept them on the top level."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "audio_tower") else model


class Qwen2AudioStudent(PolicyModel):
    """Qwen2-Audio (or a tiny random config of it) behind the same interface as :class:`SpeechLLM`."""

    adapter = None  # no CTC front end

    #: The user-turn prefix Qwen2-Audio's chat template renders for one audio item.
    audio_prompt = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"

    def __init__(self, model: nn.Module, processor) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if not getattr(self.tokenizer, "chat_template", None) and getattr(processor, "chat_template", None):
            self.tokenizer.chat_template = processor.chat_template
        self.audio_token = getattr(processor, "audio_token", "<|AUDIO|>")
        self.audio_token_id = int(model.config.audio_token_id)
        tok_id = self.tokenizer.convert_tokens_to_ids(self.audio_token)
        if tok_id != self.audio_token_id:
            raise ModelError(
                f"Qwen2-Audio: tokenizer maps {self.audio_token!r} to {tok_id} but config.audio_token_id is "
                f"{self.audio_token_id}; fix audio_token_index in config.json"
            )
        self.__dict__["_lm_view"] = self._build_lm_view()

    def _build_lm_view(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        text_cfg = self.model.config.text_config
        try:
            cls = AutoModelForCausalLM._model_mapping[type(text_cfg)]
        except KeyError:
            return self.model  # unknown text model: the full model also runs on inputs_embeds
        with torch.device("meta"):
            view = cls(text_cfg)
        setattr(view, view.base_model_prefix, _base(self.model).language_model)
        view.set_output_embeddings(self.model.get_output_embeddings())
        view.generation_config = self.model.generation_config
        return view

    # -- PolicyModel --------------------------------------------------------------------------------
    def causal_lm(self) -> nn.Module:
        return self.__dict__["_lm_view"]

    def _features(self, wavs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """30 s-padded log-mels ``[B, n_mels, 3000]`` and their frame mask ``[B, 3000]``."""
        fe = self.processor.feature_extractor
        limit = getattr(fe, "n_samples", None)
        for i, w in enumerate(wavs):
            if limit is not None and len(w) > limit:
                raise ModelError(
                    f"Qwen2-Audio takes at most {limit / fe.sampling_rate:.0f} s of audio; prompt {i} is "
                    f"{len(w) / fe.sampling_rate:.1f} s: trim it or lower the data's max_seconds"
                )
        out = fe(
            [np.asarray(w, dtype=np.float32) for w in wavs],
            sampling_rate=fe.sampling_rate,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        return out["input_features"], out["attention_mask"]

    def encode_audio(self, wavs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> ``(projected [B, N_max, D], n_tokens [B])``, exactly as the model's forward does."""
        from transformers.masking_utils import create_bidirectional_mask

        base = _base(self.model)
        tower = base.audio_tower
        feats, fmask = self._features(wavs)
        expected = int(tower.config.max_source_positions) * 2
        if feats.shape[-1] != expected:
            raise ModelError(
                f"Qwen2-Audio feature extractor gives {feats.shape[-1]} frames but the audio tower expects "
                f"{expected}: the processor and the model config disagree"
            )
        dev = tower.conv1.weight.device
        feats = feats.to(dev, tower.conv1.weight.dtype)
        fmask = fmask.to(dev)
        feat_lens, out_lens = tower._get_feat_extract_output_lengths(fmask.sum(-1))
        max_len = (feats.shape[-1] - 2) // 2 + 1
        mask2d = (torch.arange(max_len, device=dev)[None, :] < feat_lens[:, None]).long()
        dummy = torch.zeros(feats.shape[0], max_len, 1, dtype=feats.dtype, device=dev)
        attn = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask2d)
        hidden = tower(feats, attention_mask=attn).last_hidden_state
        proj = base.multi_modal_projector(hidden)
        return proj.to(self.model.get_input_embeddings().weight.dtype), out_lens

    def prompt_ids(self, prompt: Prompt, n_audio: int | Sequence[int] | None = None) -> list[int]:
        """Chat-templated ids of one prompt; for S each ``<|AUDIO|>`` is expanded to its clip's token count.

        ``n_audio``: one count per audio clip in conversation order (history turns first, then the
        prompt's own clip); an int for a single-turn prompt. Audio items are numbered across the
        conversation ("Audio 1:", "Audio 2:", ...) as Qwen2-Audio's chat template does.
        """
        if prompt.view == "T":
            return self.text_prompt_ids(prompt)
        count = iter(range(1, 1000))

        def content(text: str | None, audio: bool) -> str:
            if not audio:
                return text or ""
            return self.audio_prompt.replace("Audio 1:", f"Audio {next(count)}:") + (text or "")

        # single-turn: exactly render_chat_ids(audio_prompt + instruction, system)
        ids = render_messages_ids(self.tokenizer, conversation(prompt, content))
        where = [k for k, i in enumerate(ids) if i == self.audio_token_id]
        need = n_clips(prompt)
        if len(where) != need:
            raise ModelError(
                f"Qwen2-Audio chat template rendered {len(where)} {self.audio_token!r} tokens (need exactly {need}): "
                "the template must keep the user content verbatim and the instruction must not contain it"
            )
        counts = [n_audio] if n_audio is None or isinstance(n_audio, int) else list(n_audio)
        out, prev = [], 0
        for k, n in zip(where, counts, strict=True):
            out += ids[prev:k] + [self.audio_token_id] * int(n if n is not None else 1)
            prev = k + 1
        return out + ids[prev:]

    def embed_prompts(self, prompts: Sequence[Prompt]) -> PromptBatch:
        if not prompts:
            raise ValueError("embed_prompts needs at least one prompt")
        emb = self.model.get_input_embeddings()
        clips, first = spoken_clips(prompts)
        audio, n_tok = (None, None)
        if clips:
            audio, n_tok = self.encode_audio(clips)
        rows = []
        for i, p in enumerate(prompts):
            if p.view == "T":
                rows.append(emb(torch.tensor(self.prompt_ids(p), device=self.device)))
                continue
            js = range(first[i], first[i] + n_clips(p))
            counts = [int(n_tok[j]) for j in js]
            ids = self.prompt_ids(p, counts if p.history else counts[0])
            e = emb(torch.tensor(ids, device=self.device))
            pieces, prev, pos = [], 0, 0
            for j, n in zip(js, counts):
                k = ids.index(self.audio_token_id, pos)
                pieces += [e[prev:k], audio[j, :n]]
                prev = pos = k + n
            rows.append(torch.cat([*pieces, e[prev:]], dim=0))
        return left_pad(rows)

    # -- training helpers ---------------------------------------------------------------------------
    def audio_window_seconds(self) -> float | None:
        fe = self.processor.feature_extractor  # every clip is padded to the processor's 30 s window
        return fe.n_samples / fe.sampling_rate

    def freeze(self, encoder: bool = True, projector: bool = True, lm: bool = False,
               adapter: bool = True) -> Qwen2AudioStudent:
        """Set which parts train (paper default: only the LLM backbone). ``True`` = frozen."""
        base = _base(self.model)
        base.audio_tower.requires_grad_(not encoder)
        base.multi_modal_projector.requires_grad_(not projector)
        base.language_model.requires_grad_(not lm)
        self.model.get_output_embeddings().requires_grad_(not lm)
        return self

    # -- save / load --------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        device: str | torch.device = "cpu",
        frozen: bool = False,
    ) -> Qwen2AudioStudent:
        """Load a Qwen2-Audio directory (config.json model_type ``qwen2_audio`` + processor files)."""
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
        try:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = Qwen2AudioForConditionalGeneration.from_pretrained(
                path, dtype=dtype, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot load as Qwen2-Audio: {str(e).splitlines()[0]}") from e
        student = cls(model.to(device), processor)
        if frozen:
            student.requires_grad_(False)
            student.eval()
        return student
