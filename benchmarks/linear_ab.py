"""torch's fp32 linear (MKL) against xopd's oneDNN linear (``cpu/onednn_linear.py``), side by side.

Per product of the bench's models (rows = 16 prompts x 77 positions): GFLOP/s of the forward
``x @ W.T``, the input grad ``g @ W`` and the weight grad ``g.T @ x``, each the median of 20 calls; then
a whole Llama of the bench's S and M sizes, forward+backward and no-grad forward, with plain
``nn.Linear`` and with :func:`use_onednn_linears` (every product sent to oneDNN, as ``linear_kernel:
onednn`` does). One process, interleaved, so the ratios compare like with like.

    python benchmarks/linear_ab.py [THREADS]     # default 2
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from xopd.lab.bench.system import median_seconds


def _product_row(d_in: int, d_out: int, rows: int) -> list[float]:
    """GFLOP/s of forward, input grad and weight grad, MKL then oneDNN for each."""
    from xopd.cpu.onednn_linear import _gemm

    x, w, g = torch.randn(rows, d_in), torch.randn(d_out, d_in), torch.randn(rows, d_out)
    gf = 2 * rows * d_in * d_out / 1e9
    calls = [
        lambda: F.linear(x, w), lambda: _gemm(x, w, None),
        lambda: g @ w, lambda: _gemm(g, w.t().contiguous(), None),
        lambda: g.t() @ x, lambda: _gemm(g.t().contiguous(), x.t().contiguous(), None),
    ]  # fmt: skip
    return [gf / median_seconds(c) for c in calls]


def products(rows: int = 16 * 77) -> None:
    print(f"GFLOP/s at {rows} rows:  fwd MKL / oneDNN | g@W MKL / oneDNN | g.T@x MKL / oneDNN")
    for d_in, d_out in ((128, 384), (128, 512), (512, 128), (384, 1152), (384, 384), (384, 3072), (1536, 384),
                        (384, 1000)):
        r = _product_row(d_in, d_out, rows)
        print(f"  {d_in:>5} -> {d_out:<5}  {r[0]:4.0f} / {r[1]:4.0f}   |  {r[2]:4.0f} / {r[3]:4.0f}   |  "
              f"{r[4]:4.0f} / {r[5]:4.0f}")


def _model_ab(size: str) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    import xopd.cpu.onednn_linear as ol
    from xopd.lab.bench.models import SIZES

    spec = SIZES[size]
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=spec["d"], intermediate_size=spec["ffn"],
                                      num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                                      num_key_value_heads=spec["heads"], tie_word_embeddings=False))
    ids = torch.randint(0, 1000, (16, 77))

    def fwd_bwd() -> None:
        lm.zero_grad(set_to_none=True)
        lm(input_ids=ids).logits.logsumexp(-1).mean().backward()

    def fwd() -> None:
        with torch.no_grad():
            lm(input_ids=ids)

    res: dict[str, list[tuple[float, float]]] = {"torch": [], "onednn": []}
    for _ in range(2):  # interleaved rounds, best of each
        for kind in res:
            ol.use_onednn_linears(lm) if kind == "onednn" else ol.use_torch_linears(lm)
            res[kind].append((median_seconds(fwd_bwd, 8), median_seconds(fwd, 8)))
    tb, tf = (min(v) for v in zip(*res["torch"]))
    ob, of = (min(v) for v in zip(*res["onednn"]))
    return (f"{size}: forward+backward {tb:.3f} -> {ob:.3f} s ({tb / ob:.2f}x), "
            f"no-grad forward {tf:.3f} -> {of:.3f} s ({tf / of:.2f}x)")


def models() -> None:
    import xopd.cpu.onednn_linear as ol

    ol.MIN_MACS = 0  # every product to oneDNN, as in the product table
    print("16 x 77 tokens, torch's linears -> oneDNN linears:")
    for size in ("S", "M"):
        print("  " + _model_ab(size))


def main() -> None:
    from xopd.cpu.onednn_linear import onednn_linear_available
    from xopd.lab.bench.system import cpu_model

    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    if not onednn_linear_available():
        sys.exit("this torch has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")
    print(f"{cpu_model()}, {threads} threads, torch {torch.__version__}")
    products()
    models()


if __name__ == "__main__":
    main()
