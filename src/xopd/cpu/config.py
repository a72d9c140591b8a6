"""``CPUConfig``: the CPU speed kit's keys (YAML or ``--key value`` of ``xopd train``, like the core's)."""

from __future__ import annotations

from dataclasses import dataclass

from xopd.config import field
from xopd.errors import ConfigError


@dataclass
class CPUConfig:
    """CPU speed kit (xopd.cpu): threads, decode path, linear kernel, heap trimming; inactive off the CPU."""

    threads: int = field(0, help="torch CPU threads (0 = torch default)")
    decode_threads: int = field(0, help="CPU threads while decoding rollouts (0 = auto: 1 thread for small "
                                "models, whose decode steps are overhead-bound, else all)")
    fast_decode: bool = field(True, help="CPU rollouts with a lean decode step for Llama-family LMs (same tokens "
                              "and log-probs up to float rounding; False: the model's own forward)")
    linear_kernel: str = field("auto", choices=("auto", "onednn", "torch"),
                               help="fp32 CPU linears (student and teacher): oneDNN's GEMM (xopd/cpu/onednn_linear.py) "
                               "or torch's default (MKL). auto: oneDNN for LMs of >= 8 M parameters where a short "
                               "measurement on this machine (cached) finds it faster by a margin; onednn: always")
    trim_heap_every: int = field(10, help="return freed C-heap memory to the OS every N steps (glibc "
                                 "malloc_trim; 0 = never); evaluation trims after every generation batch")

    def check(self) -> None:
        for key in ("threads", "decode_threads", "trim_heap_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config: '{key}' must be >= 0, got {getattr(self, key)}")
