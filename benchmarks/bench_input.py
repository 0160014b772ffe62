"""Input pipeline throughput: our WebDataset stream vs torchvision ImageFolder, same images.

    python benchmarks/bench_input.py --shards shards/demo [--dataset ahsn] [--images 2000] [--workers 0]

Takes the first ``--images`` training samples of the build, writes them as individual RGB
PNG files in an ImageFolder tree (how the paper's images were kept: one file per image,
class folders), then times, in one run and one process per path (``--workers 0``: images
per second *per core*):

- ``webdataset``: serwild's evaluation pipeline (tar stream → palette PNG decode → uint8
  resize → normalise), the same stages the training stream runs after its shuffle;
  ``webdataset-uint8`` stops before the normalisation (the GPU path normalises on the device);
- ``imagefolder``: ``torchvision.datasets.ImageFolder`` with the paper's preprocessing done
  the usual torchvision ways: ``Resize(256, 256)`` on the PIL image → ``ToTensor`` →
  ``Normalize``, and (``imagefolder-tensor``) ``ToTensor`` → ``Resize`` → ``Normalize``.

All produce (B, 3, 256, 256) batches. Each path runs ``--repeats`` times (files warm
in the page cache for both) and the best run counts. Prints a table and the ratio against the
faster ImageFolder variant; the target is ≥ 2×.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image


def select_urls(build: Path, dataset: str, limit: int) -> tuple[list[str], list[int], int]:
    from serwild.data.manifest import load_manifest

    records = load_manifest(build).select(dataset, "train")
    urls, counts, total = [], [], 0
    for r in records:
        if total >= limit:
            break
        urls.append(str(build / r.path))
        counts.append(r.count)
        total += r.count
    return urls, counts, total


def write_imagefolder(urls: list[str], root: Path) -> int:
    """Every sample of ``urls`` as ``root/<label>/<key>.png`` (RGB PNG, as savefig would write)."""
    n = 0
    for png, meta, key in wds.WebDataset(urls, shardshuffle=False).to_tuple("png", "json", "__key__"):
        label = json.loads(meta)["label"]
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png)).convert("RGB").save(root / label / f"{key}.png")
        n += 1
    return n


def one_pass(make) -> tuple[float, int]:
    """images/s and image count of one full pass over the loader ``make()`` returns."""
    start, n = time.perf_counter(), 0
    for batch in make():
        n += batch[0].shape[0]
    return n / (time.perf_counter() - start), n


def _folder_loader(root: str, transform: object, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    from torchvision import datasets

    folder = datasets.ImageFolder(root, transform=transform)
    return torch.utils.data.DataLoader(folder, batch_size=args.batch_size, num_workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="a build folder (manifest.json)")
    p.add_argument("--dataset", default="ahsn")
    p.add_argument("--images", type=int, default=2000, help="about this many images (whole shards)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: one core, in process)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    from torchvision import transforms

    from serwild.data.loaders import make_eval_loader
    from serwild.data.manifest import load_manifest
    from serwild.data.transforms import MEAN, STD

    torch.set_num_threads(1)  # per core: one thread in the timed process (and in each worker)
    build = Path(args.shards)
    urls, counts, total = select_urls(build, args.dataset, args.images)
    classes = load_manifest(build).classes(args.dataset)
    with tempfile.TemporaryDirectory(prefix="bench_imagefolder_") as tmp:
        n_files = write_imagefolder(urls, Path(tmp))
        # The usual torchvision orders: resize the PIL image then convert (cheaper), or convert first.
        pil_first = transforms.Compose([transforms.Resize((256, 256)), transforms.ToTensor(),
                                        transforms.Normalize(MEAN, STD)])
        tensor_first = transforms.Compose([transforms.ToTensor(), transforms.Resize((256, 256), antialias=True),
                                           transforms.Normalize(MEAN, STD)])
        paths = {
            "webdataset": lambda: make_eval_loader(urls, args.batch_size, args.workers, counts=counts,
                                                   classes=classes),
            "webdataset-uint8": lambda: make_eval_loader(urls, args.batch_size, args.workers, counts=counts,
                                                         classes=classes, as_uint8=True),
            "imagefolder": lambda: _folder_loader(tmp, pil_first, args),
            "imagefolder-tensor": lambda: _folder_loader(tmp, tensor_first, args),
        }
        rates: dict[str, list[float]] = {name: [] for name in paths}
        seen = set()
        for _ in range(args.repeats):  # alternate, so background load on a shared machine hits all alike
            for name, make in paths.items():
                rate, n = one_pass(make)
                rates[name].append(rate)
                seen.add(n)
        png_bytes = sum(f.stat().st_size for f in Path(tmp).rglob("*.png"))
    tar_bytes = sum(Path(u).stat().st_size for u in urls)
    assert seen == {n_files} and n_files == total, (seen, n_files, total)
    cores = max(1, args.workers)
    print(f"{total} images from {len(urls)} shards ({tar_bytes / total / 1024:.0f} KiB/image in tars, "
          f"{png_bytes / total / 1024:.0f} KiB/image as RGB PNG files); batch {args.batch_size}, "
          f"workers {args.workers}, best of {args.repeats}")
    best = {name: max(r) for name, r in rates.items()}
    notes = {"webdataset": "tar → palette PNG → uint8 resize → normalise (float out)",
             "webdataset-uint8": "same, uint8 out (the GPU path: normalised on the device)",
             "imagefolder": "RGB PNG files, PIL Resize → ToTensor → Normalize",
             "imagefolder-tensor": "RGB PNG files, ToTensor → Resize → Normalize"}
    print(f"{'path':<20}{'images/s':>10}{'per core':>10}  what")
    for name, rate in best.items():
        print(f"{name:<20}{rate:>10.0f}{rate / cores:>10.0f}  {notes[name]}")
    baseline = max(best["imagefolder"], best["imagefolder-tensor"])
    print(f"ratio webdataset / fastest imagefolder: {best['webdataset'] / baseline:.2f}x (target >= 2x); "
          f"uint8 out: {best['webdataset-uint8'] / baseline:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
