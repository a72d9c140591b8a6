"""Typed configs of ``xopd models prepare`` and ``xopd models compose``."""

from __future__ import annotations

from dataclasses import dataclass

from xopd.config import field
from xopd.errors import ConfigError


@dataclass
class PrepareConfig:
    cache: str | None = field(None, help="output folder (default: $XOPD_MODEL_CACHE or ~/.cache/xopd/models)")
    what: str = field("all", help="what to prepare")
    stack: int = field(4, help="student projector frame stacking")

    def validate(self) -> None:
        if self.stack < 1:
            raise ConfigError(f"models prepare: --stack must be >= 1, got {self.stack}")


@dataclass
class ComposeConfig:
    encoder: str = field(help="Whisper directory (full model or encoder only)")
    lm: str = field(help="causal-LM directory")
    out: str = field(help="where to write the student")
    adapter: str = field("none", choices=("none", "ctc"), help="ctc: a CTC adapter between encoder and projector")
    adapter_dim: int = field(192, help="adapter width")
    adapter_layers: int = field(2, help="adapter transformer layers")
    compress: str = field("ctc", choices=("ctc", "none"), help="one LM position per recognised token, or every frame")
    lm_input: str = field("states", choices=("posterior", "states"), help="what the LM reads from the adapter")
    acoustic_prefix: int = field(0, help="pooled acoustic positions in front of the tokens")
    stack: int = field(4, help="frames stacked")
    projector_hidden: int | None = field(None, help="projector MLP width (default: LM width)")
    seed: int = field(0, help="seed of the new weights")

    def validate(self) -> None:
        if self.adapter != "ctc" and (self.lm_input != "states" or self.acoustic_prefix):
            raise ConfigError("models compose: --lm_input / --acoustic_prefix need --adapter ctc")
        if self.adapter == "ctc" and self.lm_input == "posterior" and self.compress != "ctc":
            raise ConfigError("models compose: --lm_input posterior needs --compress ctc (one position per token)")
        if self.acoustic_prefix < 0:
            raise ConfigError(f"models compose: --acoustic_prefix must be >= 0, got {self.acoustic_prefix}")

    def adapter_kwargs(self) -> dict | None:
        if self.adapter != "ctc":
            return None
        return {"d_model": self.adapter_dim, "layers": self.adapter_layers, "stack": self.stack,
                "compress": self.compress, "lm_input": self.lm_input, "acoustic_prefix": self.acoustic_prefix}
