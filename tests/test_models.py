"""The registered GAM / CBAM ResNets: parameter counts, attention semantics, timm behaviour on tiny inputs.

timm's own model test-suite (tests/test_timm_suite.py) covers the rest of the timm API contract.
"""
import copy

import pytest
import timm
import torch
from timm.layers.cbam import ChannelAttn, SpatialAttn

from timm_gam.layers import GroupedAttention, GroupedChannelAttn, GroupedSpatialAttn
from timm_gam.models import GamBottleneck

GAM_MODELS = ['gam_resnet50_g2', 'gam_resnet50_g4', 'gam_resnet50_g8', 'gam_resnet50_g16']
BASELINES = ['cbam_resnet50', 'acbam_resnet50']

# parameters without the classifier (num_classes=0); docs/models.md explains the count
PARAMS_WITHOUT_CLASSIFIER = {
    'gam_resnet50_g2': 15_702_320,
    'gam_resnet50_g4': 10_533_168,
    'gam_resnet50_g8': 7_948_592,
    'gam_resnet50_g16': 6_656_304,
    'cbam_resnet50': 26_040_624,
    'acbam_resnet50': 10_455_824,
}


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_models_are_registered():
    assert set(timm.list_models('gam_*')) == set(GAM_MODELS)
    assert set(BASELINES) <= set(timm.list_models('*cbam_resnet50'))
    assert {f'{name}.unsup_market1501dev' for name in GAM_MODELS} <= set(timm.list_pretrained('gam_*'))
    assert timm.models.get_pretrained_cfg('gam_resnet50_g4').hf_hub_id == \
        'timm-gam/gam_resnet50_g4.unsup_market1501dev'


@pytest.mark.parametrize('model_name', GAM_MODELS + BASELINES)
def test_parameter_count(model_name):
    model = timm.create_model(model_name, num_classes=0, device='meta')
    assert count_params(model) == PARAMS_WITHOUT_CLASSIFIER[model_name]
    embedding = timm.create_model(model_name, num_classes=2048, device='meta')
    assert count_params(embedding) - count_params(model) == 2048 * 2048 + 2048  # a 2048-d embedding fc


def test_paper_parameter_claim():
    """Paper 4.1: 4 filter groups take the network "from 26 million to 10.5 million", a 59.6% reduction."""
    gam, cbam = PARAMS_WITHOUT_CLASSIFIER['gam_resnet50_g4'], PARAMS_WITHOUT_CLASSIFIER['cbam_resnet50']
    assert round(gam / 1e6, 1) == 10.5 and round(cbam / 1e6) == 26
    assert round(100 * (1 - gam / cbam), 1) == 59.6
    acbam = PARAMS_WITHOUT_CLASSIFIER['acbam_resnet50']
    assert abs(acbam - gam) / gam < 0.01  # A-CBAM is parameter-matched to GAM


@pytest.mark.parametrize('block_args, expected', [
    (dict(grouped_mlp=True), 8_646_960),
    (dict(grouped_spatial=True), 10_537_968),
    (dict(grouped_mlp=True, grouped_spatial=True), 8_651_760),
])
def test_attention_grouping_options(block_args, expected):
    model = timm.create_model('gam_resnet50_g4', num_classes=0, block_args=block_args, device='meta')
    assert count_params(model) == expected


@pytest.mark.parametrize('model_name, groups', [('gam_resnet50_g8', 8), ('cbam_resnet50', 1)])
def test_every_bottleneck_conv_is_grouped(model_name, groups):
    model = timm.create_model(model_name, device='meta')
    blocks = [m for m in model.modules() if isinstance(m, GamBottleneck)]
    assert len(blocks) == 16
    assert all(conv.groups == groups for b in blocks for conv in (b.conv1, b.conv2, b.conv3))
    assert model.layer4[-1].conv3.out_channels == 2048


def test_bottleneck_applies_gam_before_residual_add():
    """Paper 5.2: Bottleneck(x) = Relu(GAM(F(x)) + shortcut(x))."""
    torch.manual_seed(0)
    model = timm.create_model('gam_resnet50_g4', zero_init_last=False).eval()
    block = model.layer2[0]
    x = torch.randn(2, 256, 16, 8)
    with torch.no_grad():
        f = block.bn1(block.conv1(x)).relu()
        f = block.bn2(block.conv2(f)).relu()
        f = block.bn3(block.conv3(f))
        expected = (block.attn(f) + block.downsample(x)).relu()
        torch.testing.assert_close(block(x), expected)


def assert_same_output_and_input_grad(ours, theirs, x, their_names=None):
    """Same output, and the same gradients for the input and for every parameter (``their_names`` maps
    our parameter names to theirs where the two modules name them differently)."""
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    torch.testing.assert_close(out_ours, out_theirs)
    with torch.no_grad():  # inference pools with amax, training with indexed max: same values
        torch.testing.assert_close(ours(x), out_ours, rtol=0, atol=0)
    upstream = torch.randn_like(out_ours)
    (out_ours * upstream).sum().backward()
    (out_theirs * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad)
    grads_theirs = {name: p.grad for name, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads_theirs[(their_names or {}).get(name, name)], msg=name)


def test_single_group_attention_is_timm_cbam():
    """With one group, GAM's two halves compute what timm's CBAM ChannelAttn / SpatialAttn compute.

    Gradients included: ours max-pools with indices when training, for speed, timm uses amax; without
    ties they agree.
    """
    torch.manual_seed(0)
    x = torch.randn(2, 64, 8, 4)
    ours, theirs = GroupedChannelAttn(64), ChannelAttn(64, mlp_bias=True)
    theirs.load_state_dict(ours.state_dict())
    assert_same_output_and_input_grad(ours, theirs, x)

    ours, theirs = GroupedSpatialAttn().eval(), SpatialAttn().eval()
    theirs.conv.conv.load_state_dict(ours.conv.state_dict())
    theirs.conv.bn.load_state_dict(ours.bn.state_dict())
    assert_same_output_and_input_grad(ours, theirs, x, their_names={
        'conv.weight': 'conv.conv.weight', 'bn.weight': 'conv.bn.weight', 'bn.bias': 'conv.bn.bias'})


class PlainChannelAttn(torch.nn.Module):
    """Eq. 1-2 written out as CBAM's reference builds it: each pooled descriptor through the 1x1 convs."""

    def __init__(self, attn: GroupedChannelAttn):
        super().__init__()
        self.fc1, self.act, self.fc2 = attn.fc1, torch.nn.ReLU(), attn.fc2

    def forward(self, x):
        mlp = lambda d: self.fc2(self.act(self.fc1(d)))  # noqa: E731
        return x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))


@pytest.mark.parametrize('grouped_mlp', [False, True])
def test_channel_attention_matches_its_plain_form(grouped_mlp):
    """The MLP run once on both descriptors, as matrix products where ungrouped, is the plain convs' result,
    parameter gradients included (a channels_last input, as training feeds it)."""
    torch.manual_seed(0)
    ours = GroupedChannelAttn(64, groups=4, grouped_mlp=grouped_mlp)
    plain = PlainChannelAttn(copy.deepcopy(ours))
    x = torch.randn(3, 64, 4, 2).contiguous(memory_format=torch.channels_last)
    assert_same_output_and_input_grad(ours, plain, x)


def test_per_group_spatial_maps_stay_within_their_group():
    """grouped_spatial: group k's output equals a one-map spatial attention run on group k alone."""
    torch.manual_seed(0)
    groups, x = 4, torch.randn(2, 32, 8, 4)
    grouped = GroupedSpatialAttn(groups=groups).eval()
    out = grouped(x)
    for k, x_k in enumerate(x.chunk(groups, dim=1)):
        single = GroupedSpatialAttn().eval()
        single.conv.weight.data.copy_(grouped.conv.weight[k:k + 1])
        torch.testing.assert_close(out.chunk(groups, dim=1)[k], single(x_k))


@pytest.mark.parametrize('grouped_mlp, mixes_groups', [(False, True), (True, False)])
def test_channel_mlp_grouping_controls_cross_group_attention(grouped_mlp, mixes_groups):
    torch.manual_seed(0)
    attn = GroupedChannelAttn(64, groups=4, grouped_mlp=grouped_mlp)
    x = torch.randn(1, 64, 4, 4)
    x_changed = x.clone()
    x_changed[:, :16] += 1.  # only group 0 changes
    other_groups_changed = not torch.allclose(attn(x)[:, 16:], attn(x_changed)[:, 16:])
    assert other_groups_changed == mixes_groups


def test_grouped_attention_rejects_indivisible_widths():
    with pytest.raises(ValueError, match='not divisible by groups'):
        GroupedAttention(48, groups=5)
    with pytest.raises(ValueError, match='grouped_mlp'):
        GroupedAttention(64, groups=8, grouped_mlp=True)  # 64 / 16 = 4 reduced channels


@pytest.mark.parametrize('groups, input_size, pool_size, num_classes', [
    (2, (3, 64, 32), (2, 1), 1024), (4, (3, 128, 64), (4, 2), 0), (8, (3, 64, 32), (2, 1), 1024),
    (16, (3, 64, 32), (2, 1), 1024)])
def test_reid_pretrained_cfg_describes_the_cpu_release(groups, input_size, pool_size, num_classes):
    model = timm.create_model(f'gam_resnet50_g{groups}', device='meta')
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == input_size and cfg['pool_size'] == pool_size
    assert cfg['num_classes'] == num_classes == model.num_classes  # g4: the pooled features, no head
    assert cfg['classifier'] == 'fc' and cfg['first_conv'] == 'conv1' and cfg['crop_pct'] == 1.0
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['license'] == 'other'
    assert cfg['hf_hub_id'] == f'timm-gam/gam_resnet50_g{groups}.unsup_market1501dev'
    assert cfg['paper_ids'] and cfg['paper_name']



def test_models_without_weights_keep_the_papers_cfg():
    cfg = timm.create_model('cbam_resnet50', device='meta').pretrained_cfg
    assert cfg['input_size'] == (3, 256, 128) and cfg['pool_size'] == (8, 4) and cfg['num_classes'] == 2048

@torch.no_grad()
def test_timm_api_on_a_small_input():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 32)
    model = timm.create_model('gam_resnet50_g4', num_classes=16, drop_path_rate=0.1, global_pool='max').eval()
    assert model(x).shape == (2, 16)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 2048)
    final, intermediates = model.forward_intermediates(x, indices=2)
    assert [t.shape[1] for t in intermediates] == [1024, 2048] and final.shape == (2, 2048, 2, 1)

    model.reset_classifier(0)
    assert model(x).shape == (2, 2048) and isinstance(model.get_classifier(), torch.nn.Identity)

    features = timm.create_model('gam_resnet50_g4', features_only=True, out_indices=(1, 4))
    assert features.feature_info.channels() == [256, 2048] and features.feature_info.reduction() == [4, 32]
    assert [f.shape[-2:] for f in features(x)] == [(16, 8), (2, 1)]


@torch.no_grad()
def test_tiny_gam_resnet_for_cpu_runs():
    model = timm.create_model('test_gam_resnet').eval()
    blocks = [m for m in model.modules() if isinstance(m, GamBottleneck)]
    assert len(blocks) == 4
    assert all(b.conv2.groups == 4 and isinstance(b.attn, GroupedAttention) for b in blocks)
    assert count_params(timm.create_model('test_gam_resnet', num_classes=0)) == 288_188
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, model.pretrained_cfg['num_classes'])
    assert 'test_gam_resnet' not in timm.list_models('gam_*')  # not one of the paper's four


@pytest.mark.parametrize('model_name', ['test_gam_resnet', 'gam_resnet50_g4'])
def test_models_script_with_torchscript(model_name):
    """timm's models script with torch.jit (its test-suite checks them; deployments use it): ours too,
    the strided shortcuts and the attention's matrix products included, computing what eager computes."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=8).eval()
    scripted = torch.jit.script(model)
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), model(images))
