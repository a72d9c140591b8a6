"""``xopd data check MANIFEST``: find every row that training or evaluation would choke on, up front.

Training reads a manifest with :func:`~xopd.data.manifest.read_manifest`, which checks rows and audio
*headers* only (cheap, so a 100k-row corpus starts in seconds); the audio itself is decoded when a
batch needs it, so a file with NaN samples or a 5 ms clip would stop a run hours in. ``data check``
does both halves the way training does them — the same ``read_manifest`` call, then
:func:`~xopd.data.audio.load_audio` on every file and, with ``--tokenizer``, the tokenizer on every
transcript — and prints rows ok plus rows skipped by reason with their ids.

Exit codes: 0 usable (some rows ok; bad ones would be skipped), 1 nothing usable or a fatal problem
(missing manifest, any bad row under ``--strict``), 2 usage errors (bad flags).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xopd.data.audio import SAMPLE_RATE
from xopd.data.manifest import MIN_AUDIO_SAMPLES as MIN_SAMPLES
from xopd.data.manifest import Example, SkipReport, read_manifest
from xopd.errors import DataError, ModelError

#: Ids printed per reason in the text summary (``--json`` lists them all).
SHOWN_IDS = 20

EPILOG = """examples:
  xopd data check data/train.jsonl
  xopd data check data/train.jsonl --strict --max_audio_seconds 20
  xopd data check data/train.jsonl --tokenizer models/student --json > report.json

exit codes: 0 usable (bad rows would be skipped), 1 nothing usable or fatal, 2 usage error
"""


@dataclass
class CheckResult:
    """Outcome of :func:`check_manifest`: usable ids, skipped rows by reason, non-fatal warnings."""

    manifest: str
    ok_ids: list[str] = field(default_factory=list)
    skips: SkipReport = field(default_factory=SkipReport)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.error is None and bool(self.ok_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "rows": len(self.ok_ids) + self.skips.total,
            "ok": len(self.ok_ids),
            "skipped": self.skips.total,
            "counts": self.skips.counts,
            "ids": self.skips.ids,
            "details": self.skips.details,
            "warnings": self.warnings,
            "usable": self.usable,
            "error": self.error,
        }


def _line_numbers(path: Path) -> dict[str, int]:
    """id -> first line number, so decode-time problems can still name ``file:line``."""
    out: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                obj = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                out.setdefault(obj["id"], lineno)
    return out


def _decode_reason(message: str) -> str:
    """Skip reason for a :class:`DataError` raised while decoding audio."""
    if "NaN" in message:
        return "audio_nan"
    if "zero samples" in message or "too short" in message:
        return "audio_too_short"
    if "limit" in message:
        return "audio_too_long"
    return "audio_corrupt"


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"{p}: tokenizer directory not found; pass a model or tokenizer directory")
    try:
        return AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"{p}: cannot load a tokenizer: {str(e).splitlines()[0]}") from None


def _row_problem(
    ex: Example, max_audio_seconds: float | None, tokenizer, cache: dict
) -> tuple[str, str] | None:
    """(reason, problem) if training would fail on this row, else None."""
    if ex.audio is not None:
        if ex.audio not in cache:
            try:
                wav = ex.load_waveform(max_seconds=max_audio_seconds)
                cache[ex.audio] = None if wav.size >= MIN_SAMPLES else (
                    "audio_too_short", f"audio has {wav.size} samples at {SAMPLE_RATE} Hz (< {MIN_SAMPLES}, one 10 ms hop)"
                )  # fmt: skip
            except DataError as e:
                cache[ex.audio] = (_decode_reason(str(e)), str(e))
        if cache[ex.audio] is not None:
            return cache[ex.audio]
    if tokenizer is not None:
        try:
            ids = tokenizer(ex.text, add_special_tokens=False)["input_ids"]
        except Exception as e:  # noqa: BLE001 - any tokenizer failure on user text is a bad row
            return "text_untokenizable", f"tokenizer failed on 'text' ({type(e).__name__}: {e})"
        if not ids:
            return "text_untokenizable", "'text' tokenizes to zero tokens"
    return None


def check_manifest(
    manifest: str | Path,
    *,
    strict: bool = False,
    max_audio_seconds: float | None = 30.0,
    max_text_chars: int = 4000,
    tokenizer_dir: str | None = None,
) -> CheckResult:
    """Validate every row as training/eval will read it; raises DataError only under ``strict``.

    Fatal problems that are not about one row (missing manifest, no usable rows) are returned in
    ``error`` unless ``strict``; a missing/unloadable ``tokenizer_dir`` raises ModelError.
    """
    path = Path(manifest)
    tokenizer = _load_tokenizer(tokenizer_dir) if tokenizer_dir else None
    result = CheckResult(manifest=str(path))
    try:
        examples, report = read_manifest(
            path, strict=strict, max_audio_seconds=max_audio_seconds, max_text_chars=max_text_chars
        )
    except DataError as e:
        if strict:
            raise
        result.error = str(e)
        result.skips = getattr(e, "skips", None) or SkipReport()
        return result
    result.skips = report
    lines = _line_numbers(path) if examples else {}
    unk = getattr(tokenizer, "unk_token_id", None)
    cache: dict[str, tuple[str, str] | None] = {}
    for ex in examples:
        where = f"{path.name}:{lines.get(ex.id, '?')}"
        problem = _row_problem(ex, max_audio_seconds, tokenizer, cache)
        if problem is not None:
            reason, msg = problem
            if strict:
                raise DataError(
                    f"{where}: field '{'text' if reason.startswith('text') else 'audio'}' "
                    f"(id {ex.id!r}): {msg}"
                )
            report.add(reason, ex.id, f"{where}: {msg}")
            continue
        if unk is not None and unk in tokenizer(ex.text, add_special_tokens=False)["input_ids"]:
            result.warnings.setdefault("text_unknown_tokens", []).append(ex.id)
        result.ok_ids.append(ex.id)
    if not result.ok_ids:
        result.error = f"{path}: no usable rows ({report.summary()}); fix the rows or the paths"
    return result


def format_summary(result: CheckResult) -> str:
    """Human-readable report: rows ok, then every skip reason with ids and the first detail."""
    d = result.to_dict()
    if result.error and not d["rows"]:
        return f"{d['manifest']}: not checked"
    lines = [f"{d['manifest']}: {d['ok']} of {d['rows']} rows ok, {d['skipped']} skipped"]
    for reason in sorted(result.skips.counts):
        ids = result.skips.ids[reason]
        shown = ", ".join(ids[:SHOWN_IDS]) + (
            f", ... ({len(ids) - SHOWN_IDS} more; --json lists all)" if len(ids) > SHOWN_IDS else ""
        )
        lines.append(f"  {reason}: {len(ids)} ({shown})")
        first = result.skips.details[reason][0]
        if first:
            lines.append(f"      e.g. {first}")
    for name, ids in sorted(result.warnings.items()):
        lines.append(f"  warning {name}: {len(ids)} ({', '.join(ids[:SHOWN_IDS])})")
    if result.error:
        lines.append("not usable: see the error below")
    elif result.skips.total:
        lines.append("usable: training skips the rows above (pass --strict to fail on them instead)")
    else:
        lines.append("usable: every row is ok")
    return "\n".join(lines)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def cmd_data(args: argparse.Namespace, rest: list[str]) -> int:
    if getattr(args, "data_command", None) != "check":
        args.data_parser.print_help(sys.stderr)
        return 2
    from xopd.config import from_namespace
    from xopd.data.config import DataCheckConfig

    cfg = from_namespace(DataCheckConfig, args)
    result = check_manifest(
        cfg.manifest,
        strict=cfg.strict,
        max_audio_seconds=cfg.max_audio_seconds,
        max_text_chars=cfg.max_text_chars,
        tokenizer_dir=cfg.tokenizer,
    )
    if cfg.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_summary(result))
    if result.error:
        print(f"xopd data check: error: {result.error}", file=sys.stderr)
    return 0 if result.usable else 1


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    """``xopd data check``; ``data`` is a group so later data tools can sit beside ``check``."""
    p = sub.add_parser(
        "data",
        help="inspect data: `xopd data check MANIFEST` validates a manifest",
        description="Data tools.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(data_parser=p)
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    c = dsub.add_parser(
        "check", help="validate every row of a manifest as training/eval will read it",
        description="Validate a JSONL manifest: JSON, fields, unique ids, paths inside the manifest folder, "
        "audio decodes (no NaN, not empty, not too short/long) and, with --tokenizer, transcripts tokenize. "
        "Prints rows ok and rows skipped by reason with ids.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    c.add_argument("manifest", help="JSONL manifest (audio paths relative to its folder)")
    c.add_argument(
        "--strict", action="store_true", help="fail (exit 1) on the first bad row, naming file:line"
    )
    c.add_argument(
        "--max_audio_seconds",
        type=_positive_float,
        default=30.0,
        help="longer audio counts as bad, like `xopd train --max_audio_seconds` (default: 30)",
    )
    c.add_argument(
        "--max_text_chars", type=_positive_int, default=4000, help="longest transcript (default: 4000)"
    )
    c.add_argument(
        "--tokenizer", metavar="DIR", help="model/tokenizer directory: check every transcript tokenizes"
    )
    c.add_argument("--json", action="store_true", help="print the full report as JSON (all ids)")
    handlers["data"] = cmd_data
