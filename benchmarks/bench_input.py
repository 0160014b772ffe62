"""Input pipeline throughput: our WebDataset stream vs torchvision ImageFolder, same images.

    python benchmarks/bench_input.py --shards shards/demo [--dataset ahsn] [--images 2000] [--workers 0]

Takes the first ``--images`` training samples of the build, writes them as individual RGB
PNG files in an ImageFolder tree (how the paper's images were kept: one file per image,
class folders), then times, in one run and one process per path (``--workers 0``: images
per second *per core*):

- ``webdataset``: serwild's evaluation pipeline (tar stream → palette PNG decode → uint8
  resize → normalise), the same stages the training stream runs after its shuffle;
- ``imagefolder``: ``torchvision.datasets.ImageFolder`` + ``ToTensor, Resize(256, 256),
  Normalize`` (the paper's preprocessing done the usual torchvision way).

Both produce (B, 3, 256, 256) float batches. Each path runs ``--repeats`` times (files warm
in the page cache for both) and the best run counts. Prints a table and the ratio; the
target is webdataset ≥ 2× imagefolder.
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
    from serwild.builder.manifest import load_manifest, select_shards

    records = select_shards(load_manifest(build), dataset, "train")
    urls, counts, total = [], [], 0
    for r in records:
        if total >= limit:
            break
        urls.append(str(build / r["path"]))
        counts.append(r["count"])
        total += r["count"]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="a build folder (manifest.json)")
    p.add_argument("--dataset", default="ahsn")
    p.add_argument("--images", type=int, default=2000, help="about this many images (whole shards)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: one core, in process)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    from serwild.trainer.data import make_eval_loader
    from serwild.trainer.transforms import MEAN, STD
    from torchvision import datasets, transforms

    torch.set_num_threads(1)  # per core: one thread in the timed process (and in each worker)
    build = Path(args.shards)
    urls, counts, total = select_urls(build, args.dataset, args.images)
    with tempfile.TemporaryDirectory(prefix="bench_imagefolder_") as tmp:
        n_files = write_imagefolder(urls, Path(tmp))
        tv = transforms.Compose([transforms.ToTensor(), transforms.Resize((256, 256), antialias=True),
                                 transforms.Normalize(MEAN, STD)])
        folder = datasets.ImageFolder(tmp, transform=tv)

        def ours():
            return make_eval_loader(urls, args.batch_size, args.workers, counts=counts)

        def theirs():
            return torch.utils.data.DataLoader(folder, batch_size=args.batch_size, num_workers=args.workers)

        rates: dict[str, list[float]] = {"webdataset": [], "imagefolder": []}
        seen = set()
        for _ in range(args.repeats):  # alternate, so background load on a shared machine hits both
            for name, make in (("webdataset", ours), ("imagefolder", theirs)):
                rate, n = one_pass(make)
                rates[name].append(rate)
                seen.add(n)
        wds_rate, tv_rate = max(rates["webdataset"]), max(rates["imagefolder"])
        png_bytes = sum(f.stat().st_size for f in Path(tmp).rglob("*.png"))
    tar_bytes = sum(Path(u).stat().st_size for u in urls)
    assert seen == {n_files} and n_files == total, (seen, n_files, total)
    cores = max(1, args.workers)
    print(f"{total} images from {len(urls)} shards ({tar_bytes / total / 1024:.0f} KiB/image in tars, "
          f"{png_bytes / total / 1024:.0f} KiB/image as RGB PNG files); batch {args.batch_size}, "
          f"workers {args.workers}, best of {args.repeats}")
    print(f"{'path':<14}{'images/s':>10}{'per core':>10}")
    print(f"{'webdataset':<14}{wds_rate:>10.0f}{wds_rate / cores:>10.0f}")
    print(f"{'imagefolder':<14}{tv_rate:>10.0f}{tv_rate / cores:>10.0f}")
    print(f"ratio webdataset / imagefolder: {wds_rate / tv_rate:.2f}x (target >= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
