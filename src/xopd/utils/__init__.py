"""The bottom layer: atomic file I/O, FSDP helpers, quiet Hugging Face logging, stage processes.
Imports nothing from the rest of xopd (docs/DESIGN.md section 7)."""
