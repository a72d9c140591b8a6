"""The memory planner's terms against what the code really allocates, on a tiny and a medium model
(issue 28): parameter counts and optimizer state exactly, the KV cache exactly, and the activations the
backward keeps (bytes of the tensors autograd saves) within 15 %, with and without checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xopd.cli import main
from xopd.lab.tiny_recipes import RECIPE_BUILDERS
from xopd.models import load_student, load_teacher
from xopd.training.plan import StepShape, activation_values, kv_cache_values, model_shape, plan_step

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _qwen2_dir(root: Path, hidden: int, layers: int, ffn: int, heads: int, kv: int, vocab: int = 512) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=False)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(root)
    return root


SIZES = {"tiny": dict(hidden=64, layers=2, ffn=128, heads=4, kv=2), "medium": dict(hidden=256, layers=4, ffn=704,
                                                                                     heads=8, kv=4)}


def _saved_bytes(model: torch.nn.Module, embeds: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward, parameters and the input excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(inputs_embeds=embeds)
    return sum(v for k, v in seen.items() if k not in params and k != embeds.untyped_storage().data_ptr())


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_term_matches_saved_tensors(size, checkpointing, tmp_path):
    path = _qwen2_dir(tmp_path / size, **SIZES[size])
    shape = model_shape(path)
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(path)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    else:
        model.eval()
    rows, length = 4, 96
    x = torch.randn(rows, length, shape.hidden, requires_grad=True)
    measured = _saved_bytes(model, x)
    if checkpointing:  # autograd keeps the layer inputs; one layer's activations come back while recomputed
        layer = model.model.layers[0]
        pos = torch.arange(length)[None].expand(rows, -1)
        emb = model.model.rotary_emb(x, pos)
        mask = None
        model.gradient_checkpointing_disable()
        one = torch.randn(rows, length, shape.hidden, requires_grad=True)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(one, attention_mask=mask, position_embeddings=emb, position_ids=pos)
        measured += sum(v for k, v in seen.items() if k not in params)
    planned = activation_values(shape, rows * length, checkpointing) * 4
    assert abs(planned - measured) <= 0.15 * measured, (planned, measured)


def test_counts_optimizer_and_kv_cache_are_exact(tmp_path):
    path = _qwen2_dir(tmp_path / "m", **SIZES["medium"])
    shape = model_shape(path)
    teacher = load_teacher(path)
    params = list(teacher.causal_lm().parameters())
    assert shape.total == sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    g = plan_step(shape, None, StepShape(rows=1, n=1, prompt_len=1, new_tokens=1, weight_bytes=4), step=2)
    assert g["optimizer (AdamW fp32 moments)"] * 1024**3 == pytest.approx(state)
    assert plan_step(shape, None, StepShape(rows=1, n=1, prompt_len=1, new_tokens=1), step=1)[
        "optimizer (AdamW fp32 moments)"] == 0.0
    emb = torch.randn(3, 10, shape.hidden)
    _, cache = teacher.forward_embeds(emb, torch.ones(3, 10, dtype=torch.long), use_cache=True)
    kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_cache_values(shape, 3, 10) * 4 == kv


@pytest.mark.parametrize("recipe", sorted(RECIPE_BUILDERS))
def test_recipe_students_are_counted_by_part(recipe, tmp_path):
    student_dir, teacher_dir = RECIPE_BUILDERS[recipe](tmp_path)
    shape = model_shape(student_dir)
    student = load_student(student_dir)
    assert shape.total == sum(p.numel() for p in student.parameters())
    assert shape.embed == student.causal_lm().get_input_embeddings().weight.numel()
    assert shape.towers["audio tower"] > 0
    assert model_shape(teacher_dir).total == sum(p.numel() for p in load_teacher(teacher_dir).parameters())


def test_plan_command_prints_the_table_and_says_whether_it_fits(tmp_path, capsys):
    student, teacher = RECIPE_BUILDERS["qwen2.5-omni-7b"](tmp_path)
    out = tmp_path / "plan.json"
    argv = ["plan", "--config", str(CONFIGS / "qwen2.5-omni-7b.yaml"), "--student", student, "--teacher", teacher,
            "--gpus", "8", "--gpu_mem", "80", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "teacher weights" in text and "rollout: KV cache" in text and "fits" in text
    terms = json.loads(out.read_text())["step2"]
    assert terms["peak"] == pytest.approx(terms["static"] + max(terms["rollout phase"], terms["training phase"]))
    assert main([*argv[:-4], "--gpu_mem", "0.0000001"]) == 3  # does not fit
