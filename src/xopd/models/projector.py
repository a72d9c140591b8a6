"""Frame-stacking MLP adapter from audio-encoder states to LLM input embeddings.

Why stacking: a Whisper encoder emits 50 states per second; an LLM prompt of 50 tokens per second
of audio is long and slow to decode over. Concatenating ``k`` consecutive states (Ultravox, SLAM-LLM)
cuts the rate by ``k`` without discarding information, and a two-layer MLP maps the result into the
LLM's embedding space.
"""

from __future__ import annotations

import torch
from torch import nn


class FrameStackProjector(nn.Module):
    """``[B, T, d_enc]`` -> ``[B, ceil(T / stack), d_lm]``: stack ``stack`` frames, Linear, GELU, Linear."""

    def __init__(self, d_enc: int, d_lm: int, stack: int = 2, hidden: int | None = None) -> None:
        super().__init__()
        if stack < 1:
            raise ValueError(f"projector stack must be >= 1, got {stack}")
        self.d_enc, self.d_lm, self.stack = int(d_enc), int(d_lm), int(stack)
        self.hidden = int(hidden) if hidden else int(d_lm)
        self.fc1 = nn.Linear(self.d_enc * self.stack, self.hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(self.hidden, self.d_lm)

    def config_dict(self) -> dict:
        """What :meth:`from_config` needs to rebuild this module (saved in ``xopd_config.json``)."""
        return {"d_enc": self.d_enc, "d_lm": self.d_lm, "stack": self.stack, "hidden": self.hidden}

    @classmethod
    def from_config(cls, cfg: dict) -> FrameStackProjector:
        return cls(cfg["d_enc"], cfg["d_lm"], stack=cfg.get("stack", 2), hidden=cfg.get("hidden"))

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder positions -> projected frames: ``ceil(len / stack)``."""
        return (lengths.long() + self.stack - 1) // self.stack

    def forward(
        self, hidden: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [B, T, d_enc]`` (+ ``lengths [B]``) -> ``(out [B, ceil(T/k), d_lm], out_lengths [B])``.

        States past an item's length are zeroed before stacking, so the last (partial) group of a
        short item in a batch equals the group it would get alone (zero-padded to a multiple of k).
        """
        bsz, t, d = hidden.shape
        if lengths is None:
            lengths = torch.full((bsz,), t, dtype=torch.long, device=hidden.device)
        lengths = lengths.to(hidden.device).long()
        if bool((lengths < t).any()):
            ok = torch.arange(t, device=hidden.device)[None, :] < lengths[:, None]
            hidden = hidden * ok[..., None].to(hidden.dtype)
        pad = (-t) % self.stack
        if pad:
            hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
        stacked = hidden.reshape(bsz, (t + pad) // self.stack, d * self.stack)
        return self.fc2(self.act(self.fc1(stacked))), self.out_lengths(lengths)
