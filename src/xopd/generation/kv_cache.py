"""KV caches for sampling and shared-prompt scoring: a preallocated (static) cache, and a cache repeated
for the n responses of each prompt (docs/DESIGN.md section 2)."""

from __future__ import annotations

from xopd.models.base import PolicyModel


def make_static_cache(model: PolicyModel, batch: int, max_len: int):
    """A preallocated KV cache (``transformers.StaticCache``), or None where the model cannot take one.

    Why: a dynamic cache ``torch.cat``s every layer's keys/values at every decode step (O(L^2) copying,
    a large share of decode time at the benchmark's S size; docs/BENCHMARKS.md); the static one writes in
    place. It also lets us pass ready-made 4-D masks, which skips the per-step mask construction. Only
    for sdpa/eager attention (flash-attention kernels take 2-D masks) and never under autograd.
    """
    lm = model.causal_lm()
    cfg = getattr(lm, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    if cfg is None or impl not in ("sdpa", "eager") or not model.static_cache_ok:
        return None
    try:
        from transformers import StaticCache

        text_cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
        if getattr(text_cfg, "sliding_window", None) or getattr(text_cfg, "layer_types", None) and any(
            t != "full_attention" for t in text_cfg.layer_types
        ):
            return None
        return StaticCache(config=cfg, max_cache_len=max_len)
    except Exception:  # noqa: BLE001 - any model the static cache does not support uses the dynamic one
        return None


def repeat_cache(cache, n: int) -> None:
    """Repeat every layer's keys/values n times along the batch (rollout order: prompt0 x n, ...)."""
    if n == 1:
        return
    if hasattr(cache, "layers") and all(hasattr(layer, "keys") for layer in cache.layers):
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.repeat_interleave(n, dim=0)
                layer.values = layer.values.repeat_interleave(n, dim=0)
            if hasattr(layer, "max_batch_size"):
                layer.max_batch_size = layer.keys.shape[0]
        return
    cache.batch_repeat_interleave(n)


def select_cache_rows(cache, rows) -> None:
    """Keep only ``rows`` (``[k]`` indices) of every layer's keys/values: finished rollout rows leave the batch."""
    if hasattr(cache, "layers") and all(hasattr(layer, "keys") for layer in cache.layers):
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, rows)
                layer.values = layer.values.index_select(0, rows)
            for attr in ("max_batch_size", "batch_size"):
                if hasattr(layer, attr) and getattr(layer, "keys", None) is not None:
                    setattr(layer, attr, layer.keys.shape[0])
        return
    cache.batch_select_indices(rows)
