"""Log-mel features match WhisperFeatureExtractor on each clip's frames, without 30 s padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from xopd.data.features import LogMelExtractor, frames_after_conv
from xopd.errors import DataError


def _speechish(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(n)
    return x.astype(np.float32)


def _whisper(wav: np.ndarray, n_mels: int = 80) -> np.ndarray:
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    out = fe(wav, sampling_rate=16000, return_tensors="np", padding="longest")
    return out["input_features"][0]


@pytest.mark.parametrize(("n", "n_mels"), [(16000, 80), (24321, 80), (8000, 128), (480, 80)])
def test_single_clip_matches_whisper(n, n_mels):
    wav = _speechish(n, seed=n)
    ref = _whisper(wav, n_mels)
    feats, lengths = LogMelExtractor(n_mels=n_mels)(wav)
    assert feats.shape == (1, n_mels, n // 160) and lengths.tolist() == [n // 160]
    assert ref.shape == (n_mels, n // 160)  # padding="longest" on one clip = unpadded, last frame dropped
    np.testing.assert_allclose(feats[0].numpy(), ref, atol=1e-4)


def test_batch_items_independent_of_batch_and_padding():
    clips = [_speechish(16000, 1), _speechish(5000, 2), _speechish(11111, 3)]
    ext = LogMelExtractor(pad_to_multiple_of=2, padding_value=0.0)
    feats, lengths = ext(clips)
    assert lengths.tolist() == [100, 31, 69]
    assert feats.shape == (3, 80, 100) and feats.dtype == torch.float32
    for i, clip in enumerate(clips):
        n = lengths[i]
        np.testing.assert_allclose(feats[i, :, :n].numpy(), _whisper(clip), atol=1e-4)
        assert torch.all(feats[i, :, n:] == 0.0)
    feats_odd, _ = LogMelExtractor(pad_to_multiple_of=2)([clips[1]])  # 31 frames -> 32
    assert feats_odd.shape[-1] == 32 and torch.all(feats_odd[0, :, 31] == 0)


def test_silence_and_array_input():
    feats, lengths = LogMelExtractor()(np.zeros((2, 1600), np.float32))
    assert lengths.tolist() == [10, 10]
    # all-silence clip: log10(1e-10) = -10 everywhere -> (-10 + 4) / 4
    assert torch.allclose(feats, torch.full_like(feats, -1.5))


def test_too_short_clip_and_bad_shape_raise():
    with pytest.raises(DataError, match="shorter than one hop"):
        LogMelExtractor()([np.zeros(100, np.float32)])
    with pytest.raises(DataError, match="mono"):
        LogMelExtractor()([np.zeros((100, 2), np.float32)])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 99, 100, 101])
def test_frames_after_conv_matches_whisper_encoder(n):
    torch.manual_seed(0)
    cfg = WhisperConfig(
        d_model=8, encoder_layers=1, encoder_attention_heads=2, num_mel_bins=4, max_source_positions=64
    )
    enc = WhisperEncoder(cfg)
    with torch.no_grad():
        out = enc.conv2(enc.conv1(torch.zeros(1, 4, n)))
    assert out.shape[-1] == frames_after_conv(n) == (n + 1) // 2
    assert frames_after_conv(n) == int(enc._get_feat_extract_output_lengths(torch.tensor(n)))
    assert frames_after_conv(0) == 0
