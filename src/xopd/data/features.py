"""Whisper-compatible log-mel features for variable-length batches, without 30 s padding.

Whisper's feature extractor pads every clip to 30 s; on CPU that makes a 3 s question many times more
expensive to encode (DESIGN section 7). This extractor computes the same numbers as
``WhisperFeatureExtractor`` on each clip's own frames and pads only to the longest clip in the
batch. torchaudio does not load on these machines, so the STFT is ``torch.stft`` and the filter
bank is transformers' ``mel_filter_bank`` (the one Whisper's extractor uses).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from xopd.data.audio import SAMPLE_RATE
from xopd.errors import DataError

__all__ = ["LogMelExtractor", "frames_after_conv", "num_frames"]


def num_frames(n_samples: int, hop_length: int = 160) -> int:
    """Feature frames for ``n_samples`` of audio: STFT gives n//hop + 1, Whisper drops the last."""
    return int(n_samples) // hop_length


def frames_after_conv(n_frames: int) -> int:
    """Encoder positions after a Whisper conv stem for ``n_frames`` mel frames.

    conv1 (k=3, s=1, p=1) keeps the length; conv2 (k=3, s=2, p=1) maps n -> (n - 1) // 2 + 1,
    i.e. ceil(n / 2); same as ``WhisperEncoder._get_feat_extract_output_lengths``. 0 -> 0.
    """
    n = int(n_frames)
    return (n - 1) // 2 + 1 if n > 0 else 0


class LogMelExtractor:
    """Batch log-mel features ``[B, n_mels, T_max]`` plus per-item frame counts ``[B]``.

    Each item is normalised exactly like Whisper (log10, clamp at max-8 dB, (x+4)/4) but with
    the max taken over that item's own frames, so an item's features do not depend on what else
    is in the batch or on padding. Frames past an item's length are ``padding_value``.
    """

    def __init__(
        self,
        n_mels: int = 80,
        sampling_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        hop_length: int = 160,
        pad_to_multiple_of: int | None = None,
        padding_value: float = 0.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if n_mels <= 0 or n_fft <= 0 or hop_length <= 0:
            raise DataError(
                f"LogMelExtractor: n_mels={n_mels}, n_fft={n_fft}, hop={hop_length} must be positive"
            )
        if pad_to_multiple_of is not None and pad_to_multiple_of <= 0:
            raise DataError(f"LogMelExtractor: pad_to_multiple_of={pad_to_multiple_of} must be positive")
        self.n_mels = n_mels
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_value = float(padding_value)
        self.device = torch.device(device)
        filters = mel_filter_bank(
            num_frequency_bins=1 + n_fft // 2,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=sampling_rate / 2.0,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        # [n_freq, n_mels] -> [n_mels, n_freq] so that mel = filters @ power.
        self.mel_filters = torch.from_numpy(np.ascontiguousarray(filters.T)).to(self.device, torch.float32)
        self.window = torch.hann_window(n_fft, device=self.device)

    def num_frames(self, n_samples: int) -> int:
        """Valid frames for a clip of ``n_samples`` (the length reported in ``lengths``)."""
        return num_frames(n_samples, self.hop_length)

    def __call__(self, wavs: list[np.ndarray] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Features for a batch of 1-D float waveforms at ``sampling_rate``.

        ``wavs``: list of ``[n_i]`` arrays, a single ``[n]`` array, or a ``[B, n]`` array (all
        rows taken as full length). Returns ``(features [B, n_mels, T], lengths [B] int64)``
        where ``T = max(lengths)`` rounded up to ``pad_to_multiple_of``.
        """
        items = self._as_list(wavs)
        half = self.n_fft // 2
        lengths = [self.num_frames(w.size) for w in items]
        for i, (w, n) in enumerate(zip(items, lengths)):
            if n == 0:
                raise DataError(
                    f"LogMelExtractor: clip {i} has {w.size} samples, shorter than one hop "
                    f"({self.hop_length}); drop it or pad it"
                )
        # Reflect-pad each clip by itself (what center=True does), then zero-pad to a common
        # length: the valid frames then see exactly the samples a lone-clip STFT would see.
        padded = [np.pad(w, (half, half), mode="reflect") for w in items]
        max_len = max(p.size for p in padded)
        batch = np.zeros((len(items), max_len), dtype=np.float32)
        for i, p in enumerate(padded):
            batch[i, : p.size] = p
        x = torch.from_numpy(batch).to(self.device)
        stft = torch.stft(
            x, self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True
        )  # [B, n_freq, frames]
        t_max = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            t_max = -(-t_max // m) * m
        power = stft[..., : min(t_max, stft.shape[-1])].abs() ** 2
        mel = self.mel_filters @ power  # [B, n_mels, frames]
        log_spec = torch.clamp(mel, min=1e-10).log10()
        lens = torch.tensor(lengths, dtype=torch.long, device=self.device)
        valid = torch.arange(log_spec.shape[-1], device=self.device)[None, :] < lens[:, None]  # [B, T]
        masked = log_spec.masked_fill(~valid[:, None, :], float("-inf"))
        item_max = masked.amax(dim=(1, 2), keepdim=True)  # [B, 1, 1]
        log_spec = (torch.maximum(log_spec, item_max - 8.0) + 4.0) / 4.0
        log_spec = log_spec.masked_fill(~valid[:, None, :], self.padding_value)
        if log_spec.shape[-1] < t_max:
            log_spec = torch.nn.functional.pad(
                log_spec, (0, t_max - log_spec.shape[-1]), value=self.padding_value
            )
        return log_spec.contiguous(), lens

    @staticmethod
    def _as_list(wavs: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(wavs, np.ndarray | torch.Tensor):
            arr = wavs.detach().cpu().numpy() if isinstance(wavs, torch.Tensor) else wavs
            if arr.ndim == 1:
                wavs = [arr]
            elif arr.ndim == 2:
                wavs = list(arr)
            else:
                raise DataError(f"LogMelExtractor: expected [n] or [B, n] audio, got shape {arr.shape}")
        items = []
        for i, w in enumerate(wavs):
            a = np.asarray(w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else w, dtype=np.float32)
            if a.ndim != 1:
                raise DataError(f"LogMelExtractor: clip {i} has shape {a.shape}; expected mono [samples]")
            items.append(a)
        if not items:
            raise DataError("LogMelExtractor: empty batch")
        return items
