"""xopd: cross-modal on-policy distillation for speech LLMs."""
__version__ = "0.1.0"
