"""The fast configuration of the GAM ResNets computes what the plain one computes.

channels_last is the speed-up that benchmarks/bench_training.py measured on CPU (docs/performance.md);
the trainer switches it on with ``TrainConfig.channels_last``. These tests pin that it changes nothing but
the memory layout: same outputs, same gradients, same state_dict, and no silent fall-back to NCHW inside
the attention (which would cost a layout conversion in every block).
"""
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import timm_gam  # noqa: F401  registers the models
from timm_gam.layers import GroupedAttention

BENCHMARK = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_training.py'

CHANNELS_LAST = torch.channels_last


def _forward_backward(model, images) -> dict[str, torch.Tensor]:
    """The output, the input's gradient and every parameter's gradient, by name."""
    model.zero_grad(set_to_none=True)
    images = images.clone().requires_grad_()
    out = model(images)
    (out * torch.linspace(-1, 1, out.shape[1], dtype=out.dtype)).sum().backward()
    return {'output': out.detach(), 'image_grad': images.grad,
            **{name: p.grad.clone() for name, p in model.named_parameters()}}


# g16's first stage has 4 channels per group: oneDNN's AVX2 weight gradient wants multiples of 8 there,
# and its issue 6035 reports wrong gradients for narrow channels_last groups with 2 threads
@pytest.mark.parametrize('model_name, block_args', [
    ('gam_resnet50_g4', {}), ('gam_resnet50_g4', dict(grouped_mlp=True, grouped_spatial=True)),
    ('gam_resnet50_g16', {})])
def test_channels_last_matches_nchw_forward_and_gradients(model_name, block_args):
    # Neither layout is exact in fp32 and their kernels sum in different orders (which orders depends on
    # the CPU's ISA), so each is measured against a float64 NCHW reference: channels_last may be no
    # further from it than a few times the plain layout's own rounding error.
    torch.manual_seed(0)
    plain = timm.create_model(model_name, num_classes=16, block_args=block_args).train()
    fast = timm.create_model(model_name, num_classes=16, block_args=block_args).train()
    exact = timm.create_model(model_name, num_classes=16, block_args=block_args).train().double()
    fast.load_state_dict(plain.state_dict())
    exact.load_state_dict(plain.state_dict())
    fast.to(memory_format=CHANNELS_LAST)
    images = torch.randn(4, 3, 64, 32)

    reference = _forward_backward(exact, images.double())
    fp32 = _forward_backward(plain, images)
    fast_fp32 = _forward_backward(fast, images.contiguous(memory_format=CHANNELS_LAST))

    def error(result, name):
        difference = (result[name].double() - reference[name]).abs().max().item()
        scale = reference[name].abs().max().item()
        return difference / scale if scale else difference

    for name in reference:
        fp32_error = max(error(fp32, name), 1e-6)
        assert error(fast_fp32, name) <= 8 * fp32_error, (name, error(fast_fp32, name), fp32_error)
    assert fast.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize('grouped_spatial', [False, True])
def test_attention_keeps_channels_last_layout(grouped_spatial):
    attn = GroupedAttention(64, groups=4, grouped_spatial=grouped_spatial)
    x = torch.randn(2, 64, 8, 4).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    out = attn(x)
    out.sum().backward()
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    assert x.grad.is_contiguous(memory_format=CHANNELS_LAST)


def test_benchmark_prints_ratio_flops_and_kernel_tables():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), '--models', 'resnet50', 'gam_resnet50_g16', '--sizes', '32x16',
         '--paths', 'eager-fp32', 'fast-eager', '--views', '2', '--repeats', '1', '--threads', '1',
         '--kernels', '3'], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    rows = [line.split(' | ') for line in lines if line.startswith('| gam_resnet50_g16 | ')]
    assert [row[1] for row in rows] == ['eager-fp32', 'fast-eager']
    baseline = next(line for line in lines if line.startswith('| resnet50 | eager-fp32'))
    assert '| 1.00x |' in baseline
    # FLOPs per step: g16's grouped convolutions have fewer multiply-adds than resnet50's dense ones
    flops = {line.split(' | ')[0][2:]: float(line.split(' | ')[4]) for line in lines
             if line.startswith('| resnet50 | eager') or line.startswith('| gam_resnet50_g16 | eager')}
    assert 0 < flops['gam_resnet50_g16'] < flops['resnet50']
    assert any(line.startswith('# peak: ') and 'GFLOP/s' in line for line in lines)
    # every model's convolutions tallied by oneDNN's own implementation names
    assert sum('oneDNN convolutions of one step' in line for line in lines) == 2
    assert any(line.startswith('| forward_training | ') for line in lines)
    assert any(line.startswith('| backward_weights | ') for line in lines)


@pytest.mark.parametrize('vendor, flags, mhz, bogomips, expected_gflops', [
    ('AuthenticAMD', 'fma avx2 avx512f avx512_bf16', None, '5192.24', 2 * 2.59612 * 32),  # Zen 4
    ('GenuineIntel', 'fma avx2 avx512f amx_tile', '3500.0000', '4000.00', 2 * 3.5 * 64),
    ('AuthenticAMD', 'fma avx2', '3000.0000', '4900.00', 2 * 3.0 * 32)])
def test_peak_flops_from_lscpu(vendor, flags, mhz, bogomips, expected_gflops):
    bench = load_benchmark()
    info = {'Vendor ID': vendor, 'Flags': flags, 'BogoMIPS': bogomips}
    if mhz:
        info['CPU max MHz'] = mhz
    peak, how = bench.cpu_peak_flops(info, threads=2)
    assert peak / 1e9 == pytest.approx(expected_gflops, rel=1e-4)
    assert 'FLOP/cycle' in how


def test_the_benchmark_runs_the_recipe_with_flags_it_has(tmp_path):
    # the recipe's ratio is measured on a real run of it: a flag the recipe dropped would stop that run
    from recipe_scripts import load_recipe
    recipe = load_recipe('unsup_reid')
    args = recipe.parse_args(load_benchmark().recipe_arguments('DATA', str(tmp_path), 4.0))
    config = recipe.build_config(args)
    assert (args.preset, config.data_root, config.output, config.time_budget_min) == (
        'cpu', 'DATA', str(tmp_path), 4.0)
    assert config.compile and config.data_path == 'decoded'  # the fast path, by default


def load_benchmark():
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_training', BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
