"""Train a PQGAN: ``pqgan-train`` / ``python -m pqgan.train`` (single process or ``torchrun`` DDP).

    pqgan-train --config tiny_f8_pq --out runs/tiny --steps 3000
    pqgan-train --config f8_k512_d128_s64 --data /path/to/images --out runs/f8 --set train.batch_size=16
    torchrun --nproc_per_node 8 -m pqgan.train --config f8_k512_d128_s64 --data DIR --out runs/f8
    pqgan-train --out runs/f8 --resume          # continue from runs/f8/checkpoints (its saved config)
    pqgan-train --out runs/f8 --fresh           # start over in a run dir with checkpoints (old run moved aside)

Each step makes one generator update (reconstruction + perceptual + GAN + quantiser loss, Adam) and one
discriminator update (second Adam). Under DDP (env vars from torchrun; gloo on CPU, nccl on GPU) the autoencoder is
wrapped in DistributedDataParallel without buffer broadcasting: the ProductQuantizer all-reduces its EMA statistics,
so every rank computes the same codebooks itself; the discriminator's gradients are all-reduced by hand.

Outputs in --out: config.yaml, metrics.jsonl (one JSON record per log step, incl. quantiser perplexity/usage),
samples/step_XXXXXXXX.png (per row: input | reconstruction), checkpoints/ (see ``pqgan.checkpoint``).
``--resume`` restores weights, both optimizers, the step and every RNG state, and skips the batches already seen in
the current epoch; data order and augmentation are functions of (seed, epoch, position), so a resumed run reproduces
an uninterrupted one exactly. It uses ``last.json``'s checkpoint, or -- when that is missing, unreadable or names a
damaged checkpoint -- the newest complete one (and says so); it never starts over in a run directory that holds
checkpoints, and neither does a run without ``--resume``: that needs ``--fresh``, which first moves the old run's
files into OUT/previous-<UTC time>/. Unreadable images are skipped and counted (``skipped_files`` in metrics.jsonl).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from . import checkpoint as ckpt
from .config import Config, apply_overrides, load_config
from .data import TooManyBadImages

DEFAULT_CONFIG = "tiny_f8_pq"


# --- distributed setup ---------------------------------------------------------------------------------------------

class DistInfo:
    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, owns_group: bool = False):
        self.rank, self.world_size, self.local_rank, self.owns_group = rank, world_size, local_rank, owns_group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, MASTER_ADDR, ...) if any."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, owns_group=True)


def _allreduce_grads(module: torch.nn.Module, world_size: int) -> None:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP that syncs buffers once at construction but never per forward (the quantiser keeps them in step)."""
    import inspect
    ddp = torch.nn.parallel.DistributedDataParallel
    kwargs = {"device_ids": [device.index] if device.type == "cuda" else None}
    if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:  # older torch
        kwargs["broadcast_buffers"] = False
    return ddp(model, **kwargs)


# --- data ----------------------------------------------------------------------------------------------------------

def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


class SeededItems(torch.utils.data.Dataset):
    """Wraps a map-style dataset: item ``(key, index)`` is ``dataset[index]`` drawn under torch seed ``key``, so
    random augmentation depends only on the key, not on worker assignment or on what was drawn before."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        key, index = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            return self.dataset[index]


class ResumableBatches:
    """Batches of a DistributedSampler, epoch after epoch, starting at any global step (skipping by index only).

    Every epoch's order is fixed by (seed, epoch), and each sample's augmentation by (seed, epoch, rank, position),
    so the batch of step t is the same however the run got there (with or without loader workers).
    """

    def __init__(self, dataset, batch_size: int, info: DistInfo, seed: int, num_workers: int, pin_memory: bool):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.pin_memory, self.rank = num_workers, pin_memory, info.rank
        self.sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                          seed=seed, drop_last=len(dataset) >= info.world_size)
        per_rank = len(self.sampler)
        self.drop_last = per_rank >= batch_size
        self.batches_per_epoch = per_rank // batch_size if self.drop_last else 1

    def __call__(self, start_step: int) -> Iterator[torch.Tensor]:
        epoch, skip = divmod(start_step, self.batches_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(iter(self.sampler))
            base = ((self.seed * 1_000_003 + epoch) * 1_009 + self.rank) * 10_000_019
            keyed = [((base + pos) % (2 ** 63), index) for pos, index in enumerate(order)]
            batches = [keyed[i:i + self.batch_size] for i in range(0, len(keyed), self.batch_size)]
            if self.drop_last:
                batches = [b for b in batches if len(b) == self.batch_size]
            batches = batches[skip:self.batches_per_epoch]
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            loader = DataLoader(SeededItems(self.dataset), batch_sampler=batches, num_workers=self.num_workers,
                                pin_memory=self.pin_memory, generator=generator, worker_init_fn=_seed_worker)
            for batch in loader:
                yield batch[0] if isinstance(batch, (list, tuple)) else batch
            epoch, skip = epoch + 1, 0


def build_train_dataset(cfg: Config, max_bad_fraction: Optional[float] = None):
    """The training split; unreadable files are skipped and counted, ``TooManyBadImages`` past
    ``max_bad_fraction`` (default ``pqgan.data.MAX_BAD_FRACTION``)."""
    from .data import MAX_BAD_FRACTION, build_dataset
    r = cfg.train.resolution
    return build_dataset(root=cfg.train.data_root, resolution=r, split="train",
                         val_fraction=cfg.train.val_fraction,
                         resize_to=(r, r) if cfg.train.preprocess == "resize" else None,
                         max_bad_fraction=MAX_BAD_FRACTION if max_bad_fraction is None else max_bad_fraction)


# --- helpers -------------------------------------------------------------------------------------------------------

def _float(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean()) if v.numel() else None
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def save_sample_grid(path: str, inputs: torch.Tensor, recons: torch.Tensor, max_images: int = 8) -> None:
    """PNG with one row per image: input | reconstruction (images in [-1, 1])."""
    from torchvision.utils import save_image

    n = min(max_images, inputs.shape[0])
    pairs = torch.stack([inputs[:n], recons[:n]], dim=1).flatten(0, 1)
    pairs = ((pairs.detach().float().cpu() + 1) / 2).clamp(0, 1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    save_image(pairs, tmp, nrow=2, padding=2, pad_value=1.0)
    os.replace(tmp, path)


def _truncate_log(path: str, last_step: int) -> None:
    """Drop records past ``last_step`` (written by a run that was killed after its last checkpoint)."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # a torn last line, or bytes that are no log record at all
            step = record.get("step", 0) if isinstance(record, dict) else None
            if isinstance(step, int) and step <= last_step:
                kept.append(raw if raw.endswith(b"\n") else raw + b"\n")
    ckpt.atomic_write_bytes(path, b"".join(kept))


def _say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"pqgan-train: {message}", file=sys.stderr)


def set_aside_previous_run(out: str) -> Optional[str]:
    """Move OUT's checkpoints/, metrics.jsonl, config.yaml and samples/ into OUT/previous-<UTC time>/ (nothing is
    deleted). Returns that folder, or None when there was nothing to move."""
    names = [n for n in ("checkpoints", "metrics.jsonl", "config.yaml", "samples")
             if os.path.lexists(os.path.join(out, n))]
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = os.path.join(out, f"previous-{stamp}")
    n = 1
    while os.path.lexists(dest):
        dest, n = os.path.join(out, f"previous-{stamp}-{n}"), n + 1
    os.makedirs(dest)
    for name in names:
        os.replace(os.path.join(out, name), os.path.join(dest, name))
    return dest


def resolve_config(args: argparse.Namespace) -> tuple[Config, Optional[str]]:
    """The run's Config (the checkpoint's when resuming) with --set/--steps/--data applied, and the checkpoint.

    ValueError (changing nothing on disk) for --resume in a run directory whose checkpoints are all damaged, and
    for a run without --resume or --fresh in one that holds checkpoints.
    """
    resume_from = None
    ckpt_root = os.path.join(args.out, "checkpoints")
    fresh = getattr(args, "fresh", False)
    if args.resume and fresh:
        raise ValueError("--resume and --fresh contradict each other: choose one")
    if args.resume:
        resume_from, notes = ckpt.find_checkpoint(ckpt_root)
        if resume_from is None and ckpt.holds_checkpoints(ckpt_root):
            raise ValueError(f"{ckpt_root} holds checkpoints but none is complete ({'; '.join(notes)}); nothing "
                             f"was changed. Repair one, or start over with --fresh instead of --resume (the old "
                             f"files are moved to {args.out}/previous-<time>, not deleted)")
        for note in notes:
            _say(note)
        if resume_from is None:
            _say(f"no checkpoint in {ckpt_root}, starting from scratch")
    elif ckpt.holds_checkpoints(ckpt_root) and not fresh:
        newest = (ckpt.step_dirs(ckpt_root) or [ckpt.LAST])[0]
        raise ValueError(f"{ckpt_root} already holds checkpoints (newest: {newest}); pass --resume to continue "
                         f"that run, or --fresh to start over (the old files are moved to "
                         f"{args.out}/previous-<time>, not deleted)")
    if resume_from is not None:
        cfg = Config.from_dict(ckpt.read_json(os.path.join(resume_from, ckpt.CONFIG_FILE)))
    else:
        cfg = load_config(args.config or DEFAULT_CONFIG)
    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = apply_overrides(cfg, overrides)
    if args.data is not None:
        cfg.train.data_root = args.data
    return cfg, resume_from


# --- training ------------------------------------------------------------------------------------------------------

def train(cfg: Config, out: str, *, resume_from: Optional[str] = None, device: Optional[str] = None,
          progress: bool = True, keep_checkpoints: bool = False, dataset=None) -> Dict[str, Any]:
    """Train to ``cfg.train.steps``. Returns {"model", "loss", "step", "info"} (unwrapped modules)."""
    from .codebook_health import CollapseMonitor
    from .losses import PQGANLoss
    from .model import PQGAN

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = setup_distributed(device.type)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    tc = cfg.train

    torch.manual_seed(tc.seed)                           # identical initial weights on every rank
    np.random.seed(tc.seed)
    random.seed(tc.seed)
    model = PQGAN(cfg.model).to(device)
    loss_fn = PQGANLoss(cfg.loss).to(device)
    disc = loss_fn.discriminator
    lr = tc.learning_rate
    opt_g = torch.optim.Adam(model.parameters(), lr=lr, betas=tc.betas, weight_decay=tc.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=tc.betas, weight_decay=tc.weight_decay)
    optimizers = {"generator": opt_g, "discriminator": opt_d}

    start_step = 0
    if resume_from is not None:
        loaded = ckpt.load_checkpoint(resume_from, model=model, discriminator=disc, optimizers=optimizers,
                                      map_location=device)
        start_step = int(loaded["state"]["step"])
        rng = loaded["state"]["rng"]
        ckpt.restore_rng_state(rng[info.rank] if info.rank < len(rng) else rng[0])
    else:                                                # per-rank streams for augmentation, dead-code picks
        torch.manual_seed(tc.seed + info.rank)
        np.random.seed(tc.seed + info.rank)
        random.seed(tc.seed + info.rank)

    net = model
    if info.enabled:
        net = _wrap_ddp(model, device)

    if dataset is None:
        dataset = build_train_dataset(cfg)
    batches = ResumableBatches(dataset, tc.batch_size, info, tc.seed, tc.num_workers,
                               pin_memory=device.type == "cuda")

    ckpt_root = os.path.join(out, "checkpoints")
    log_path = os.path.join(out, "metrics.jsonl")
    if info.is_main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())
        if resume_from is not None:
            _truncate_log(log_path, start_step)
        else:
            open(log_path, "w").close()

    def save(step: int) -> None:
        rng = [ckpt.capture_rng_state()]
        if info.enabled:
            gathered: List[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if info.is_main:
            ckpt.save_checkpoint(ckpt_root, step=step, model=model, discriminator=disc, optimizers=optimizers,
                                 config=cfg.to_dict(), rng_states=rng, keep=keep_checkpoints,
                                 state={"epoch": step // batches.batches_per_epoch, "world_size": info.world_size})
        if info.enabled:
            dist.barrier()

    use_bf16 = tc.bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm
        bar = tqdm(total=tc.steps, initial=start_step, desc="train", dynamic_ncols=True)

    step = start_step
    last_saved = start_step if resume_from is not None else -1
    t_last, steps_since = time.time(), 0
    data = batches(start_step)
    collapse = CollapseMonitor(cfg.model.codebook_size)
    # loss.on_normalized: every loss term sees the networks' normalised images (the official recipe)
    loss_space = model.to_network if cfg.loss.on_normalized else (lambda x: x)
    model.train()
    loss_fn.train()
    while step < tc.steps:
        try:
            img = next(data).to(device, non_blocking=True)
        except TooManyBadImages:                         # keep the work done so far, then stop
            if not info.enabled and step > 0 and last_saved != step:
                save(step)
            raise
        # generator update
        disc.requires_grad_(False)
        with autocast():
            recon, q = net(img)
            g_loss, g_logs = loss_fn.generator_loss(loss_space(img), loss_space(recon), q.loss, step,
                                                    model.last_layer)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        disc.requires_grad_(True)
        # discriminator update
        with autocast():
            d_loss, d_logs = loss_fn.discriminator_loss(loss_space(img), loss_space(recon.detach()), step)
        opt_d.zero_grad(set_to_none=True)
        if d_loss.requires_grad:
            d_loss.backward()
            if info.enabled:
                _allreduce_grads(disc, info.world_size)
            opt_d.step()
        step += 1
        steps_since += 1
        if bar is not None:
            bar.update(1)

        if info.is_main and (step % max(tc.log_every, 1) == 0 or step == tc.steps):
            now = time.time()
            record = {"step": step, "epoch": (step - 1) // batches.batches_per_epoch, "lr": lr,
                      "loss/generator": _float(g_loss), "loss/discriminator": _float(d_loss)}
            record.update({f"gen/{k}": _float(v) for k, v in g_logs.items()})
            record.update({f"disc/{k}": _float(v) for k, v in d_logs.items()})
            record.update({"quant/loss": _float(q.loss),
                           "quant/perplexity_mean": _float(q.stats.perplexity),
                           "quant/usage_mean": _float(q.stats.usage),
                           "quant/dead_codes_mean": _float(q.stats.dead_codes),
                           "time/sec_per_step": (now - t_last) / steps_since,
                           "time/images_per_sec": steps_since * img.shape[0] * info.world_size / (now - t_last)})
            t_last, steps_since = now, 0
            if hasattr(dataset, "skipped_files"):
                record["skipped_files"] = dataset.skipped_files
            warning = collapse.update(q.stats.perplexity, q.stats.usage, q.indices.numel() // q.indices.shape[-1])
            record["quant/perplexity_min"] = _float(q.stats.perplexity.min())
            record["quant/collapsed"] = collapse.collapsed
            if warning:
                print(f"pqgan-train: step {step}: {warning}", file=sys.stderr)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss/generator']:.4f}",
                                ppl=f"{record['quant/perplexity_mean']:.1f}")
        if info.is_main and (step % max(tc.sample_every, 1) == 0 or step == tc.steps):
            save_sample_grid(os.path.join(out, "samples", f"step_{step:08d}.png"), img, recon)
        if step % max(tc.ckpt_every, 1) == 0 or step == tc.steps:
            save(step)
            last_saved = step
    if last_saved != step:                               # e.g. resumed at or past train.steps
        save(step)
    if bar is not None:
        bar.close()
    return {"model": model, "loss": loss_fn, "step": step, "info": info}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pqgan-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help=f"config name in pqgan/configs or a YAML path (default {DEFAULT_CONFIG}; ignored with "
                        "--resume when a checkpoint exists: its saved config is used)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.codebook_size=256 (repeatable)")
    p.add_argument("--data", default=None, help="image folder (default: train.data_root, else the built-in photos)")
    p.add_argument("--out", required=True, help="run directory (config, metrics.jsonl, samples, checkpoints)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints (last.json's checkpoint, else the newest complete one); "
                        "starts from scratch only when OUT holds no checkpoint at all")
    p.add_argument("--max-bad-fraction", type=float, default=None, metavar="F",
                   help="stop when more than this fraction of the image files cannot be read (default 0.01); "
                        "fewer are skipped with a warning each and counted as skipped_files")
    p.add_argument("--fresh", action="store_true",
                   help="start from step 0 although OUT holds checkpoints: the old run's files are first moved to "
                        "OUT/previous-<UTC time>/ (nothing is deleted)")
    p.add_argument("--steps", type=int, default=None, help="total training steps (overrides train.steps)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every numbered checkpoint, not only the last")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Parse ``argv`` and train; returns ``train``'s result (for tests and scripts)."""
    args = build_parser().parse_args(argv)
    try:
        cfg, resume_from = resolve_config(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise SystemExit(f"pqgan-train: {e}")
    if args.fresh and int(os.environ.get("RANK", "0")) == 0:
        moved = set_aside_previous_run(args.out)
        if moved is not None:
            _say(f"--fresh: moved the previous run's files to {moved}")
    try:
        dataset = build_train_dataset(cfg, args.max_bad_fraction)
        result = train(cfg, args.out, resume_from=resume_from, device=args.device, progress=not args.no_progress,
                       keep_checkpoints=args.keep_checkpoints, dataset=dataset)
    except TooManyBadImages as e:
        raise SystemExit(f"pqgan-train: {e}")
    info = result["info"]
    if info.owns_group:
        dist.destroy_process_group()
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``pqgan-train``."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
