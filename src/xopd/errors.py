"""User-facing errors.

Anything a user can cause (bad config, bad manifest, mismatched tokenizers, missing files) raises a
subclass of :class:`XopdError`. The CLI catches these and prints one line instead of a traceback,
exiting non-zero. Internal bugs stay ordinary exceptions so they keep their tracebacks.
"""

from __future__ import annotations


class XopdError(Exception):
    """Base class: a problem the user can fix. The message says what and how."""

    exit_code = 1


class ConfigError(XopdError):
    """Unknown key, wrong type or impossible value in a config/CLI override."""

    exit_code = 2


class DataError(XopdError):
    """A manifest/audio/transcript problem (names the file, line and field)."""


class ModelError(XopdError):
    """A model directory that cannot be used as asked (missing files, wrong class, no chat template)."""


class AlignmentError(ModelError):
    """Student and teacher tokenizers disagree on the response vocabulary."""
