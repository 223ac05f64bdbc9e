"""LoRA training: our lora_classifier loop against a plain PEFT loop and full fine-tuning.

One command, one run, three fresh processes (so each peak memory is its own), on the same base
model (a ViT-S/16 built from its config, random weights: speed and memory do not depend on the
values), the same crops of the sample data and the same batch size:

- ours: ``ml_assets.train.lora.train_lora`` (the kind's loop: timm's loader, loss, schedule,
  checkpoint writing off) on ``build_lora_model``;
- peft: the plain loop of PEFT's examples: ``get_peft_model`` with the same LoRA settings,
  ``torch.optim.AdamW`` on the trainable parameters, forward, cross-entropy, backward, step;
- full: the same model without LoRA, every parameter trained (full fine-tuning).

Goals: ours reaches >= 95% of peft's images per second; ours' trainable parameters and optimizer
state are <= 5% of full fine-tuning's. Peak memory is the process's CPU RSS, and CUDA's peak
allocation when a GPU is present. The first epoch warms up and is not timed.

    python benchmarks/lora.py [--images 240] [--epochs 3] [--batch 32] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RANK, ALPHA = 8, 16.0


def make_base(folder: Path) -> Path:
    """A ViT-S/16 backbone with its processor (random weights; nothing downloaded)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536
    )
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)
    return folder


def crops_of(images: int, size: int):
    from ml_assets.data.formats import read_dataset
    from ml_assets.data.sample import write_sample
    from ml_assets.data.tables import class_list
    from ml_assets.train.classifier import extract_crops

    folder = Path(tempfile.mkdtemp(prefix="lora_bench_")) / "sample"
    ds = read_dataset(write_sample(folder, images=images, seed=0, size=96))
    classes = class_list(ds)
    ids = ds.images["image_id"].tolist()
    return extract_crops(ds, ids, [c["id"] for c in classes], size=size), classes


def optimizer_values(optimizer) -> int:
    return sum(
        t.numel() for s in optimizer.state.values() for t in s.values() if hasattr(t, "numel")
    )


def plain_loop(model, crops, args, device) -> tuple[list[float], object]:
    """PEFT's example loop: AdamW on what requires grad, forward, loss, backward, step."""
    import torch

    from ml_assets.train.classifier import normalize

    x_all = normalize(torch.from_numpy(crops.images).permute(0, 3, 1, 2), device)
    y_all = torch.from_numpy(crops.labels).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    model.train()
    seconds = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(epoch))
        sync(device)
        started = time.perf_counter()
        for start in range(0, len(order), args.batch):
            batch = order[start : start + args.batch].to(device)
            logits = model(pixel_values=x_all[batch]).logits
            loss = torch.nn.functional.cross_entropy(logits, y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds, optimizer


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def child(method: str, args) -> dict:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from ml_assets.train import lora
    from ml_assets.train.device import select_device

    device = select_device(args.device)
    torch.manual_seed(0)
    crops, classes = crops_of(args.images, args.size)
    base = Path(args.base)
    config = lora.LoraClassifierConfig(
        rank=RANK,
        alpha=ALPHA,
        epochs=args.epochs,
        batch_size=args.batch,
        img_size=args.size,
        augment="none",
        amp=False,  # the plain loops run in float32 too
        warmup_epochs=0,
        lr=1e-3,
    )
    if method == "ours":
        model = lora.build_lora_model(base, classes, config)
        counts = lora.parameter_counts(model)
        captured = {}
        # The optimizer train_lora builds (timm's AdamW), to measure its state.
        hook = register_optimizer_step_post_hook(
            lambda optimizer, *_: captured.setdefault("optimizer", optimizer)
        )
        model, history, _ = lora.train_lora(model, crops, len(classes), config, device)
        hook.remove()
        seconds, optimizer = history["seconds"].tolist(), captured["optimizer"]
        trainable = counts["trainable_parameters"]
    else:
        from peft import LoraConfig, get_peft_model

        model = lora._backbone(base, classes, seed=0)
        if method == "peft":
            settings = LoraConfig(
                r=RANK,
                lora_alpha=ALPHA,
                lora_dropout=config.dropout,
                target_modules=lora.TARGET_MODULES["vit"],
                modules_to_save=[lora.HEAD],
            )
            model = get_peft_model(model, settings)
        model = model.to(device)
        if args.size != model.config.image_size:  # as ours: interpolated position embeddings
            forward = model.forward
            model.forward = lambda **kw: forward(**kw, interpolate_pos_encoding=True)
        seconds, optimizer = plain_loop(model, crops, args, device)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    timed = seconds[1:] or seconds
    result = {
        "method": method,
        "images_per_s": len(crops.labels) * len(timed) / sum(timed),
        "trainable": trainable,
        "optimizer_state": optimizer_values(optimizer),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(device),
        "images": len(crops.labels),
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=240, help="sample images (crops: ~2.5x)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs; the first is not timed")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=0, help="input side [64 on CPU, 224 on GPU]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", choices=["ours", "peft", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    import torch

    if not args.size:
        args.size = 224 if torch.cuda.is_available() and args.device != "cpu" else 64
    base = make_base(Path(tempfile.mkdtemp(prefix="lora_base_")) / "vit-s16")
    rows = {}
    for method in ("peft", "ours", "full"):
        command = [sys.executable, __file__, "--child", method, "--base", str(base)]
        command += ["--images", str(args.images), "--epochs", str(args.epochs)]
        command += ["--batch", str(args.batch), "--size", str(args.size), "--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
    ours, peft, full = rows["ours"], rows["peft"], rows["full"]
    print(
        f"LoRA training, ViT-S/16 at {args.size} px, rank {RANK}, batch {args.batch}, "
        f"{ours['images']} crops, {args.epochs - 1} timed epochs on {ours['device']}\n"
    )
    cuda = "cuda_peak_mb" in ours
    header = f"{'method':<8}{'images/s':>10}{'trainable':>12}{'optim state':>13}{'peak RSS MB':>13}"
    print(header + (f"{'CUDA peak MB':>14}" if cuda else ""))
    for name, r in rows.items():
        line = f"{name:<8}{r['images_per_s']:>10.1f}{r['trainable']:>12,}"
        line += f"{r['optimizer_state']:>13,}{r['peak_rss_mb']:>13.0f}"
        print(line + (f"{r['cuda_peak_mb']:>14.0f}" if cuda else ""))
    speed = ours["images_per_s"] / peft["images_per_s"]
    params = ours["trainable"] / full["trainable"]
    state = ours["optimizer_state"] / full["optimizer_state"]
    print(
        f"\nours / plain PEFT loop, images/s: {speed:.3f} (goal >= 0.95)\n"
        f"ours / full fine-tuning, trainable parameters: {params:.4f} (goal <= 0.05)\n"
        f"ours / full fine-tuning, optimizer state: {state:.4f} (goal <= 0.05)"
    )
    return 0 if speed >= 0.95 and params <= 0.05 and state <= 0.05 else 2


if __name__ == "__main__":
    sys.exit(main())
