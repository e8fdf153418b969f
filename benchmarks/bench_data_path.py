"""CPU time to make one training batch's two views: the ``files`` data path against the ``decoded`` one.

    python benchmarks/bench_data_path.py --data-root ../shared/data/market1501-dev [--image-size 64 32]
                                         [--batch 32] [--batches 20] [--repeats 3]

``files``: what each DataLoader worker does per batch (read and decode the JPEGs, torchvision's
transforms image by image, collate), timed here in the main process so that it is the CPU time the
worker takes from the training step's cores. ``decoded``: ``batches.DecodedBatches`` over the
training set decoded once (the one-off decode is timed separately). Both walk the same shuffled
indices; the medians of ``--repeats`` passes over ``--batches`` batches are compared, interleaved so
that load on the machine hits both alike.
"""
import argparse
import platform
import statistics
import time

import torch
from torch.utils.data import DataLoader

from timm_gam.reid.batches import DecodedBatches, SeededPerImage
from timm_gam.reid.datasets import ReidImageDataset, prepare_data
from timm_gam.reid.decoded_images import decode_images
from timm_gam.reid.transforms import TwoViews, build_eval_transform, build_train_transform


def time_batches(batches, count: int) -> float:
    start = time.perf_counter()
    for i, _ in enumerate(batches):
        if i + 1 == count:
            break
    return (time.perf_counter() - start) / count


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-root', required=True)
    p.add_argument('--image-size', type=int, nargs=2, default=(64, 32))
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--batches', type=int, default=20)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = tuple(args.image_size)
    train = prepare_data(args.data_root, splits=('train',)).train
    indices = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()

    start = time.perf_counter()
    decoded = decode_images(train, size)
    decode_s = time.perf_counter() - start

    transform = TwoViews(build_eval_transform(size), build_train_transform(size))
    files_dataset = SeededPerImage(ReidImageDataset(train, transform), seed=0, epoch=0)
    times = {'files': [], 'decoded': []}
    for repeat in range(args.repeats):
        files = DataLoader(files_dataset, batch_size=args.batch, sampler=indices, num_workers=0)
        times['files'].append(time_batches(files, args.batches))
        times['decoded'].append(time_batches(DecodedBatches(decoded, indices, args.batch, 0, repeat),
                                             args.batches))

    print(f'{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; '
          f'{len(train)} images at {size[0]}x{size[1]}, batches of {args.batch} images (two views each)')
    print(f'one-off decode of the training set: {decode_s:.1f} s, '
          f'{decoded.numel() / 2**20:.0f} MiB as uint8')
    print('| data path | ms per batch | images/s |')
    print('|---|---|---|')
    for name, values in times.items():
        median = statistics.median(values)
        print(f'| {name} | {1000 * median:.1f} | {args.batch / median:.0f} |')
    print(f'decoded is {statistics.median(times["files"]) / statistics.median(times["decoded"]):.1f}x faster')


if __name__ == '__main__':
    main()
