"""SpeechLLM: Whisper-style audio encoder + frame-stacking projector + any HF causal LM.

The speech view S of a prompt is the LLM's own chat template applied to a user turn whose content
is one audio placeholder token (followed by "\\n" + an instruction, if any). The placeholder's single
embedding is replaced by the N projected audio frames of that clip, N from the clip's true length,
so the LLM sees ``[chat prefix | audio frames | instruction | assistant prompt]``. The text view T
is exactly what a :class:`~xopd.models.text_lm.TextLM` of the same backbone would see: that is what
makes the in-modal (T) and cross-modal (S) rollouts comparable.

Directory layout (``save_pretrained`` / ``from_pretrained``)::

    xopd_config.json        model_type "xopd_speech_llm", encoder/adapter/projector/feature settings, placeholder
    encoder/                WhisperEncoder.save_pretrained (config.json + model.safetensors)
    adapter.safetensors     the CTC adapter's weights (only when the model has one: ``adapter`` in the config)
    lm/                     the causal LM's save_pretrained (+ its tokenizer: usable as a text model)
    projector.safetensors   projector weights
    tokenizer files         the student's tokenizer (with the placeholder token)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xopd.errors import ModelError
from xopd.models.adapter import CTCAdapter
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
from xopd.models.encoder import AudioEncoder
from xopd.models.encoder_cache import EncoderCacheMixin
from xopd.models.projector import FrameStackProjector

XOPD_CONFIG = "xopd_config.json"
MODEL_TYPE = "xopd_speech_llm"
DEFAULT_AUDIO_TOKEN = "<|audio|>"
DEFAULT_FEATURES = {"sampling_rate": 16000, "n_fft": 400, "hop_length": 160}


def ensure_audio_token(tokenizer, audio_token: str) -> int:
    """Add ``audio_token`` as a special token if the tokenizer lacks it; return its id."""
    if audio_token not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(audio_token, special=True, normalized=False)], special_tokens=True)
    ids = tokenizer(audio_token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ModelError(f"audio placeholder {audio_token!r} does not tokenize to one token ({ids})")
    return int(ids[0])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, device, dtype and values (``torch.equal`` alone raises across devices)."""
    return a.shape == b.shape and a.device == b.device and a.dtype == b.dtype and torch.equal(a, b)


class SpeechLLM(EncoderCacheMixin, PolicyModel):
    """Audio encoder + projector + causal LM behind the :class:`PolicyModel` interface."""

    def __init__(
        self,
        encoder: AudioEncoder,
        projector: FrameStackProjector,
        lm: nn.Module,
        tokenizer,
        audio_token: str = DEFAULT_AUDIO_TOKEN,
        feature_config: dict | None = None,
        adapter: CTCAdapter | None = None,
    ) -> None:
        super().__init__()
        from xopd.data.features import LogMelExtractor

        self.encoder = encoder
        self.adapter = adapter
        self.projector = projector
        self.lm = lm
        self.tokenizer = tokenizer
        self.audio_token = audio_token
        self.audio_token_id = ensure_audio_token(tokenizer, audio_token)
        rows = lm.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            lm.resize_token_embeddings(len(tokenizer))
        d_front = adapter.d_model if adapter is not None else encoder.d_model
        if projector.d_enc != d_front or projector.d_lm != lm.get_input_embeddings().weight.shape[1]:
            raise ModelError(
                f"projector maps {projector.d_enc}->{projector.d_lm} but the "
                f"{'adapter' if adapter is not None else 'encoder'} has d_model={d_front} and the LM hidden "
                f"size is {lm.get_input_embeddings().weight.shape[1]}"
            )
        if adapter is not None and adapter.d_in != encoder.d_model:
            raise ModelError(f"adapter reads d_in={adapter.d_in} but the encoder has d_model={encoder.d_model}")
        if adapter is not None and adapter.vocab_size < len(tokenizer):
            raise ModelError(f"the adapter's CTC head covers {adapter.vocab_size} tokens but the tokenizer has "
                             f"{len(tokenizer)}: rebuild the adapter for this tokenizer")
        self.feature_config = {**DEFAULT_FEATURES, **(feature_config or {}), "n_mels": encoder.num_mel_bins}
        self.features = LogMelExtractor(**self.feature_config)

    # -- PolicyModel --------------------------------------------------------------------------------
    def causal_lm(self) -> nn.Module:
        return self.lm

    def encode_audio(self, wavs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of 16 kHz waveforms -> ``(embeds [B, N_max, D_lm], n_frames [B])`` in the LM's dtype.

        One batched pass through features -> encoder -> projector; item i's frames are
        ``embeds[i, :n_frames[i]]`` and do not depend on the other items.
        """
        hidden, h_len = self.encode_hidden(wavs)
        dtype = self.lm.get_input_embeddings().weight.dtype
        if self.adapter is None:
            proj, n = self.projector(hidden.to(self.projector.fc1.weight.dtype), h_len)
            return proj.to(dtype), n
        out = self._adapter_output(hidden.to(self.adapter.inp.weight.dtype), h_len)
        if self.adapter.lm_input == "posterior":  # the LM's own embeddings of what was heard (LegoSLM)
            tok_emb = self.lm.get_input_embeddings()(out.token_ids)  # [B, N, k, D]
            embeds = (out.token_weights[..., None].to(tok_emb.dtype) * tok_emb).sum(-2)
        else:
            embeds, _ = self.projector(out.states.to(self.projector.fc1.weight.dtype), out.lengths)
        lengths = out.lengths
        if out.prefix is not None:  # acoustic summary positions in front of the words
            pre, _ = self.projector(out.prefix.to(self.projector.fc1.weight.dtype))
            k = pre.shape[1]
            full = embeds.new_zeros(embeds.shape[0], k + embeds.shape[1], embeds.shape[2])
            full[:, :k] = pre.to(embeds.dtype)
            full[:, k:] = embeds
            embeds, lengths = full, lengths + k
        return embeds.to(dtype), lengths

    def _adapter_output(self, hidden: torch.Tensor, lengths: torch.Tensor):
        """The CTC adapter's output for ``hidden``; while the adapter is frozen the last batch's output is
        reused when exactly the same states come again.

        Why: an on-policy step embeds its spoken prompts twice, once for the rollout and once for the
        update with grad (X-OPD, GKD, GRPO), and a frozen adapter gives the same output both times (same
        inputs, same shapes, same kernels), so the second pass is skipped (its share of the demo's X-OPD
        step: docs/BENCHMARKS.md). Any change to the adapter's weights (an optimizer step,
        ``load_state_dict``) bumps their version counters and clears the memo; a trainable adapter, dropout
        or inputs that carry grad bypass it.
        """
        a = self.adapter
        if a.training or hidden.requires_grad or any(p.requires_grad for p in a.parameters()):
            self._adapter_memo = None
            return a(hidden, lengths)
        # what the output depends on besides the states: the weights' values (version counters), and where
        # and in which dtype they live (``.to()`` moves them without bumping the counters)
        version = tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in a.parameters())
        memo = getattr(self, "_adapter_memo", None)
        if memo is not None and memo[0] == version and _same(memo[1], hidden) and _same(memo[2], lengths):
            return memo[3]
        out = a(hidden, lengths)
        self._adapter_memo = (version, hidden, lengths, out)
        return out

    def encode_hidden(self, wavs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The audio tower's states ``(hidden [B, T, d_enc], lengths [B])`` (from the cache when enabled)."""
        wavs = list(wavs)
        return self._encode_cached(wavs) if self._encoder_cache is not None else self._encode(wavs)

    @torch.no_grad()
    def hear(self, wavs: Sequence[np.ndarray]) -> list[str]:
        """What the front end hears: the CTC adapter's greedy transcript of each clip (no LM involved)."""
        if self.adapter is None:
            raise ModelError("this SpeechLLM has no CTC adapter, so its front end has no transcript of its own")
        hidden, h_len = self.encode_hidden(wavs)
        _, logits, n = self.adapter.frames(hidden.to(self.adapter.inp.weight.dtype), h_len)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in self.adapter.greedy(logits, n)]

    def _encode(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = self.features(wavs)
        enc = self.encoder.whisper
        feats = feats.to(device=enc.conv1.weight.device, dtype=enc.conv1.weight.dtype)
        return self.encoder(feats, lengths.to(feats.device))

    def audio_window_seconds(self) -> float | None:
        return self.encoder.max_frames * self.feature_config.get("hop_length", 160) / self.feature_config.get(
            "sampling_rate", 16000)

    def speech_content(self, prompt: Prompt) -> str:
        """The user-turn text of an S prompt: the placeholder, then the instruction if there is one."""
        return self._turn_content(prompt.text, True)

    def _turn_content(self, text: str | None, has_audio: bool) -> str:
        """A user turn of a conversation: the placeholder (+ instruction) when spoken, else its text."""
        if not has_audio:
            return text or ""
        return self.audio_token if not text else f"{self.audio_token}\n{text}"

    def embed_prompts(self, prompts: Sequence[Prompt]) -> PromptBatch:
        """Chat-template every prompt; S prompts get their audio frames spliced at the placeholder.

        With a conversation history, each spoken user turn has its own placeholder, filled in order.
        """
        if not prompts:
            raise ValueError("embed_prompts needs at least one prompt")
        emb = self.lm.get_input_embeddings()
        clips, first = spoken_clips(prompts)
        audio, n_frames = (None, None)
        if clips:
            audio, n_frames = self.encode_audio(clips)
        rows = []
        for i, p in enumerate(prompts):
            if p.view == "T":
                rows.append(emb(torch.tensor(self.text_prompt_ids(p), device=self.device)))
                continue
            # without history this is render_chat_ids(placeholder + instruction, system): one path for both
            messages = conversation(p, self._turn_content)
            ids = torch.tensor(render_messages_ids(self.tokenizer, messages), device=self.device)
            where = (ids == self.audio_token_id).nonzero().flatten().tolist()
            need = n_clips(p)
            if len(where) != need:
                raise ModelError(
                    f"the chat template of {getattr(self.tokenizer, 'name_or_path', '?')!r} rendered "
                    f"{len(where)} audio placeholder tokens {self.audio_token!r} (need exactly {need}): the "
                    "template must keep the user content verbatim and the instruction must not contain it"
                )
            e, pieces, prev = emb(ids), [], 0
            for j, k in enumerate(where, start=first[i]):
                pieces += [e[prev:k], audio[j, : int(n_frames[j])]]
                prev = k + 1
            rows.append(torch.cat([*pieces, e[prev:]], dim=0))
        return left_pad(rows)

    # -- training helpers ---------------------------------------------------------------------------
    def freeze(self, encoder: bool = True, projector: bool = True, lm: bool = False,
               adapter: bool = True) -> SpeechLLM:
        """Set which parts train (paper default: only the LLM backbone). ``True`` = frozen."""
        self.encoder.requires_grad_(not encoder)
        if self.adapter is not None:
            self.adapter.requires_grad_(not adapter)
        self.projector.requires_grad_(not projector)
        self.lm.requires_grad_(not lm)
        return self

    def audio_positions(self, n_samples: int) -> int:
        """How many LLM positions a clip of ``n_samples`` occupies at most after encoder, adapter and
        projector (exact without CTC compression; with it, the clip's recognised tokens, at most this)."""
        mel = self.features.num_frames(n_samples)
        enc = (mel - 1) // 2 + 1 if mel > 0 else 0
        if self.adapter is not None:
            enc = -(-enc // self.adapter.stack)
        return -(-enc // self.projector.stack)

    # -- save / load --------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {
            "model_type": MODEL_TYPE,
            "audio_token": self.audio_token,
            "encoder": self.encoder.config.to_dict(),
            "projector": self.projector.config_dict(),
            **({"adapter": self.adapter.config_dict()} if self.adapter is not None else {}),
            "features": dict(self.feature_config),
            "lm_architectures": list(
                getattr(self.lm.config, "architectures", None) or [type(self.lm).__name__]
            ),
        }

    def save_pretrained(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(path / "encoder")
        self.lm.save_pretrained(path / "lm")
        self.tokenizer.save_pretrained(path / "lm")
        state = {k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()}
        save_file(state, str(path / "projector.safetensors"), metadata={"format": "pt"})
        if self.adapter is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.adapter.state_dict().items()}
            save_file(state, str(path / "adapter.safetensors"), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(path)
        (path / XOPD_CONFIG).write_text(json.dumps(self.config_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        device: str | torch.device = "cpu",
        frozen: bool = False,
    ) -> SpeechLLM:
        """Load a directory written by :meth:`save_pretrained` (exact round trip)."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        cfg_file = path / XOPD_CONFIG
        if not cfg_file.is_file():
            raise ModelError(f"{path}: no {XOPD_CONFIG}; not a SpeechLLM directory")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("model_type") != MODEL_TYPE:
            raise ModelError(f"{cfg_file}: model_type {cfg.get('model_type')!r}, expected {MODEL_TYPE!r}")
        parts = ("encoder", "lm", "projector.safetensors") + (("adapter.safetensors",) if "adapter" in cfg else ())
        for part in parts:
            if not (path / part).exists():
                raise ModelError(f"{path}: missing {part}; the SpeechLLM directory is incomplete")
        encoder = AudioEncoder.from_pretrained(path / "encoder", dtype=dtype)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            lm = AutoModelForCausalLM.from_pretrained(
                path / "lm", dtype=dtype, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot load the LM or tokenizer: {str(e).splitlines()[0]}") from e
        projector = FrameStackProjector.from_config(cfg["projector"])
        projector.load_state_dict(load_file(str(path / "projector.safetensors")))
        adapter = None
        if "adapter" in cfg:
            adapter = CTCAdapter.from_config(cfg["adapter"])
            adapter.load_state_dict(load_file(str(path / "adapter.safetensors")))
            adapter = adapter.to(dtype)
        model = cls(
            encoder,
            projector.to(dtype),
            lm,
            tok,
            cfg.get("audio_token", DEFAULT_AUDIO_TOKEN),
            cfg.get("features"),
            adapter=adapter,
        )
        model.to(device)
        if frozen:
            model.requires_grad_(False)
            model.eval()
        return model

    @classmethod
    def compose(
        cls,
        encoder: str | os.PathLike | nn.Module,
        lm: str | os.PathLike | nn.Module,
        *,
        tokenizer=None,
        stack: int = 2,
        projector_hidden: int | None = None,
        audio_token: str = DEFAULT_AUDIO_TOKEN,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        lm_kwargs: dict | None = None,
        seed: int | None = None,
        adapter: dict | None = None,
    ) -> SpeechLLM:
        """Build a new student from a Whisper encoder and a causal LM (the projector starts random).

        ``encoder``: a Whisper directory (full model or encoder-only) or module. ``lm``: a causal-LM
        directory (its tokenizer is used unless ``tokenizer`` is given; ``lm_kwargs`` go to both
        ``from_pretrained`` calls, e.g. ``{"gguf_file": "model.gguf"}``) or a module plus ``tokenizer``.
        ``adapter``: keyword arguments of a :class:`~xopd.models.adapter.CTCAdapter` (``d_model``,
        ``layers``, ``stack``, ``compress``, ...) to put a CTC adapter between encoder and projector; the
        projector then reads the adapter's states without stacking them again (``stack`` is ignored).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(encoder, nn.Module):
            enc = AudioEncoder.from_module(encoder)
        else:
            enc = AudioEncoder.from_pretrained(encoder, dtype=dtype)
        if isinstance(lm, nn.Module):
            if tokenizer is None:
                raise ModelError("SpeechLLM.compose: pass tokenizer= when lm is a module")
            lm_model = lm
        else:
            lm_path = Path(lm)
            if not lm_path.is_dir():
                raise ModelError(f"{lm_path}: LM directory not found")
            kw = dict(lm_kwargs or {})
            try:
                if tokenizer is None:
                    tokenizer = AutoTokenizer.from_pretrained(
                        lm_path, trust_remote_code=trust_remote_code, **kw
                    )
                lm_model = AutoModelForCausalLM.from_pretrained(
                    lm_path, dtype=dtype, trust_remote_code=trust_remote_code, **kw
                )
            except (OSError, ValueError) as e:
                raise ModelError(f"{lm_path}: cannot load as a causal LM: {str(e).splitlines()[0]}") from e
        if seed is not None:
            torch.manual_seed(seed)
        d_lm = lm_model.get_input_embeddings().weight.shape[1]
        ensure_audio_token(tokenizer, audio_token)  # the CTC head must cover the final vocabulary
        ctc = None
        if adapter is not None:
            ctc = CTCAdapter(enc.d_model, len(tokenizer), **adapter).to(dtype)
        d_front, stack = (ctc.d_model, 1) if ctc is not None else (enc.d_model, stack)
        projector = FrameStackProjector(d_front, d_lm, stack=stack, hidden=projector_hidden)
        return cls(enc.to(dtype), projector.to(dtype), lm_model, tokenizer, audio_token, adapter=ctc)
