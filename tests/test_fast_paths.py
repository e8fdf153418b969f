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
from timm_gam.layers import GroupedAttention, StridedPointwiseConv2d, subsample_strided_pointwise

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


@pytest.mark.parametrize('shape, stride, groups, bias, layout', [
    ((2, 8, 8, 4), 2, 1, False, CHANNELS_LAST), ((3, 8, 5, 3), 2, 2, True, torch.contiguous_format),
    ((2, 6, 7, 9), (3, 2), 3, True, CHANNELS_LAST)])
def test_strided_pointwise_conv_is_the_strided_conv(shape, stride, groups, bias, layout):
    """Subsampling then a stride-1 1x1 convolution: nn.Conv2d's output and gradients, odd sizes included."""
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(shape[1], 4 * groups, 1, stride=stride, groups=groups, bias=bias).double()
    subsampled = subsample_strided_pointwise(torch.nn.Sequential(plain))[0]
    assert isinstance(subsampled, StridedPointwiseConv2d) and subsampled.weight is plain.weight
    images = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout)
    upstream = torch.randn_like(plain(images))
    results = []
    for conv in (plain, subsampled):
        conv.zero_grad(set_to_none=True)
        x = images.clone().requires_grad_()
        out = conv(x)
        (out * upstream).sum().backward()
        results.append({'output': out.detach(), 'image_grad': x.grad,
                        **{name: p.grad.clone() for name, p in conv.named_parameters()}})
    for name, expected in results[0].items():
        torch.testing.assert_close(results[1][name], expected, msg=name)
    assert subsampled.state_dict().keys() == plain.state_dict().keys()


def test_only_strided_pointwise_convs_are_replaced_and_no_random_numbers_drawn():
    others = [torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 4, 3, stride=2),
              torch.nn.Conv2d(4, 4, 1, stride=2, padding=1)]
    kept = torch.nn.Sequential(*others)
    assert list(subsample_strided_pointwise(kept)) == others
    # a model built with the replacement starts from the weights a seed gave it before
    torch.manual_seed(0)
    subsample_strided_pointwise(torch.nn.Conv2d(4, 8, 1, stride=2))
    drawn_after = torch.rand(3)
    torch.manual_seed(0)
    torch.nn.Conv2d(4, 8, 1, stride=2)
    assert torch.equal(drawn_after, torch.rand(3))
    with pytest.raises(ValueError, match='1x1 kernel, stride > 1'):
        StridedPointwiseConv2d(4, 4, 3, stride=2)


def test_gam_resnet_shortcuts_subsample_keeping_timms_names():
    model = timm.create_model('gam_resnet50_g4')
    shortcuts = [block.downsample[0] for stage in (model.layer2, model.layer3, model.layer4)
                 for block in stage if block.downsample is not None]
    assert len(shortcuts) == 3 and all(isinstance(c, StridedPointwiseConv2d) for c in shortcuts)
    assert type(model.layer1[0].downsample[0]) is torch.nn.Conv2d  # stride 1: nothing to subsample
    assert 'layer2.0.downsample.0.weight' in model.state_dict()


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


def test_the_recipe_is_timed_only_on_step_lines_no_baseline_timing_interrupted():
    # a simulated run: the first line's window holds the compile; a baseline timing interrupts the
    # window of the line after it. Kept: every other clean line, paired with the timings around it.
    interleaving = load_benchmark().Interleaving()
    timeline, timing_rates = [], iter(range(100, 200))
    interrupted = True
    for line in range(1, 12):
        timeline.append(('line', float(line), interrupted))
        interrupted = False
        if interleaving.step_line(float(line)):
            rate = float(next(timing_rates))
            interleaving.baseline_timed(rate)
            timeline.append(('timing', rate))
            interrupted = True
    expected = []
    for at, (kind, value, *was_interrupted) in enumerate(timeline):
        before = [e[1] for e in timeline[:at] if e[0] == 'timing']
        after = [e[1] for e in timeline[at + 1:] if e[0] == 'timing']
        if kind == 'line' and not was_interrupted[0] and after:
            expected.append((value, before[-1], after[0]))
    assert interleaving.pairs == expected
    assert [rate for rate, *_ in expected] == [3.0, 5.0, 7.0, 9.0, 11.0]


def load_benchmark():
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_training', BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
