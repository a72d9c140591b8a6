"""Helpers the bench's reports share: comparing runs and the linear-kernel A/B."""

from __future__ import annotations


def cpu_ratio(a: dict[str, float], b: dict[str, float]) -> float | None:
    """(tokens per CPU-second of ``a``) / (same for ``b``); tokens per step = tok_s * step_s."""
    if not a.get("cpu_s") or not b.get("cpu_s"):
        return None
    return (a["tok_s"] * a["step_s"] / a["cpu_s"]) / (b["tok_s"] * b["step_s"] / b["cpu_s"])


def linear_kernel_switches(world) -> bool:
    """Whether ``linear_kernel: auto`` puts the bench world's student on oneDNN here (big enough, and
    measured faster: :func:`xopd.cpu.onednn_linear.onednn_pays`); then the bench also runs xopd with
    ``linear_kernel: torch`` beside it."""
    from xopd.cpu.onednn_linear import ONEDNN_MIN_PARAMS, onednn_linear_available, onednn_pays
    from xopd.models import load_student

    if not (onednn_linear_available() and world.params >= ONEDNN_MIN_PARAMS):
        return False
    return onednn_pays(load_student(world.student).causal_lm())


def linear_kernel_entry(onednn: dict[str, float], torch_run: dict[str, float]) -> dict[str, float]:
    """``linear_kernel.SIZE`` of bench.json: xopd's step with oneDNN linears (the default) and with torch's."""
    return {"speedup": onednn["tok_s"] / torch_run["tok_s"], "onednn_tok_s": onednn["tok_s"],
            "torch_tok_s": torch_run["tok_s"], "onednn_step_s": onednn["step_s"], "torch_step_s": torch_run["step_s"]}


def best_run(runs: list[dict[str, float]]) -> dict[str, float] | None:
    return min(runs, key=lambda r: r["step_s"]) if runs else None
