"""oneDNN linears: equal to ``F.linear`` (outputs and gradients) up to float rounding, used only where
they are meant to be, and invisible to parameters, state dicts and saved models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xopd.cpu.onednn_linear as ol
from xopd.errors import ConfigError

pytestmark = pytest.mark.skipif(not ol.onednn_linear_available(), reason="this torch has no oneDNN linear")


def _lm() -> nn.Module:
    """A random 2-layer, 32-wide Llama (HF's own modules)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))


@pytest.fixture
def always(monkeypatch):
    """Send every product to oneDNN, however small (MIN_MACS keeps tiny ones on MKL)."""
    monkeypatch.setattr(ol, "MIN_MACS", 0)


def test_row_bucket_exact_values_and_padding_bound():
    assert [ol.row_bucket(r) for r in (1, 7, 16, 17, 33, 64, 65, 100, 128, 129, 1000, 1025, 2560)] == [
        1, 7, 16, 32, 48, 64, 72, 104, 128, 144, 1024, 1152, 2560]
    for r in range(1, 5000):
        b = ol.row_bucket(r)
        assert r <= b <= max(r + 15, r * 1.125)
    # few distinct shapes: the point of bucketing (oneDNN builds a kernel per shape)
    assert len({ol.row_bucket(r) for r in range(900, 1100)}) == 3


@pytest.mark.parametrize("rows,d_in,d_out,bias", [(5, 8, 12, True), (100, 16, 24, False), (3 * 7, 32, 8, True),
                                                  (70, 256, 272, True)])  # the last: oneDNN's weight grad
def test_forward_and_grads_match_f_linear(always, rows, d_in, d_out, bias):
    assert (min(d_in, d_out) >= ol.WIDE_GRAD) == (d_in == 256)
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, d_in, generator=g)
    w = torch.randn(d_out, d_in, generator=g)
    b = torch.randn(d_out, generator=g) if bias else None
    ref_in = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    new_in = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    ref = F.linear(*ref_in) if bias else F.linear(*ref_in, None)
    out = ol.onednn_linear(*new_in) if bias else ol.onednn_linear(*new_in, None)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    up = torch.randn(ref.shape, generator=g)
    (ref * up).sum().backward()
    (out * up).sum().backward()
    for a, c in zip(new_in, ref_in):
        torch.testing.assert_close(a.grad, c.grad, rtol=1e-5, atol=1e-4)


def test_3d_input_and_frozen_weight(always):
    """[B, T, in] input; a frozen weight (the teacher, a LoRA base) gives an input grad only."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, 16, generator=g, requires_grad=True)
    w = torch.randn(20, 16, generator=g)
    out = ol.onednn_linear(x, w)
    assert out.shape == (3, 11, 20)
    out.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    F.linear(x_ref, w).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-4)


def test_no_grad_path_equals_grad_path_bitwise(always):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(70, 24, generator=g), torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
    with torch.no_grad():
        a = ol.onednn_linear(x, w, b)
    c = ol.onednn_linear(x.requires_grad_(), w, b)
    assert c.requires_grad and torch.equal(a, c.detach())


def test_small_products_and_other_dtypes_are_plain_f_linear():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(4, 16, generator=g), torch.randn(8, 16, generator=g)
    assert x.numel() * w.shape[0] < ol.MIN_MACS
    assert torch.equal(ol.onednn_linear(x, w), F.linear(x, w))  # bitwise: MKL's own result
    xd, wd = x.double(), w.double()
    assert torch.equal(ol.onednn_linear(xd, wd), F.linear(xd, wd))


def test_swap_keeps_parameters_state_dict_and_outputs(always):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8, bias=False))
    x = torch.randn(50, 16)
    before, params, sd = net(x), list(net.parameters()), {k: v.clone() for k, v in net.state_dict().items()}
    assert ol.use_onednn_linears(net) == 2
    assert all(type(m) is ol.OneDNNLinear for m in net if isinstance(m, nn.Linear))
    assert list(net.parameters()) == params and net.state_dict().keys() == sd.keys()
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    assert ol.use_onednn_linears(net) == 0  # already swapped
    assert ol.use_torch_linears(net) == 2 and torch.equal(net(x), before)


def test_select_linear_kernel_rules(tmp_path, monkeypatch):
    """auto: only LMs of >= ONEDNN_MIN_PARAMS that measured faster with it (the tiny one here stays on
    MKL); onednn: always on CPU fp32; torch, other dtypes and devices: never; onednn on a torch without it:
    a one-line config error."""
    cpu = torch.device("cpu")
    lm = _lm()
    n_linear = sum(type(m) is nn.Linear for m in lm.modules())
    assert ol.select_linear_kernel("auto", cpu, torch.float32, lm, None) == 0
    assert ol.select_linear_kernel("torch", cpu, torch.float32, lm) == 0
    assert ol.select_linear_kernel("onednn", cpu, torch.bfloat16, lm) == 0
    assert ol.select_linear_kernel("onednn", torch.device("meta"), torch.float32, lm) == 0
    assert ol.select_linear_kernel("onednn", cpu, torch.float32, lm) == n_linear > 0
    monkeypatch.setattr(ol, "ONEDNN_MIN_PARAMS", 1)
    monkeypatch.setattr(ol, "onednn_pays", lambda lm: False)  # measured slower here: stays on torch
    assert ol.select_linear_kernel("auto", cpu, torch.float32, _lm()) == 0
    monkeypatch.setattr(ol, "onednn_pays", lambda lm: True)
    lm2 = _lm()
    assert ol.select_linear_kernel("auto", cpu, torch.float32, lm2) == n_linear
    monkeypatch.setenv("XOPD_ONEDNN_LINEAR", "0")
    assert ol.select_linear_kernel("auto", cpu, torch.float32, _lm()) == 0
    with pytest.raises(ConfigError, match="linear_kernel"):
        ol.select_linear_kernel("onednn", cpu, torch.float32, lm2)


def test_saved_model_loads_as_plain_linears(always, tmp_path):
    """save_pretrained of a swapped model writes the same files: it loads back as torch's nn.Linear."""
    from transformers import AutoModelForCausalLM

    lm = _lm().eval()
    ids = torch.randint(1, 50, (2, 9))
    ref = lm(input_ids=ids).logits
    ol.use_onednn_linears(lm)
    torch.testing.assert_close(lm(input_ids=ids).logits, ref, rtol=1e-4, atol=1e-5)
    lm.save_pretrained(tmp_path / "m")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert not any(isinstance(m, ol.OneDNNLinear) for m in back.modules())
    assert torch.equal(back(input_ids=ids).logits, ref)
