"""Typed configs of the data commands: ``xopd data check`` and ``xopd synth``."""

from __future__ import annotations

from dataclasses import dataclass

from xopd.config import field
from xopd.errors import ConfigError


@dataclass
class DataCheckConfig:
    manifest: str = field(help="JSONL manifest (audio paths relative to its folder)")
    strict: bool = field(False, help="fail on the first bad row, naming file:line")
    max_audio_seconds: float = field(30.0, help="longer audio counts as bad")
    max_text_chars: int = field(4000, help="longest transcript")
    tokenizer: str | None = field(None, help="model/tokenizer directory: check every transcript tokenizes")
    json: bool = field(False, help="print the full report as JSON")


@dataclass
class SynthConfig:
    output: str = field(help="output folder: manifest.jsonl, audio/, synth_report.json")
    input: str | None = field(None, help="prompts JSONL")
    hf_dataset: str | None = field(None, help="a datasets directory or a hub dataset name")
    column: str = field("text", help="field/column holding the prompt text")
    split: str = field("train", help="dataset split for hf_dataset")
    tts: str = field("espeak", choices=("espeak", "piper"), help="TTS engine")
    piper_model: str | None = field(None, help="piper voice .onnx")
    voices: str | None = field(None, help="comma list of espeak-ng voices[+variant]")
    rate: str = field("150:190", help="speaking rate range in words/min, LO:HI")
    pitch: str = field("35:65", help="pitch range 0-99, LO:HI")
    noise_snr: str = field("none", help="comma list of white-noise SNRs in dB, or none")
    seed: int = field(0, help="seed for the per-row voice/noise draws")
    workers: int = field(1, help="TTS processes")
    asr_filter: str | None = field(None, help="Whisper-family model dir for the back-check")
    max_wer: float = field(0.05, help="drop pairs whose back-transcription WER exceeds this")
    max_seconds: float = field(30.0, help="drop utterances longer than this")
    limit: int | None = field(None, help="use only the first N prompts")
    json: bool = field(False, help="also print the report as JSON")
    no_progress: bool = field(False, help="no progress bars")

    def validate(self) -> None:
        if bool(self.input) == bool(self.hf_dataset):
            raise ConfigError("synth: give exactly one of --input and --hf-dataset")
        if self.max_wer < 0:
            raise ConfigError(f"--max-wer must be >= 0, got {self.max_wer}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
