"""A Whisper encoder that takes log-mel features at their real length.

Stock ``WhisperEncoder.forward`` refuses any input that is not exactly ``2 * max_source_positions``
mel frames (30 s for real Whisper). Padding a 3 s question to 30 s makes encoding many times slower on
CPU and puts 27 s of silence in front of the LLM, so this wrapper runs the *same modules* (conv stem,
positional table, layers, final norm) itself on the true length, with a key-padding mask built from
per-item lengths so padded frames of a batch never influence real ones. On a full-length input the
result equals the stock forward (tested to 1e-5), so pretrained Whisper weights keep their meaning.
"""

from __future__ import annotations

import torch
from torch import nn

from xopd.errors import ModelError


def conv_out_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Mel frames -> encoder positions: conv2 has stride 2, so n -> ceil(n / 2) (0 -> 0)."""
    lengths = lengths.long()
    return torch.where(lengths > 0, (lengths - 1) // 2 + 1, torch.zeros_like(lengths))


class AudioEncoder(nn.Module):
    """Wraps a ``transformers.WhisperEncoder`` of any size; forward on unpadded log-mel features."""

    def __init__(self, whisper_encoder: nn.Module) -> None:
        super().__init__()
        self.whisper = whisper_encoder

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config) -> AudioEncoder:
        """A randomly initialised encoder from a ``WhisperConfig`` (or a dict of its fields)."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if isinstance(config, dict):
            config = WhisperConfig(**config)
        return cls(WhisperEncoder(config))

    @classmethod
    def from_module(cls, module: nn.Module) -> AudioEncoder:
        """Accept an AudioEncoder, a WhisperEncoder, a WhisperModel or WhisperForConditionalGeneration."""
        if isinstance(module, AudioEncoder):
            return module
        inner = getattr(module, "model", module)  # WhisperForConditionalGeneration -> WhisperModel
        if hasattr(inner, "get_encoder") and hasattr(inner, "encoder"):
            inner = inner.encoder
        if not (hasattr(inner, "conv1") and hasattr(inner, "embed_positions") and hasattr(inner, "layers")):
            raise ModelError(
                f"{type(module).__name__} is not a Whisper encoder: pass a WhisperEncoder, a WhisperModel "
                "or a WhisperForConditionalGeneration (or a directory holding one)"
            )
        return cls(inner)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32) -> AudioEncoder:
        """Load an encoder dir written by :meth:`save_pretrained` or any full Whisper checkpoint dir."""
        import json
        from pathlib import Path

        from transformers.models.whisper.modeling_whisper import (
            WhisperEncoder,
            WhisperForConditionalGeneration,
        )

        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ModelError(f"{path}: not a Whisper model directory (no config.json)")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("model_type") != "whisper":
            raise ModelError(f"{path}: model_type is {cfg.get('model_type')!r}, expected 'whisper'")
        try:
            if "WhisperEncoder" in (cfg.get("architectures") or []):
                enc = WhisperEncoder.from_pretrained(path, dtype=dtype)
            else:
                enc = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype).model.encoder
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot load Whisper weights: {str(e).splitlines()[0]}") from e
        return cls(enc)

    def save_pretrained(self, path) -> None:
        """A standard HF directory (config.json + model.safetensors) holding only the encoder."""
        self.whisper.save_pretrained(path)

    # -- properties --------------------------------------------------------------------------------
    @property
    def config(self):
        return self.whisper.config

    @property
    def d_model(self) -> int:
        return int(self.whisper.config.d_model)

    @property
    def num_mel_bins(self) -> int:
        return int(self.whisper.config.num_mel_bins)

    @property
    def max_frames(self) -> int:
        """Longest mel input the positional table covers (3000 = 30 s for real Whisper)."""
        return int(self.whisper.config.max_source_positions) * 2

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``features [B, n_mels, T]`` (+ ``lengths [B]`` mel frames) -> ``(hidden [B, T', D], out_lengths [B])``.

        ``T' = ceil(T / 2)``. Frames past an item's length are zeroed before each conv (so the conv
        stem sees exactly what it would see on the lone clip, whose edges are zero-padded) and are
        masked as attention keys. Hidden states past ``out_lengths`` are meaningless; ignore them.
        """
        from transformers.masking_utils import create_bidirectional_mask

        enc = self.whisper
        if features.dim() != 3 or features.shape[1] != self.num_mel_bins:
            raise ModelError(
                f"audio features have shape {tuple(features.shape)}; this encoder expects "
                f"[batch, {self.num_mel_bins} mel bins, frames]: set the feature extractor's n_mels to match"
            )
        bsz, _, t = features.shape
        if t > self.max_frames:
            raise ModelError(
                f"audio is {t} mel frames ({t / 100:.1f} s) but the encoder covers at most {self.max_frames} "
                f"({self.max_frames / 100:.1f} s): trim the audio or lower the data's max_seconds"
            )
        if lengths is None:
            lengths = torch.full((bsz,), t, dtype=torch.long, device=features.device)
        lengths = lengths.to(features.device).long()
        out_lengths = conv_out_lengths(lengths)
        padded = bool((lengths < t).any())
        x = features.to(dtype=enc.conv1.weight.dtype)
        if padded:
            frame_ok = torch.arange(t, device=x.device)[None, :] < lengths[:, None]  # [B, T]
            x = x * frame_ok[:, None, :].to(x.dtype)
        x = nn.functional.gelu(enc.conv1(x))
        if padded:
            x = x * frame_ok[:, None, :].to(x.dtype)
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)  # [B, T', D]
        t_out = x.shape[1]
        h = x + enc.embed_positions.weight[:t_out]
        h = nn.functional.dropout(h, p=enc.dropout, training=enc.training)
        mask = None
        if padded:
            key_ok = (torch.arange(t_out, device=x.device)[None, :] < out_lengths[:, None]).long()
            mask = create_bidirectional_mask(config=enc.config, inputs_embeds=h, attention_mask=key_ok)
        for layer in enc.layers:
            if enc.training and enc.layerdrop > 0.0 and torch.rand([]) < enc.layerdrop:
                continue
            h = layer(h, mask)
        return enc.layer_norm(h), out_lengths
