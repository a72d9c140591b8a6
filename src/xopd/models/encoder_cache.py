"""A frozen audio tower's outputs, memoised by clip content (process-wide and in a safetensors file).

With a frozen tower (the paper's setting) every epoch, stage and evaluation re-encodes the same clips;
the tower is the costliest part of a small student's prompt, so each clip is encoded once per process
(and, through the file, once per pipeline). Outputs are cached *before* the projector, so a
trainable projector still gets gradients; a trainable tower bypasses the cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xopd.errors import ModelError

_SHARED_ENCODER_CACHES: dict[str, dict] = {}


def shared_cache(encoder: nn.Module, dtype: torch.dtype) -> dict:
    """The process-wide cache for this exact set of encoder weights (fingerprinted by content) and
    storage dtype: every stage of one process (stage 1, X-OPD, eval in ``xopd demo``) encodes a
    clip once."""
    h = hashlib.sha1(str(dtype).encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().flatten()[:1024].float().cpu().numpy().tobytes())  # first 4 KiB, as before
        h.update(str(float(t.float().sum())).encode())
    return _SHARED_ENCODER_CACHES.setdefault(h.hexdigest(), {})


def clear_shared_encoder_caches() -> None:
    """Free every process-wide encoder cache (e.g. between unrelated runs in one process)."""
    _SHARED_ENCODER_CACHES.clear()


class EncoderCacheMixin:
    """The cache of :class:`~xopd.models.speech_llm.SpeechLLM`: needs ``self.encoder`` (the tower) and
    ``self._encode(wavs) -> (hidden [B, T, D], lengths [B])``."""

    _encoder_cache: dict | None = None

    def enable_encoder_cache(
        self, max_items: int = 50_000, shared: bool = True, dtype: str | torch.dtype | None = None
    ) -> EncoderCacheMixin:
        """Memoise encoder outputs by waveform content while the encoder is frozen.

        With a frozen audio tower (the paper's setting) every epoch re-encodes the same clips; the
        encoder is the costliest part of a small student's prompt, so caching its outputs makes
        repeated rollouts over a fixed dataset far cheaper. Outputs are cached *before* the
        projector, so a trainable projector still gets gradients. Ignored while the encoder trains.

        ``shared``: use the process-wide cache of this encoder's exact weights, so a later model with
        the same frozen tower (the next stage of a pipeline, an eval) reuses the work. ``dtype``:
        storage dtype (default: the encoder's); ``float16`` halves the memory of a large cache at the
        cost of one rounding (relative error ~5e-4) applied identically every time a clip is used.
        """
        dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        dt = dt or next(self.encoder.parameters()).dtype
        self._encoder_cache = shared_cache(self.encoder, dt) if shared else {}
        self._encoder_cache_max = max_items
        self._encoder_cache_dtype = dt
        return self

    def save_encoder_cache(self, path: str | os.PathLike) -> int:
        """Write the encoder cache to a safetensors file (atomically); returns how many clips it holds.

        A later process that loads it (:meth:`load_encoder_cache`) reuses every encoded clip bit for bit,
        so a re-run of a pipeline stage gives exactly what the first run gave, without re-encoding."""
        from safetensors.torch import save_file

        from xopd.utils.io import atomic_path

        if self._encoder_cache is None:
            raise ModelError("save_encoder_cache: the encoder cache is not enabled (enable_encoder_cache first)")
        if not self._encoder_cache:  # the cache is bypassed while the tower has trainable weights
            raise ModelError("save_encoder_cache: nothing is cached; freeze the encoder (freeze(encoder=True)) "
                             "before encoding, a trainable tower's outputs are never cached")
        tensors = {k: v.contiguous() for k, v in self._encoder_cache.items()}
        with atomic_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata={"dtype": str(self._encoder_cache_dtype)})
        return len(tensors)

    def load_encoder_cache(self, path: str | os.PathLike) -> int:
        """Add the clips of a file written by :meth:`save_encoder_cache` (same encoder weights and storage
        dtype) to the enabled cache; returns how many it added."""
        from safetensors import safe_open

        if self._encoder_cache is None:
            raise ModelError("load_encoder_cache: the encoder cache is not enabled (enable_encoder_cache first)")
        added = 0
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("dtype") != str(self._encoder_cache_dtype):
                raise ModelError(f"{path}: encoder cache stored as {(f.metadata() or {}).get('dtype')}, "
                                 f"this model caches {self._encoder_cache_dtype}")
            for key in f.keys():
                if key not in self._encoder_cache:
                    self._encoder_cache[key] = f.get_tensor(key)
                    added += 1
        return added

    def _encode_cached(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        if any(p.requires_grad for p in self.encoder.parameters()):
            return self._encode(wavs)
        cache = self._encoder_cache
        keys = [hashlib.sha1(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest() for w in wavs]
        missing = [i for i, k in enumerate(keys) if k not in cache]
        # One clip at a time: a cached value must not depend on which batch first saw the clip,
        # or a resumed run (different cache history) would differ in the last bits.
        for i in missing:
            if keys[i] in cache:  # duplicate clip within this batch
                continue
            with torch.no_grad():
                hid, hl = self._encode([wavs[i]])
            if len(cache) >= self._encoder_cache_max:
                cache.pop(next(iter(cache)))
            cache[keys[i]] = hid[0, : int(hl[0])].to(self._encoder_cache_dtype).clone()
        items = [cache[k] for k in keys]
        width = max(t.shape[0] for t in items)
        out_dtype = next(self.encoder.parameters()).dtype
        hidden = items[0].new_zeros(len(items), width, items[0].shape[-1], dtype=out_dtype)
        for i, t in enumerate(items):
            hidden[i, : t.shape[0]] = t
        lengths = torch.tensor([t.shape[0] for t in items], device=hidden.device)
        return hidden, lengths
