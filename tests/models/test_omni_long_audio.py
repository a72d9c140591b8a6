"""Long audio reaches the Omni audio towers whole (issue 28): the Whisper feature extractor's default
30 s truncation is off, so a 45 s clip gives 1.5x the audio tokens of a 30 s one, and its last 15 s
change the encoding. Clips longer than ``max_audio_seconds`` are refused by the manifest reader, by row."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from xopd.data.manifest import read_manifest
from xopd.errors import DataError
from xopd.lab.tiny_recipes import RECIPE_BUILDERS
from xopd.models import load_student

SR = 16000


@pytest.mark.parametrize("recipe", ["qwen2.5-omni-7b", "qwen3-omni-30b-a3b"])
def test_a_45_s_clip_is_encoded_whole(recipe, tmp_path):
    student = load_student(RECIPE_BUILDERS[recipe](tmp_path)[0])
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(45 * SR)).astype(np.float32)
    other = wav.copy()
    other[35 * SR :] = 0.1 * rng.standard_normal(10 * SR)  # differs only after 35 s
    with torch.no_grad():
        a30, a45, b45 = student.encode_audio([wav[: 30 * SR], wav, other])
    assert abs(a45.shape[0] / a30.shape[0] - 1.5) < 0.02, (a30.shape, a45.shape)
    assert not torch.allclose(a45[-5:], b45[-5:])  # the tail reached the tower


def test_a_clip_over_max_audio_seconds_names_the_manifest_row(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros(61 * SR, dtype=np.float32), SR)
    sf.write(tmp_path / "ok.wav", np.zeros(45 * SR, dtype=np.float32), SR)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "row-1", "audio": "ok.wav", "text": "hi"}) + "\n"
                        + json.dumps({"id": "row-7", "audio": "long.wav", "text": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"m\.jsonl:2 \(id 'row-7'\): field 'audio'.*61\.00 s > 60 s") as e:
        read_manifest(str(manifest), strict=True, max_audio_seconds=60.0)
    assert "max_audio_seconds" in str(e.value)
    rows, skips = read_manifest(str(manifest), max_audio_seconds=60.0)  # not strict: skipped and counted
    assert [r.id for r in rows] == ["row-1"] and skips.total == 1


@pytest.mark.parametrize("build", ["qwen2.5-omni-7b", "qwen3-omni-30b-a3b"])
def test_omni_rollout_with_a_static_cache_equals_the_dynamic_cache(build, tmp_path):
    """The Omni thinkers decode over a preallocated cache with 4-D masks (positions passed as one row
    per sequence, which their M-RoPE text models expand to its 3 sections) exactly as over the
    dynamic cache: same ids, log-probs to float rounding."""
    from rollout_checks import static_and_dynamic_rollouts  # tests/ is on sys.path (rootdir conftest)
    from xopd.generation.kv_cache import make_static_cache

    student, static, dynamic = static_and_dynamic_rollouts(build, tmp_path)
    assert make_static_cache(student, 2, 16) is not None
    assert torch.equal(static.ids, dynamic.ids) and torch.equal(static.mask, dynamic.mask)
    torch.testing.assert_close(static.logprobs, dynamic.logprobs, atol=1e-5, rtol=0)
