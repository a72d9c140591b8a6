"""``nn.Linear`` on CPU through oneDNN's fp32 GEMM instead of MKL's: forward, input grad and weight grad.

Why: PyTorch's CPU build sends an fp32 ``F.linear`` / ``x @ w`` to MKL's sgemm, and MKL takes its AVX-512
code path only on Intel CPUs. On an AMD CPU with AVX-512, oneDNN (the library PyTorch itself ships for
convolutions and bf16 matmuls) runs the bench models' forward and input-grad products well ahead of MKL;
its weight grad ``g.T @ x`` wins for wide layers but not reliably for narrow ones, so layers narrower
than ``WIDE_GRAD`` keep MKL for that one. On an Intel CPU both libraries use AVX-512, so expect far less
there. ``benchmarks/linear_ab.py`` measures it (docs/BENCHMARKS.md, 'oneDNN linears').

How: ``torch.ops.mkldnn._linear_pointwise`` (the op TorchInductor emits for CPU linears) takes plain
dense tensors in and out, so there is no ``to_mkldnn`` / ``to_dense`` conversion per call; the
backward is two more calls of the same GEMM (``g @ w`` and ``g.T @ x``, with one transposed copy each)
and a sum for the bias. Results equal ``F.linear`` up to float rounding (another summation order),
which the tests check, together with the gradients. Row counts are bucketed (:func:`row_bucket`) because
oneDNN builds a kernel per new shape, and products under ``MIN_MACS`` stay on MKL.

:func:`use_onednn_linears` switches every ``nn.Linear`` of a module to :class:`OneDNNLinear` by class
swap: parameters, state dict, ``save_pretrained``, peft's LoRA (which wraps any ``nn.Linear``) and
optimizers see the same module. Off the CPU, in other dtypes, or without the op, the layer is plain
``F.linear``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

#: LM parameters from which ``linear_kernel: auto`` (and the decode step's weight packing,
#: cpu/fast_decode.py) use oneDNN: 8 M fp32 weights fill the L3 of the machine it was tuned on.
#: Below it (the demo's 1.2 M LM, the bench's S) per-call costs eat the gain; the bench's M (14.6 M)
#: trains faster with them (`xopd bench`, benchmarks/linear_ab.py; docs/BENCHMARKS.md, 'oneDNN linears').
ONEDNN_MIN_PARAMS = 8_000_000


#: narrowest layer (min of in and out features) whose weight gradient goes through oneDNN
WIDE_GRAD = 256


def onednn_linear_available() -> bool:
    """This torch can run an fp32 linear through oneDNN with dense tensors (``XOPD_ONEDNN_LINEAR=0``: no)."""
    return (
        os.environ.get("XOPD_ONEDNN_LINEAR", "1") != "0"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops, "mkldnn")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x [R, in] @ w[out, in].T + b`` through oneDNN (plain dense tensors in and out)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def row_bucket(rows: int) -> int:
    """The row count a GEMM of ``rows`` rows is padded to: <= 16 as is, <= 64 to a multiple of 16, else
    to 8 steps an octave (at most 12.5 % padding).

    Why: oneDNN builds (JIT-compiles) a kernel for every new shape and caches it. Training shapes change
    every step (prompt and response lengths), and a build costs more than the GEMM itself at the demo's
    sizes, so the demo's X-OPD step was slower than MKL's until rows were bucketed (docs/BENCHMARKS.md,
    'oneDNN linears'). Zero rows add nothing to ``g.T @ x``.
    """
    if rows <= 16:
        return rows
    if rows <= 64:
        return -(-rows // 16) * 16
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t [R, k]`` (contiguous) with zero rows appended up to ``rows``."""
    if t.shape[0] == rows:
        return t
    out = t.new_zeros(rows, t.shape[1])
    out[: t.shape[0]] = t
    return out


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., in]`` -> ``(y [..., out], xp)``: ``xp`` is ``x`` as ``[rows, in]`` padded to its row
    bucket (what the weight grad needs)."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    rows = x2.shape[0]
    xp = _pad_rows(x2, row_bucket(rows))
    y = _gemm(xp, weight.contiguous(), None if bias is None else bias.contiguous())[:rows]
    return y.view(*x.shape[:-1], weight.shape[0]), xp


class _OneDNNLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y, xp = _forward(x, weight, bias)
        ctx.save_for_backward(xp, weight)
        ctx.has_bias = bias is not None
        ctx.in_shape = x.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        xp, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()
        rows = g.shape[0]
        gp = _pad_rows(g, xp.shape[0])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # dL/dx = g @ W: a linear against W.T
            gx = _gemm(gp, weight.t().contiguous(), None)[:rows].view(ctx.in_shape)
        if ctx.needs_input_grad[1]:  # dL/dW = g.T @ x: a linear of g.T [out, R] against x.T [in, R]
            # oneDNN's weight grad wins for wide layers; for narrow ones runs of benchmarks/linear_ab.py
            # disagreed (docs/BENCHMARKS.md, 'oneDNN linears'), so narrower layers keep MKL's g.T @ x
            gw = (_gemm(gp.t().contiguous(), xp.t().contiguous(), None) if min(weight.shape) >= WIDE_GRAD
                  else gp.t() @ xp)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


#: smallest GEMM (rows x in x out multiply-adds) sent to oneDNN. Below it MKL plus less Python wins: the
#: autograd wrapper's per-call cost outweighs oneDNN's faster kernel (docs/BENCHMARKS.md, 'oneDNN
#: linears'). Decode steps of small models stay on MKL.
MIN_MACS = 1 << 23


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; through oneDNN for fp32 CPU products of >= ``MIN_MACS``.

    Shapes: ``x [..., in]``, ``weight [out, in]``, ``bias [out]`` -> ``[..., out]``.
    """
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or x.numel() * weight.shape[0] < MIN_MACS):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _OneDNNLinearFn.apply(x, weight, bias)
    return _forward(x, weight, bias)[0]  # no graph to record (teacher scoring, evaluation): no autograd wrapper


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`onednn_linear` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias)


def use_onednn_linears(module: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` under ``module`` to :class:`OneDNNLinear`; returns how many.

    Does nothing (returns 0) when :func:`onednn_linear_available` is false. Subclasses of ``nn.Linear``
    with their own forward (quantised or LoRA layers) are left alone; a LoRA layer's base ``nn.Linear``
    is swapped like any other.
    """
    if not onednn_linear_available():
        return 0
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
    return n


def use_torch_linears(module: nn.Module) -> int:
    """Undo :func:`use_onednn_linears` (for A/B runs); returns how many layers were switched back."""
    n = 0
    for m in module.modules():
        if type(m) is OneDNNLinear:
            m.__class__ = nn.Linear
            n += 1
    return n


def onednn_pays(lm: nn.Module, rows: int = 512) -> bool:
    """Whether forward+backward of ``lm``'s linears runs faster through oneDNN than through torch's default
    here, by :data:`xopd.cpu.autotune.MARGIN`: measured once on random tensors of each layer shape
    (``rows`` tokens, weighted by how often the shape occurs) and cached (:func:`xopd.cpu.autotune.prefer`)."""
    from collections import Counter

    from xopd.cpu.autotune import prefer

    counts = Counter((m.in_features, m.out_features, m.bias is not None) for m in lm.modules()
                     if isinstance(m, nn.Linear))
    shapes = sorted(counts)
    tensors = [(torch.randn(rows, i, requires_grad=True), torch.randn(o, i, requires_grad=True),
                torch.randn(o, requires_grad=True) if b else None) for i, o, b in shapes]

    def run(fn) -> None:
        for (x, w, b), shape in zip(tensors, shapes):
            for _ in range(counts[shape]):
                fn(x, w, b).sum().backward()

    key = f"rows {rows}: " + ",".join(f"{i}x{o}{'+b' if b else ''}*{counts[(i, o, b)]}" for i, o, b in shapes)
    return prefer("linear_train", key, lambda: run(F.linear), lambda: run(onednn_linear))


def select_linear_kernel(kernel: str, device: torch.device, dtype: torch.dtype, *models: nn.Module | None) -> int:
    """Apply ``linear_kernel`` (auto | onednn | torch) to ``models``; returns the layers switched to oneDNN.

    ``auto``: oneDNN for an LM of >= ``ONEDNN_MIN_PARAMS`` whose linears measured faster with it on this
    machine (:func:`onednn_pays`), else torch's. ``onednn``: for any size. Both only on CPU in float32
    (elsewhere oneDNN's fp32 path has nothing to offer); ``onednn`` on a torch without the op is an
    error rather than a silent fallback.
    """
    from xopd.errors import ConfigError

    if kernel == "torch" or device.type != "cpu" or dtype != torch.float32:
        return 0
    if not onednn_linear_available():
        if kernel == "onednn":
            raise ConfigError("config: 'linear_kernel' is onednn, but this torch has no oneDNN linear "
                              "(torch.ops.mkldnn._linear_pointwise) or XOPD_ONEDNN_LINEAR=0: use auto or torch")
        return 0
    n = 0
    for m in models:
        if m is None:
            continue
        lm = m.causal_lm() if hasattr(m, "causal_lm") else m
        big = sum(p.numel() for p in lm.parameters()) >= ONEDNN_MIN_PARAMS
        if kernel == "onednn" or (big and onednn_pays(lm)):
            n += use_onednn_linears(m)
    return n
