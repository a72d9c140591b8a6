"""What bounds bench size S (d128 x 4 layers, 1.2 M parameters): is there framework overhead left to win?

The S step (``xopd bench --sizes S``) spends ~45 % in the student's forward+backward and ~40 % in the
rollout. This probe asks, on the bench's own S student (same weights, same 16 x 77 training shape, 16-row
decode), what two ways of cutting overhead would buy, measured side by side in one process:

1. **Training forward+backward: HF ``LlamaForCausalLM`` against a bare functional Llama** (one fused
   q/k/v and gate/up product, ``F.rms_norm``, SDPA with the padding mask; same values: the log-prob
   sums and every gradient agree to float rounding, printed). If the bare version is no faster, the
   time is in the matrix products, not in HF's Python; the profiler's share of ``aten::mm`` and its
   GFLOP/s against the measured MKL peak say how close those are to their bound.
2. **Decode: one static-shape decode step (attention over every cache slot, unwritten ones masked),
   eager against ``torch.compile``** (TorchInductor's C++ kernels fuse the elementwise ops between the
   products). Needs a C++ compiler; without one the line says so.

    python benchmarks/s_bound.py [THREADS]     # default 2; builds runs/bench_sbound/ once
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xopd.lab.bench.system import median_seconds

ROWS, LEN, RESP, STEPS = 16, 77, 48, 47  # the bench's S step: 16 prompts of ~29 tokens + 48 new tokens


def _bare_forward(lm, emb: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Llama forward (logits) from the module's own parameters, in as few ops as torch allows."""
    m, cfg = lm.model, lm.config
    b, n, _ = emb.shape
    h = cfg.num_attention_heads
    hd = cfg.hidden_size // h
    cos, sin = m.rotary_emb(emb, pos)  # [B, T, hd]
    cos, sin = cos[:, None], sin[:, None]

    def rot(x):
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    attn_mask = (torch.ones(n, n, dtype=torch.bool).tril()[None] & mask[:, None, :].bool())[:, None]
    x = emb
    for layer in m.layers:
        a, mlp = layer.self_attn, layer.mlp
        y = F.rms_norm(x, (x.shape[-1],), layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        q, k, v = F.linear(y, torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])).view(
            b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(rot(q), rot(k), v, attn_mask=attn_mask)
        x = x + a.o_proj(o.transpose(1, 2).reshape(b, n, -1))
        ln = layer.post_attention_layernorm
        g, u = F.linear(F.rms_norm(x, (x.shape[-1],), ln.weight, ln.variance_epsilon),
                        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])).chunk(2, -1)
        x = x + mlp.down_proj(F.silu(g) * u)
    return lm.lm_head(F.rms_norm(x, (x.shape[-1],), m.norm.weight, m.norm.variance_epsilon))


def training(lm, peak: float) -> None:
    torch.manual_seed(0)
    ids = torch.randint(8, lm.config.vocab_size, (ROWS, LEN))
    mask = torch.ones(ROWS, LEN, dtype=torch.long)
    for i in range(ROWS):
        mask[i, : i % 5] = 0  # left padding of 0-4 positions, as mixed prompt lengths give
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    emb = lm.get_input_embeddings()

    def loss(bare: bool) -> torch.Tensor:
        e = emb(ids)
        logits = (_bare_forward(lm, e, mask, pos) if bare else
                  lm(inputs_embeds=e, attention_mask=mask, position_ids=pos, use_cache=False).logits)
        return logits[:, -RESP - 1 : -1].log_softmax(-1).gather(-1, ids[:, -RESP:, None]).sum()

    def step(bare: bool):
        lm.zero_grad(set_to_none=True)
        loss(bare).backward()

    grads = []
    for bare in (False, True):
        lm.zero_grad(set_to_none=True)
        v = loss(bare)
        v.backward()
        grads.append((float(v.detach()), [p.grad.clone() for p in lm.parameters()]))
    gdiff = max(float((a - b).abs().max()) for a, b in zip(grads[0][1], grads[1][1], strict=True))
    print(f"training forward+backward, {ROWS} x {LEN} positions: log-prob sum HF {grads[0][0]:.4f} / bare "
          f"{grads[1][0]:.4f}, max gradient difference {gdiff:.1e}")
    hf, bare = median_seconds(lambda: step(False)), median_seconds(lambda: step(True))
    hf2 = median_seconds(lambda: step(False))  # HF again: the run-to-run spread of the comparison
    print(f"  HF {1000 * hf:.1f} ms (again: {1000 * hf2:.1f}), bare functional {1000 * bare:.1f} ms: "
          f"bare / HF = {hf / bare:.2f}x")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(5):
            step(False)
    ev = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in ev.values())
    mm = ev.get("aten::mm")
    if mm is not None and total:
        gflops = mm.flops / (mm.self_cpu_time_total / 1e6) / 1e9 if mm.flops else float("nan")
        print(f"  aten::mm: {100 * mm.self_cpu_time_total / total:.0f} % of the profiled CPU time, "
              f"{gflops:.0f} GFLOP/s ({100 * gflops / peak:.0f} % of the measured MKL peak, {peak:.0f})")


def decoding(lm) -> None:
    cfg, m = lm.config, lm.model
    h = cfg.num_attention_heads
    hd, d = cfg.hidden_size // h, cfg.hidden_size
    slots = LEN + 1
    keys = [torch.zeros(ROWS, h, slots, hd) for _ in m.layers]
    vals = [torch.zeros(ROWS, h, slots, hd) for _ in m.layers]
    with torch.no_grad():
        w = [(torch.cat([ly.self_attn.q_proj.weight, ly.self_attn.k_proj.weight, ly.self_attn.v_proj.weight]).t()
              .contiguous(), ly.self_attn.o_proj.weight.t().contiguous(),
              torch.cat([ly.mlp.gate_proj.weight, ly.mlp.up_proj.weight]).t().contiguous(),
              ly.mlp.down_proj.weight.t().contiguous(), ly.input_layernorm.weight, ly.post_attention_layernorm.weight)
             for ly in m.layers]
        head, norm = lm.lm_head.weight.t().contiguous(), m.norm.weight
        cos, sin = m.rotary_emb(head.new_zeros(1), torch.arange(slots)[None].expand(ROWS, -1))
    eps = m.norm.variance_epsilon

    def step(x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c, s = cos.index_select(1, t)[:, :, None], sin.index_select(1, t)[:, :, None]  # [B, 1, 1, hd]
        for i, (wqkv, wo, wgu, wd, ln1, ln2) in enumerate(w):
            qkv = (F.rms_norm(x, (d,), ln1, eps) @ wqkv).view(ROWS, 3 * h, 1, hd)
            qk = qkv[:, : 2 * h] * c + torch.cat([-qkv[:, : 2 * h, :, hd // 2 :], qkv[:, : 2 * h, :, : hd // 2]], -1) * s
            keys[i].index_copy_(2, t, qk[:, h:])
            vals[i].index_copy_(2, t, qkv[:, 2 * h :])
            att = F.scaled_dot_product_attention(qk[:, :h], keys[i], vals[i], attn_mask=mask)
            x = x + att.reshape(ROWS, d) @ wo
            g, u = (F.rms_norm(x, (d,), ln2, eps) @ wgu).chunk(2, -1)
            x = x + (F.silu(g) * u) @ wd
        return F.rms_norm(x, (d,), norm, eps) @ head

    x0 = torch.randn(ROWS, d)
    masks = [torch.where(torch.arange(slots) <= LEN - STEPS + j, 0.0, float("-inf")).expand(ROWS, 1, 1, slots)
             for j in range(STEPS)]

    def loop(f):
        with torch.no_grad():
            for j in range(STEPS):
                f(x0, torch.tensor([LEN - STEPS + j]), masks[j])

    eager = median_seconds(lambda: loop(step), 10)
    print(f"decode, {STEPS} steps of {ROWS} rows (static shapes): eager {1000 * eager:.1f} ms "
          f"({1000 * eager / STEPS:.2f} ms a step)")
    try:
        compiled = torch.compile(step, dynamic=False)
        t0 = time.perf_counter()
        loop(compiled)
        first = time.perf_counter() - t0
        comp = median_seconds(lambda: loop(compiled), 10)
        eager2 = median_seconds(lambda: loop(step), 10)
    except Exception as e:  # no C++ compiler, or an inductor limitation on this platform
        print(f"  torch.compile: not available here ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return
    print(f"  torch.compile: {1000 * comp:.1f} ms (eager again: {1000 * eager2:.1f}); compiled / eager = "
          f"{eager / comp:.2f}x; first call (compiling) {first:.1f} s")


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM

    from xopd.lab.bench.models import build_bench_world
    from xopd.lab.bench.system import cpu_model, matmul_peak_gflops

    world = build_bench_world("S", Path("runs/bench_sbound"))
    lm = AutoModelForCausalLM.from_pretrained(world.student, dtype=torch.float32).train()
    peak = matmul_peak_gflops()
    print(f"bench S student ({world.params / 1e6:.2f} M parameters), {cpu_model()}, {threads} threads, "
          f"torch {torch.__version__}")
    training(lm, peak)
    decoding(lm)


if __name__ == "__main__":
    main()
