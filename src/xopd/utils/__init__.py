"""The bottom layer: atomic file I/O, heap trimming, FSDP helpers, quiet Hugging Face logging.
Imports nothing from the rest of xopd (docs/DESIGN.md section 7)."""
