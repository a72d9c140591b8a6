"""CTC adapter: the part of a speech LLM's front end that *hears*.

Why a CTC adapter: a projector trained only through the LLM's next-token loss learns to hear slowly,
because the LLM first has to learn *where* in a stream of 50 Hz frames each word is; the demo's
first student misheard many of the words of its spoken questions that way. A small transformer over
the frozen encoder's states, trained with CTC on transcripts in the LM's own tokenizer, learns that
alignment directly, with few token errors on unseen questions after a short CPU training
(docs/DEMO_RESULTS.md; the figures: docs/BENCHMARKS.md, 'Demo configuration choices').

Pipeline inside :class:`~xopd.models.speech_llm.SpeechLLM` when an adapter is present::

    encoder states [B, T, d_enc] (50 Hz)
      -> stack ``stack`` frames, Linear -> ``layers`` bidirectional transformer layers   states [B, T/k, d]
      -> CTC head over the LM's vocabulary + blank                                         logits [B, T/k, V+1]
      -> ``compress == "ctc"``: frames grouped by the greedy CTC label; blank frames dropped,
         each run of one label averaged (CTC compression, Gaido et al. 2021)               [B, N_tokens, d]
      -> projector -> LM

With compression the LLM gets one position per recognised token, as a text prompt has: the spoken
question takes as many LM positions as its transcript (4-5x fewer than 12.5 Hz frames), and its
structure is the text's. The states stay continuous, so what the LM reads is still speech (voice,
noise and speaking rate are in them; ``duration_embedding`` adds each segment's length, which
averaging would otherwise lose).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

COMPRESS = ("none", "ctc")
LM_INPUTS = ("states", "posterior")


class _SinusoidalPositions(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d

    def forward(self, t: int, device, dtype) -> torch.Tensor:
        pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, self.d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / self.d))
        pe = torch.zeros(t, self.d, device=device)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: self.d // 2])
        return pe.to(dtype)


class CTCAdapter(nn.Module):
    """Frame stacking + a small bidirectional transformer + a CTC head (blank = last index).

    ``vocab_size``: the LM tokenizer's size; the head has ``vocab_size + 1`` outputs.
    """

    def __init__(
        self,
        d_in: int,
        vocab_size: int,
        d_model: int = 192,
        layers: int = 2,
        heads: int = 4,
        ffn: int = 768,
        stack: int = 4,
        dropout: float = 0.1,
        compress: str = "ctc",
        max_duration: int = 16,
        lm_input: str = "states",
        posterior_topk: int = 8,
        acoustic_prefix: int = 0,
    ) -> None:
        super().__init__()
        if compress not in COMPRESS:
            raise ValueError(f"adapter compress must be one of {COMPRESS}, got {compress!r}")
        if lm_input not in LM_INPUTS:
            raise ValueError(f"adapter lm_input must be one of {LM_INPUTS}, got {lm_input!r}")
        if lm_input == "posterior" and compress != "ctc":
            raise ValueError("adapter lm_input 'posterior' needs compress 'ctc' (one position per token)")
        if acoustic_prefix < 0:
            raise ValueError(f"adapter acoustic_prefix must be >= 0, got {acoustic_prefix}")
        if stack < 1 or layers < 0 or d_model % heads:
            raise ValueError(f"adapter: stack >= 1, layers >= 0 and d_model % heads == 0 needed "
                             f"(stack={stack}, layers={layers}, d_model={d_model}, heads={heads})")
        self.d_in, self.vocab_size, self.d_model = int(d_in), int(vocab_size), int(d_model)
        self.n_layers, self.heads, self.ffn, self.stack = int(layers), int(heads), int(ffn), int(stack)
        self.dropout, self.compress, self.max_duration = float(dropout), compress, int(max_duration)
        self.lm_input, self.posterior_topk, self.acoustic_prefix = lm_input, int(posterior_topk), int(acoustic_prefix)
        self.inp = nn.Linear(self.d_in * self.stack, self.d_model)
        self.pos = _SinusoidalPositions(self.d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(self.d_model, self.heads, self.ffn, self.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(self.n_layers)
        )
        self.norm = nn.LayerNorm(self.d_model)
        self.head = nn.Linear(self.d_model, self.vocab_size + 1)
        # segment length in frames (1..max_duration): speaking rate survives the averaging
        self.duration = nn.Embedding(self.max_duration + 1, self.d_model) if compress == "ctc" else None
        if self.duration is not None:
            nn.init.zeros_(self.duration.weight)

    @property
    def blank(self) -> int:
        return self.vocab_size

    def config_dict(self) -> dict:
        return {"type": "ctc", "d_in": self.d_in, "vocab_size": self.vocab_size, "d_model": self.d_model,
                "layers": self.n_layers, "heads": self.heads, "ffn": self.ffn, "stack": self.stack,
                "dropout": self.dropout, "compress": self.compress, "max_duration": self.max_duration,
                "lm_input": self.lm_input, "posterior_topk": self.posterior_topk,
                "acoustic_prefix": self.acoustic_prefix}

    @classmethod
    def from_config(cls, cfg: dict) -> CTCAdapter:
        kw = {k: v for k, v in cfg.items() if k != "type"}
        return cls(**kw)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (lengths.long() + self.stack - 1) // self.stack

    def frames(self, hidden: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``hidden [B, T, d_in]`` -> ``(states [B, T', d], logits [B, T', V+1], lengths [B])`` at T' = ceil(T/k)."""
        bsz, t, d = hidden.shape
        lengths = lengths.to(hidden.device).long()
        ok = torch.arange(t, device=hidden.device)[None, :] < lengths[:, None]
        hidden = hidden * ok[..., None].to(hidden.dtype)  # a batch's padding never leaks into a clip's last group
        pad = (-t) % self.stack
        if pad:
            hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
        x = hidden.reshape(bsz, (t + pad) // self.stack, d * self.stack)
        out_len = self.out_lengths(lengths)
        x = self.inp(x) + self.pos(x.shape[1], x.device, x.dtype)
        key_pad = torch.arange(x.shape[1], device=x.device)[None, :] >= out_len[:, None]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=key_pad if bool(key_pad.any()) else None)
        x = self.norm(x)
        return x, self.head(x), out_len

    def ctc_loss(self, logits: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """Mean CTC loss (per target token, as ``reduction='mean'``) of ``targets`` (token-id lists)."""
        logp = logits.float().log_softmax(-1).transpose(0, 1)  # [T', B, V+1]
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long, device=logits.device)
        tlen = torch.tensor([len(t) for t in targets], dtype=torch.long, device=logits.device)
        return nn.functional.ctc_loss(logp, flat, lengths, tlen, blank=self.blank, reduction="mean",
                                      zero_infinity=True)

    def greedy(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Greedy CTC decoding: argmax per frame, repeats merged, blanks dropped -> token ids per clip."""
        best = logits.argmax(-1).tolist()
        out = []
        for row, n in zip(best, lengths.tolist(), strict=True):
            ids, prev = [], None
            for tok in row[:n]:
                if tok != prev and tok != self.blank:
                    ids.append(tok)
                prev = tok
            out.append(ids)
        return out

    def segments(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[list[tuple[int, int, int]]]:
        """Per clip, ``(start, end, token)`` for every run of frames with the same non-blank argmax."""
        best = logits.argmax(-1).tolist()
        out = []
        for row, n in zip(best, lengths.tolist(), strict=True):
            segs: list[tuple[int, int, int]] = []
            start, prev = 0, None
            for i, tok in enumerate(row[:n] + [None]):
                if tok != prev:
                    if prev is not None and prev != self.blank:
                        segs.append((start, i, prev))
                    start, prev = i, tok
            out.append(segs)
        return out

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """Encoder states -> what the LM side reads (see :class:`AdapterOutput`).

        ``compress == "none"``: the 12.5 Hz frames. ``"ctc"``: one averaged state (+ its duration
        embedding) per recognised token, with that token's CTC posterior (top-k non-blank tokens,
        renormalised, averaged over the run); a clip in which nothing is recognised keeps one state
        (the mean of its frames) with the posterior of its frames, so no prompt is ever empty.
        """
        states, logits, out_len = self.frames(hidden, lengths)
        prefix = self.pool(states, out_len, self.acoustic_prefix) if self.acoustic_prefix else None
        if self.compress == "none":
            return AdapterOutput(states, out_len, prefix=prefix)
        probs = logits.float().softmax(-1)[..., : self.vocab_size]  # non-blank part
        rows, post = [], []
        frame = torch.arange(states.shape[1], device=states.device)
        for b, segs in enumerate(self.segments(logits, out_len)):
            n = int(out_len[b])
            if not segs:
                segs = [(0, max(n, 1), -1)]
            starts = torch.tensor([s for s, _, _ in segs], device=states.device)
            ends = torch.tensor([e for _, e, _ in segs], device=states.device)
            member = ((frame[None, :] >= starts[:, None]) & (frame[None, :] < ends[:, None])).to(states.dtype)
            member = member / member.sum(-1, keepdim=True)
            dur = (ends - starts).clamp(max=self.max_duration)
            rows.append(member @ states[b] + self.duration(dur))
            post.append(member.float() @ probs[b])  # [N_b, V]
        width = max(r.shape[0] for r in rows)
        out = states.new_zeros(len(rows), width, states.shape[-1])
        k = min(self.posterior_topk, self.vocab_size)
        ids = torch.zeros(len(rows), width, k, dtype=torch.long, device=states.device)
        weights = torch.zeros(len(rows), width, k, device=states.device)
        for b, (r, p) in enumerate(zip(rows, post, strict=True)):
            out[b, : r.shape[0]] = r
            top = p.topk(k, dim=-1)
            ids[b, : r.shape[0]] = top.indices
            weights[b, : r.shape[0]] = top.values / top.values.sum(-1, keepdim=True).clamp(min=1e-12)
        lens = torch.tensor([r.shape[0] for r in rows], device=states.device)
        return AdapterOutput(out, lens, ids, weights.to(states.dtype), prefix)

    @staticmethod
    def pool(states: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
        """Mean of each of ``k`` equal chunks of every clip's frames: ``[B, T, d]`` -> ``[B, k, d]``.

        The acoustic summary an LM reads beside posterior embeddings (which carry only the words):
        voice, pitch, noise, and through the frames' positions, how long the clip is."""
        t = torch.arange(states.shape[1], device=states.device, dtype=torch.float32)
        n = lengths.to(states.device).float().clamp(min=1)[:, None]  # [B, 1]
        chunk = (t[None, :] * k / n).floor()  # [B, T]: which chunk each frame is in (>= k past the end)
        member = (chunk[:, None, :] == torch.arange(k, device=states.device)[None, :, None]).to(states.dtype)
        member = member / member.sum(-1, keepdim=True).clamp(min=1)
        return member @ states


@dataclass
class AdapterOutput:
    """``states [B, N, d]`` and ``lengths [B]``; with CTC compression also each position's top-k
    recognised tokens ``token_ids [B, N, k]`` and their renormalised posteriors ``token_weights``
    (for ``lm_input`` 'posterior': the LM reads ``sum_k w_k * E[id_k]``, LegoSLM-style), and with
    ``acoustic_prefix`` the pooled frame states that go in front of them through the projector."""

    states: torch.Tensor
    lengths: torch.Tensor
    token_ids: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    prefix: torch.Tensor | None = None  # [B, acoustic_prefix, d]: pooled frame states, or None
