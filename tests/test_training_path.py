"""The training step's fast path (reid/fast_path.py): chosen from what the hardware has, computing what
the plain eager fp32 step computes.
"""
import json

import pytest
import timm
import torch
from tiny_config import tiny_config

import timm_gam  # noqa: F401  registers the models
from timm_gam.reid.fast_path import compile_for_training, native_bf16, nesterov_sgd, training_autocast_dtype
from timm_gam.reid.trainer import train

CPU = torch.device('cpu')


@pytest.mark.parametrize('avx512_bf16, amx, expected', [
    (False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)])
def test_cpu_autocasts_to_bf16_only_where_it_computes_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx)
    assert native_bf16(CPU) == (expected is not None)
    assert training_autocast_dtype(True, CPU) == expected
    assert training_autocast_dtype(False, CPU) is None


def test_compile_falls_back_to_eager_without_a_compiler(monkeypatch):
    monkeypatch.setenv('CXX', 'no-such-compiler-here')
    model = torch.nn.Linear(2, 2)
    compiled, how = compile_for_training(model, CPU)
    assert compiled is model
    assert how.startswith('eager') and 'no-such-compiler-here' in how


def _step(model, images, parameters_of=None):
    """One forward and backward: the output and each gradient by the name ``parameters_of`` gives it."""
    parameters_of = parameters_of or model
    parameters_of.zero_grad(set_to_none=True)
    out = model(images)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in parameters_of.named_parameters()}


def test_compiled_step_computes_the_eager_step():
    torch.manual_seed(0)
    eager = timm.create_model('test_gam_resnet', num_classes=8).train().to(memory_format=torch.channels_last)
    twin = timm.create_model('test_gam_resnet', num_classes=8).train().to(memory_format=torch.channels_last)
    twin.load_state_dict(eager.state_dict())
    compiled, how = compile_for_training(twin, CPU)
    if how.startswith('eager'):
        pytest.skip(how)
    images = torch.randn(4, 3, 64, 32).contiguous(memory_format=torch.channels_last)
    out, grads = _step(eager, images)
    compiled_out, compiled_grads = _step(compiled, images, parameters_of=twin)
    torch.testing.assert_close(compiled_out, out, rtol=1e-4, atol=1e-5)
    for name, grad in grads.items():  # fused kernels sum in another order: each gradient at its own scale
        scale = grad.abs().max().item()
        torch.testing.assert_close(compiled_grads[name], grad, rtol=0, atol=1e-3 * scale + 1e-12, msg=name)
    # a swap at training time keeps timm's parameter names, so checkpoints load in plain timm
    assert twin.state_dict().keys() == eager.state_dict().keys()


def test_bf16_gradients_point_where_fp32_ones_do():
    torch.manual_seed(0)
    model = timm.create_model('gam_resnet50_g16', num_classes=16).train()
    model.to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 64, 32).contiguous(memory_format=torch.channels_last)
    _, fp32 = _step(model, images)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, bf16 = _step(model, images)
    # timm starts each block's last batch norm at zero, which zeroes the gradients behind it in a first step
    weights = [name for name, grad in fp32.items() if name.endswith('weight') and grad.abs().max() > 0]
    assert len(weights) > 20
    # bf16 keeps 8 bits of mantissa, and its rounding adds up through 16 blocks to the stem: the gradients
    # keep their direction (a wrong kernel's would not), not every digit
    cosines = {name: torch.nn.functional.cosine_similarity(bf16[name].flatten(), fp32[name].flatten(), dim=0)
               for name in weights}
    assert min(cosines.values()) > 0.9, cosines


@pytest.mark.parametrize('amp, logged', [(True, 'bfloat16'), (False, 'none')])
def test_run_log_names_the_training_path(tmp_path, monkeypatch, amp, logged):
    # as on a CPU with native bf16, whatever this one has: autocast then follows --amp alone
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True)
    config = tiny_config(tmp_path, model='test_convnext', stages=0, warmup_epochs=1, amp=amp)
    train(config)
    events = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    path = [e for e in events if e['event'] == 'training_path']
    assert len(path) == 1
    assert path[0]['compile'] == 'eager' and path[0]['device'] == 'cpu'
    assert path[0]['autocast'] == logged
    assert path[0]['cpu'] and path[0]['cpu_capability']
    assert path[0]['optimizer'] == 'SGD fused'


def test_fused_sgd_updates_as_the_textbook_loop():
    """The trainer's fused SGD against Nesterov momentum with weight decay written out (paper 5.2):
    g = grad + wd * w; b = mu * b + g (b = g at the first step); w -= lr * (g + mu * b)."""
    torch.manual_seed(0)
    weights = [torch.randn(37, 5), torch.randn(11)]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizer = nesterov_sgd(params, CPU, lr=0.05, momentum=0.9, weight_decay=5e-4)
    assert all(group['fused'] for group in optimizer.param_groups)
    buffers = [None, None]
    for _ in range(4):
        grads = [torch.randn_like(w) for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
            g = g + 5e-4 * w
            buffers[i] = g.clone() if buffers[i] is None else 0.9 * buffers[i] + g
            weights[i] = w - 0.05 * (g + 0.9 * buffers[i])
        for p, w in zip(params, weights, strict=True):
            torch.testing.assert_close(p.detach(), w)
