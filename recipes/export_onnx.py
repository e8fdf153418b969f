"""Export the L2-normalised re-ID embedding model to ONNX and check it against PyTorch with onnxruntime.

    python recipes/export_onnx.py --checkpoint runs/g4/checkpoint.pt --output exports/gam_resnet50_g4.onnx
    python recipes/export_onnx.py --pretrained gam_resnet50_g4 --output exports/gam_resnet50_g4.onnx

The graph takes ``images`` (batch, 3, H, W), normalised with ImageNet mean/std at the size the model was
trained with, with a dynamic batch size, and returns ``embeddings`` (batch, embed_dim) on the unit sphere.
The check runs both on the same random batch of a size other than the export's and prints the largest
absolute difference; it fails above ``--tolerance``.
"""
import argparse

import torch

import timm_gam  # noqa: F401  (registers the GAM and CBAM models with timm)
from timm_gam.onnx_export import export_onnx, onnx_max_abs_diff
from timm_gam.reid.embedding import load_embedder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', help='checkpoint.pt of a recipes/unsup_reid.py run')
    source.add_argument('--pretrained', metavar='MODEL', help='e.g. gam_resnet50_g4 or hf-hub:org/name')
    p.add_argument('--output', required=True, help='.onnx file to write')
    p.add_argument('--opset', type=int, default=18)
    p.add_argument('--dynamo', action='store_true', help="use torch.export's exporter (slower on CPU)")
    p.add_argument('--check-batch', type=int, default=3, help='batch size of the onnxruntime check')
    p.add_argument('--tolerance', type=float, default=1e-4, help='largest allowed absolute difference')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> float:
    args = parse_args(argv)
    loaded = load_embedder(checkpoint=args.checkpoint, pretrained=args.pretrained)
    path = export_onnx(loaded, args.output, opset=args.opset, dynamo=args.dynamo)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.check_batch, 3, *loaded.image_size, generator=generator)
    diff = onnx_max_abs_diff(loaded, path, images)
    print(f'[export_onnx] wrote {path}; onnxruntime vs PyTorch on {args.check_batch} images of '
          f'{loaded.image_size[0]}x{loaded.image_size[1]}: max abs difference {diff:.3g}')
    if diff > args.tolerance:
        raise SystemExit(f'[export_onnx] {path} differs from PyTorch by {diff:.3g}, above --tolerance '
                         f'{args.tolerance}')
    return diff


if __name__ == '__main__':
    main()
