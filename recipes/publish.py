"""Turn a training checkpoint into a Hugging Face Hub folder in timm's format, and upload it.

    python recipes/publish.py --checkpoint runs/g4/checkpoint.pt \\
        --repo-id timm-gam/gam_resnet50_g4.unsup_market1501dev \\
        --output hub/gam_resnet50_g4.unsup_market1501dev --fp16 \\
        --data-root ../shared/data/market1501-dev --hardware "2-core CPU" --dry-run

The folder holds ``model.safetensors`` (fp32, or fp16 with ``--fp16``), ``config.json`` (timm's pretrained
cfg, with the input size the run trained at) and a ``README.md`` model card. With ``--data-root`` the card's
rank-1/5/10 and mAP are measured here, on the weights as published; without it they are the checkpoint's own
last evaluation, labelled so. Without ``--dry-run`` the folder is uploaded (needs a token and the network).
"""
import argparse

import torch

import timm_gam  # noqa: F401  (registers the GAM and CBAM models with timm)
from timm_gam.reid.embedding import RETRIEVAL_FEATURES, load_embedder
from timm_gam.release import publish, registry_mismatch, write_release_folder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='checkpoint.pt of a recipes/unsup_reid.py run')
    p.add_argument('--repo-id', required=True, help="Hub model repo, 'org/name', e.g. "
                                                    'timm-gam/gam_resnet50_g4.unsup_market1501dev')
    p.add_argument('--output', required=True, help='folder to write (hub/<model>.<tag> in this repository)')
    p.add_argument('--fp16', action='store_true', help='store the weights in fp16 (half the size)')
    p.add_argument('--data-root', help='Market-1501 layout to measure rank-1/5/10 and mAP on (query/gallery)')
    p.add_argument('--retrieval-features', choices=RETRIEVAL_FEATURES,
                   help="what the released model outputs: 'head', the run's embedding, or 'pooled', the "
                        'pooled features before it, the head left out (default: what the run evaluated)')
    p.add_argument('--hardware', help='what it trained on, for the card, e.g. "2-core CPU" or "1x H100"')
    p.add_argument('--workers', type=int, default=0, help='data loading processes while measuring')
    p.add_argument('--dry-run', action='store_true', help='write the folder only, do not upload')
    p.add_argument('--token', help='Hugging Face token (default: HF_TOKEN or the `hf auth login` one)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    loaded = load_embedder(checkpoint=args.checkpoint, retrieval_features=args.retrieval_features)
    mismatch = registry_mismatch(loaded, args.repo_id)
    if mismatch:
        print(f'[publish] warning: {mismatch}')
    folder = write_release_folder(
        loaded, args.output, args.repo_id, dtype=torch.float16 if args.fp16 else torch.float32,
        data_root=args.data_root, hardware=args.hardware, workers=args.workers)
    print(f'[publish] wrote {folder}: ' + ', '.join(sorted(p.name for p in folder.iterdir())))
    if args.dry_run:
        return folder
    try:
        url = publish(folder, args.repo_id, token=args.token)
    except RuntimeError as err:
        raise SystemExit(f'[publish] {err}') from err
    print(f'[publish] uploaded to {url}')
    return folder


if __name__ == '__main__':
    main()
