"""Kernel choice by measurement: a candidate wins only by the margin, decisions are cached on disk."""

from __future__ import annotations

import json
import time

from xopd.cpu import autotune


def _sleep(seconds: float):
    return lambda: time.sleep(seconds)


def test_prefer_needs_the_margin_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XOPD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "_MEMO", {})
    assert autotune.prefer("k", "fast", _sleep(0.004), _sleep(0.001)) is True  # 4x faster
    assert autotune.prefer("k", "tie", _sleep(0.002), _sleep(0.002)) is False  # no margin: plain stays
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert len(saved) == 2 and all("speedup" in v for v in saved.values())
    # a cached decision is read back without measuring again (in a fresh process: no memo)
    monkeypatch.setattr(autotune, "_MEMO", {})
    calls = []
    assert autotune.prefer("k", "fast", lambda: calls.append(1), lambda: calls.append(1)) is True
    assert not calls


def test_autotune_off_keeps_the_plain_path(tmp_path, monkeypatch):
    monkeypatch.setenv("XOPD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("XOPD_AUTOTUNE", "0")
    monkeypatch.setattr(autotune, "_MEMO", {})
    assert autotune.prefer("k", "fast", _sleep(0.004), _sleep(0.0)) is False
    assert not (tmp_path / "kernels.json").exists()


def test_an_unwritable_cache_still_decides(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XOPD_CACHE_DIR", str(blocker / "sub"))  # cannot be a directory
    monkeypatch.setattr(autotune, "_MEMO", {})
    assert autotune.prefer("k", "fast", _sleep(0.004), _sleep(0.001)) is True
