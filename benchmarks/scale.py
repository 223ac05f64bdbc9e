"""Past one machine, measured: shard streaming against the snapshot, and DDP scaling on CPU.

    .venv/bin/python benchmarks/scale.py [--images 300] [--steps 30]

(a) The classifier's training loader fed from WebDataset shards (``source: shards``: tar files
    read, images decoded and cropped as they stream) against the same loader fed from the
    snapshot (``extract_crops`` over the version's image files, then the in-memory loader), at
    1x and 4x the images; each case runs in a fresh process, which reports its images/s and
    peak memory (ru_maxrss). Goal: shards >= 90% of the snapshot's images/s; the shards' peak
    memory the same at 4x as at 1x.
(b) DDP scaling: the classifier's model (resnet10t, 32 px, batch 32 per process) trained for
    ``--steps`` steps by 1 process of one thread, then by 2 gloo processes of one thread each
    (DistributedDataParallel); images/s of all processes together. Goal: ratio >= 1.6. On a
    machine with several GPUs the same runs with NCCL, one GPU per process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMG_SIZE, BATCH = 32, 32


def measure_loader(source: str, folder: str) -> dict:
    """One training epoch's worth of batches from ``source`` (in this process)."""
    import albumentations  # noqa: F401  (imported by the loader: not part of the timing)
    import numpy as np
    import torch  # noqa: F401

    from ml_assets.data.coco import read_coco
    from ml_assets.train.classifier import ClassifierConfig, build_loader, training_inputs

    ds = read_coco(Path(folder) / "coco")
    ids = sorted(ds.categories["category_id"])
    images = ds.images["image_id"].tolist()
    config = ClassifierConfig(
        img_size=IMG_SIZE, batch_size=BATCH, augment="none", source=source, shuffle_buffer=500
    )
    inputs = {"webdataset_shards": Path(folder) / "shards"}
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (kB on Linux)
    started = time.perf_counter()
    train, _ = training_inputs(ds, images, [], ids, config, inputs)
    loader, reseed = build_loader(train, config, augment=True)
    reseed(0)
    crops = sum(len(y) for _, y in loader)
    seconds = time.perf_counter() - started
    assert crops == int(np.asarray(train.labels).size), (crops, len(train.labels))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    return {"images": len(images), "crops": crops, "seconds": seconds, "peak_mb": peak}


def in_subprocess(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_data(folder: Path, images: int) -> None:
    from ml_assets.data.coco import read_coco
    from ml_assets.data.sample import write_sample
    from ml_assets.data.shards import write_shards

    write_sample(folder / "coco", images=images, seed=0, size=96)
    write_shards(read_coco(folder / "coco"), folder / "shards", samples_per_shard=100)


def ddp_worker(rank: int, world: int, port: int, steps: int, queue) -> None:
    import torch
    import torch.distributed as dist

    from ml_assets.train.classifier import ClassifierConfig, build_model

    torch.set_num_threads(1)
    if world > 1:
        os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model(ClassifierConfig(img_size=IMG_SIZE), 4)
    network = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE)
    y = torch.randint(0, 4, (BATCH,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm up
        step()
    if world > 1:
        dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - started
    if rank == 0:
        queue.put(seconds)
    if world > 1:
        dist.destroy_process_group()


def measure_ddp(world: int, steps: int) -> float:
    """Images per second of ``world`` processes (one thread each) together."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        ddp_worker, args=(world, port, steps, queue), nprocs=world, start_method="spawn"
    )
    return world * BATCH * steps / queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images at 1x")
    parser.add_argument("--steps", type=int, default=30, help="timed DDP steps")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ml_assets_scale_") as tmp:
        for scale in (1, 4):
            folder = Path(tmp) / f"x{scale}"
            make_data(folder, args.images * scale)
            for source in ("snapshot", "shards"):
                found = in_subprocess("--loader", source, str(folder))
                rows.append({"scale": scale, "source": source, **found})
    print(f"{'data':>5} {'source':>9} {'images':>7} {'crops':>7} {'images/s':>9} {'peak MB':>8}")
    print("(peak MB: the loader's peak memory above the process's after its imports)")
    for r in rows:
        rate = r["images"] / r["seconds"]
        print(
            f"{r['scale']:>4}x {r['source']:>9} {r['images']:>7} {r['crops']:>7} "
            f"{rate:>9.0f} {r['peak_mb']:>8.0f}"
        )
    by = {(r["scale"], r["source"]): r for r in rows}
    for scale in (1, 4):
        ratio = by[scale, "snapshot"]["seconds"] / by[scale, "shards"]["seconds"]
        print(f"shards / snapshot images/s at {scale}x: {ratio:.2f} (goal >= 0.90)")
    growth = by[4, "shards"]["peak_mb"] - by[1, "shards"]["peak_mb"]
    snap_growth = by[4, "snapshot"]["peak_mb"] - by[1, "snapshot"]["peak_mb"]
    print(f"peak memory 4x - 1x: shards {growth:+.1f} MB, snapshot {snap_growth:+.1f} MB")

    one = measure_ddp(1, args.steps)
    two = measure_ddp(2, args.steps)
    print(f"\nDDP (gloo, 1 thread per process, batch {BATCH} per process, resnet10t {IMG_SIZE}px)")
    print(f"1 process:   {one:8.0f} images/s")
    print(f"2 processes: {two:8.0f} images/s")
    print(f"ratio: {two / one:.2f} (goal >= 1.6)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--loader":
        print(json.dumps(measure_loader(sys.argv[2], sys.argv[3])))
    else:
        main()
