"""Data layer: audio I/O, Whisper-compatible log-mel features and JSONL manifests."""

from xopd.data.audio import SAMPLE_RATE, add_noise, load_audio, save_wav, to_mono_16k
from xopd.data.features import LogMelExtractor, frames_after_conv, num_frames
from xopd.data.manifest import Example, SkipReport, examples_from_hf_dataset, read_manifest, write_manifest

__all__ = [
    "SAMPLE_RATE",
    "Example",
    "LogMelExtractor",
    "SkipReport",
    "add_noise",
    "examples_from_hf_dataset",
    "frames_after_conv",
    "load_audio",
    "num_frames",
    "read_manifest",
    "save_wav",
    "to_mono_16k",
    "write_manifest",
]
