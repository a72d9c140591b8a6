"""A lean decode step for Llama-family causal LMs (Llama, Qwen2, Qwen3, Mistral without sliding window).

Why: at the sizes that fit a CPU (and for small models on any device) one decode step is bound by
per-call framework overhead, not FLOPs: the HF forward runs ~40 small ops per layer plus mask and
cache bookkeeping, and ``F.linear`` on a few rows is slower than a matmul against a pre-transposed
weight. This module runs the same math with
  * q/k/v and gate/up fused into one matmul each, weights pre-transposed once per rollout,
  * the KV cache preallocated (it reuses the ``StaticCache`` tensors the HF prefill filled),
  * rotary cos/sin for every decode position computed once, before the loop,
  * attention only over the slots written so far (a strided view of the cache).
On CPU, for models whose weights do not fit in cache (>= ``ONEDNN_MIN_PARAMS``), the weights are
reordered once per rollout into oneDNN's blocked layout for the rollout's row count
(``torch.ops.mkldnn._reorder_linear_weight``, as TorchInductor does for CPU linears) and multiplied with
``_linear_pointwise``, dense rows in and out: on a few rows against weights that stream from memory
that beats MKL's ``x @ w`` and the earlier ``to_mkldnn`` + ``mkldnn_linear`` form (docs/BENCHMARKS.md,
'Lean decode step and packing'). Small models, whose weights stay in cache (packing made the bench's S
rollout slower), like GPUs, other dtypes, a torch without oneDNN and ``XOPD_DECODE_ONEDNN=0``, multiply
against pre-transposed dense weights.
Norms, rotary tables and activations are the model's own modules, so variants (rope scaling, eps,
activation) stay exact; the logits agree with the HF forward to float rounding (tested).

peft LoRA layers are decoded with their effective weight ``W + BA*scale`` (computed out of place).
Anything it does not recognise (other architectures, sharded weights, DoRA, LoRA dropout, sliding
windows, logit soft-capping) makes :func:`fast_decoder` return None and the caller uses HF's path.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from xopd.cpu.onednn_linear import ONEDNN_MIN_PARAMS as _ONEDNN_MIN_PARAMS
from xopd.cpu.onednn_linear import OneDNNLinear, onednn_linear_available

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


def _plain_linear(m: nn.Module) -> bool:
    # OneDNNLinear: the same weights, trained with oneDNN's GEMM (linear_kernel); decode reads them directly
    return type(m) in (nn.Linear, OneDNNLinear) and type(m.weight.data) is torch.Tensor


def _lora_linear(m: nn.Module) -> bool:
    """A peft LoRA linear whose effective weight is ``W + sum(delta)`` (no dropout, DoRA or merge)."""
    base = getattr(m, "base_layer", None)
    if base is None or not _plain_linear(base) or not hasattr(m, "get_delta_weight"):
        return False
    if getattr(m, "merged", False) or any(
        getattr(m, "use_dora", {}).get(a, False) for a in m.active_adapters
    ):
        return False
    drops = getattr(m, "lora_dropout", {})
    return all(type(drops[a]) is nn.Identity for a in m.active_adapters if a in drops)


def _linear_ok(m: nn.Module) -> bool:
    return _plain_linear(m) or _lora_linear(m)


def _weight(m: nn.Module) -> torch.Tensor:
    """The effective ``[out, in]`` weight: LoRA deltas added (out of place) for adapted layers."""
    if _plain_linear(m):
        return m.weight
    return m.base_layer.weight + sum(m.get_delta_weight(a) for a in m.active_adapters)


def _bias(m: nn.Module) -> torch.Tensor | None:
    return m.bias if _plain_linear(m) else m.base_layer.bias


def _supported(lm: nn.Module) -> bool:
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    if getattr(cfg, "sliding_window", None) and getattr(
        cfg, "use_sliding_window", cfg.model_type == "mistral"
    ):
        return False
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return False
    base = getattr(lm, "model", None)
    layers = getattr(base, "layers", None)
    head = getattr(lm, "lm_head", None)
    if layers is None or head is None or not _plain_linear(head):
        return False
    for layer in layers:
        att, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = [(att, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
        if att is None or mlp is None or not all(_linear_ok(getattr(m, n, None)) for m, n in names):
            return False
    return True


def _cat_bias(*mods: nn.Module) -> torch.Tensor | None:
    if all(_bias(m) is None for m in mods):
        return None
    return torch.cat(
        [_bias(m) if _bias(m) is not None else _weight(m).new_zeros(_weight(m).shape[0]) for m in mods]
    )


def _norm(module: nn.Module):
    """A standard RMSNorm as one fused ``F.rms_norm`` call (same values, ~2x fewer op launches);
    anything else (e.g. Gemma's 1 + weight) is called as the module itself."""
    w, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if (
        type(module).__name__.endswith("RMSNorm")
        and "Gemma" not in type(module).__name__
        and w is not None
        and eps is not None
        and w.dim() == 1
    ):
        return lambda x: F.rms_norm(x, (w.shape[0],), w, eps)
    return module


#: Decode-step weights (parameters) from which oneDNN packing pays (cpu/onednn_linear.py, where the
#: training linears use the same threshold): bench S, 1.2 M: dense faster; bench M, 14.6 M: oneDNN faster.
ONEDNN_MIN_PARAMS = _ONEDNN_MIN_PARAMS


def _onednn_ok(w: torch.Tensor, params: int) -> bool:
    """Packing is possible and worth measuring: a model of >= ``ONEDNN_MIN_PARAMS`` decode weights, CPU,
    fp32, a torch built with oneDNN, and not switched off by ``XOPD_DECODE_ONEDNN=0``."""
    return (
        params >= ONEDNN_MIN_PARAMS
        and w.device.type == "cpu"
        and w.dtype == torch.float32
        and onednn_linear_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and os.environ.get("XOPD_DECODE_ONEDNN", "1") != "0"
    )


def _packing_pays(shapes: list[tuple[int, int]], rows: int) -> bool:
    """Whether oneDNN-packed products beat pre-transposed dense ones for one decode step's weights
    (``shapes``: ``(out, in)`` of every product, repeats included) at ``rows`` rows, measured here
    (:func:`xopd.cpu.autotune.prefer`, cached)."""
    from xopd.cpu.autotune import prefer

    distinct = sorted(set(shapes))
    counts = [shapes.count(s) for s in distinct]
    x = {i: torch.randn(rows, i) for _, i in distinct}
    dense = [torch.randn(i, o) for o, i in distinct]
    packed = [torch.ops.mkldnn._reorder_linear_weight(torch.randn(o, i), rows) for o, i in distinct]

    def run_dense() -> None:
        for (_, i), w, c in zip(distinct, dense, counts):
            for _ in range(c):
                x[i] @ w

    def run_packed() -> None:
        for (_, i), w, c in zip(distinct, packed, counts):
            for _ in range(c):
                torch.ops.mkldnn._linear_pointwise(x[i], w, None, "none", [], "")

    key = f"rows {rows}: " + ",".join(f"{o}x{i}*{c}" for (o, i), c in zip(distinct, counts))
    return prefer("decode_packing_no_grad", key, run_dense, run_packed)


class _Linear:
    """``y = x @ w.T + b`` for a fixed ``w [out, in]``, packed once for the decode loop.

    Where :func:`_onednn_ok` holds for a model of ``params`` decode weights: reordered once into oneDNN's
    blocked layout for ``rows``-row products (``_reorder_linear_weight``, what TorchInductor does for CPU
    linears) and multiplied by ``_linear_pointwise`` with dense input and output (no per-call
    conversions, which is what made ``to_mkldnn`` + ``mkldnn_linear`` slower; docs/BENCHMARKS.md). Else
    a pre-transposed dense copy (``addmm`` against ``[in, out]`` beats ``F.linear`` on a few rows).
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, pack: bool, rows: int = 1) -> None:
        w, b = w.detach(), b.detach() if b is not None else None
        self.onednn = pack
        if self.onednn:
            self.w = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)
            self.b = b.contiguous() if b is not None else None
        else:
            self.w, self.b = w.t().contiguous(), b

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.w, self.b, "none", [], "")
        return torch.addmm(self.b, x, self.w) if self.b is not None else x @ self.w


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _step_shapes(lm: nn.Module) -> list[tuple[int, int]]:
    """``(out, in)`` of every product one decode step runs (fused q/k/v and gate/up, as packed)."""
    shapes = []
    for layer in lm.model.layers:
        att, mlp = layer.self_attn, layer.mlp
        hidden = att.q_proj.in_features
        shapes += [(att.q_proj.out_features + att.k_proj.out_features + att.v_proj.out_features, hidden),
                   (att.o_proj.out_features, att.o_proj.in_features),
                   (mlp.gate_proj.out_features + mlp.up_proj.out_features, hidden),
                   (mlp.down_proj.out_features, mlp.down_proj.in_features)]
    return shapes + [tuple(lm.lm_head.weight.shape)]


class FastDecoder:
    """Decode one token per call for a batch, writing into preallocated key/value tensors.

    ``keys[i]``/``values[i]``: layer i's ``[B, KV, T, hd]`` cache (prefill already written into
    slots ``< start``); ``positions [B, steps]``: the position id of each decode step's token.
    """

    def __init__(
        self, lm: nn.Module, keys: list[torch.Tensor], values: list[torch.Tensor], positions: torch.Tensor
    ) -> None:
        base = lm.model
        cfg = lm.config
        self.keys, self.values = keys, values
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        first = base.layers[0].self_attn
        self.head_dim = first.head_dim
        self.scale = first.scaling
        self.layers = []
        # weights one decode step reads (layers + head): big enough to try oneDNN packing, then measured
        n = sum(p.numel() for p in base.layers.parameters()) + lm.lm_head.weight.numel()
        rows = keys[0].shape[0]  # every decode product has one row per sequence
        pack = _onednn_ok(lm.lm_head.weight, n) and _packing_pays(_step_shapes(lm), rows)
        with torch.no_grad():
            for layer in base.layers:
                att, mlp = layer.self_attn, layer.mlp
                self.layers.append(
                    {
                        "ln1": _norm(layer.input_layernorm),
                        "ln2": _norm(layer.post_attention_layernorm),
                        "q_norm": _norm(att.q_norm) if getattr(att, "q_norm", None) is not None else None,
                        "k_norm": _norm(att.k_norm) if getattr(att, "k_norm", None) is not None else None,
                        "qkv": _Linear(
                            torch.cat([_weight(att.q_proj), _weight(att.k_proj), _weight(att.v_proj)]),
                            _cat_bias(att.q_proj, att.k_proj, att.v_proj),
                            pack,
                            rows,
                        ),
                        "o": _Linear(_weight(att.o_proj), _bias(att.o_proj), pack, rows),
                        "gu": _Linear(
                            torch.cat([_weight(mlp.gate_proj), _weight(mlp.up_proj)]),
                            _cat_bias(mlp.gate_proj, mlp.up_proj),
                            pack,
                            rows,
                        ),
                        "d": _Linear(_weight(mlp.down_proj), _bias(mlp.down_proj), pack, rows),
                        "act": mlp.act_fn,
                    }
                )
            self.norm = _norm(base.norm)
            self.lm_head = _Linear(lm.lm_head.weight, lm.lm_head.bias, pack, rows)
            dummy = lm.lm_head.weight.new_zeros(1, 1, 1)
            cos, sin = base.rotary_emb(dummy, positions)  # [B, steps, hd]
        self.onednn = self.lm_head.onednn
        self.cos, self.sin = cos[:, :, None, :], sin[:, :, None, :]  # [B, steps, 1, hd]

    @torch.no_grad()
    def step(self, emb: torch.Tensor, t: int, slot: int, mask: torch.Tensor) -> torch.Tensor:
        """``emb [B, D]`` of decode step ``t`` written at cache ``slot``; ``mask [B, 1, 1, slot + 1]``
        additive. Returns next-token logits ``[B, V]``."""
        b = emb.shape[0]
        h, kv, hd = self.heads, self.kv_heads, self.head_dim
        cos, sin = self.cos[:, t], self.sin[:, t]
        x = emb
        for i, p in enumerate(self.layers):
            y = p["ln1"](x)
            qkv = p["qkv"](y).view(b, h + 2 * kv, hd)
            v = qkv[:, h + kv :]
            if p["q_norm"] is not None:
                qk = _rotate(
                    torch.cat([p["q_norm"](qkv[:, :h]), p["k_norm"](qkv[:, h : h + kv])], 1), cos, sin
                )
            else:
                qk = _rotate(qkv[:, : h + kv], cos, sin)  # q and k heads rotated in one go
            q, k = qk[:, :h], qk[:, h:]
            self.keys[i][:, :, slot] = k
            self.values[i][:, :, slot] = v
            keys, values = self.keys[i][:, :, : slot + 1], self.values[i][:, :, : slot + 1]
            att = F.scaled_dot_product_attention(
                q[:, :, None], keys, values, attn_mask=mask, scale=self.scale, enable_gqa=h != kv
            )
            x = x + p["o"](att.reshape(b, h * hd))
            y = p["ln2"](x)
            gu = p["gu"](y)
            half = gu.shape[-1] // 2
            x = x + p["d"](p["act"](gu[:, :half]) * gu[:, half:])
        return self.lm_head(self.norm(x))


def fast_decoder(lm: nn.Module, cache, positions: torch.Tensor) -> FastDecoder | None:
    """A :class:`FastDecoder` over a filled ``StaticCache``, or None when the model is not supported."""
    if not _supported(lm) or torch.is_grad_enabled():
        return None
    layers = getattr(cache, "layers", None)
    if not layers or not all(getattr(ly, "is_initialized", False) for ly in layers):
        return None
    # one dtype for weights and cache only (FSDP2 mixed precision casts inside the module forward, which
    # this step bypasses): otherwise HF's forward decodes
    if {p.dtype for p in lm.parameters()} != {layers[0].keys.dtype}:
        return None
    return FastDecoder(lm, [ly.keys for ly in layers], [ly.values for ly in layers], positions)
