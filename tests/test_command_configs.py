"""Every subcommand works from a typed config: hand-written flags land in a dataclass that checks them."""

from __future__ import annotations

import argparse

import pytest

from xopd.config import from_namespace
from xopd.data.config import DataCheckConfig, SynthConfig
from xopd.errors import ConfigError
from xopd.eval.config import EvalConfig
from xopd.lab.bench.config import BenchConfig
from xopd.models.config import ComposeConfig, PrepareConfig


def test_from_namespace_takes_the_fields_and_validates():
    ns = argparse.Namespace(manifest="m.jsonl", strict=True, json=False, unrelated=1)
    cfg = from_namespace(DataCheckConfig, ns)
    assert (cfg.manifest, cfg.strict, cfg.max_audio_seconds) == ("m.jsonl", True, 30.0)
    with pytest.raises(ConfigError, match="max-wer"):
        from_namespace(SynthConfig, argparse.Namespace(output="o", input="p.jsonl", max_wer=-1.0))
    with pytest.raises(ConfigError, match="exactly one"):
        from_namespace(SynthConfig, argparse.Namespace(output="o", input=None, hf_dataset=None))


def test_command_configs_check_their_values():
    with pytest.raises(ConfigError, match="need --adapter ctc"):
        ComposeConfig(encoder="e", lm="l", out="o", lm_input="posterior").validate()
    assert ComposeConfig(encoder="e", lm="l", out="o", adapter="ctc", lm_input="posterior",
                         acoustic_prefix=4).adapter_kwargs()["acoustic_prefix"] == 4
    with pytest.raises(ConfigError, match="stack"):
        PrepareConfig(stack=0).validate()
    quick = BenchConfig(quick=True)
    quick.validate()
    assert (quick.resolved().sizes, quick.resolved().rounds, quick.resolved().rss) == ("XS", 1, False)
    with pytest.raises(ConfigError, match="steps"):
        BenchConfig(steps=0).validate()
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        EvalConfig(student="s", output="o").validate()
