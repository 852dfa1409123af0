"""Latent diffusion on PQ latents: a tiny end-to-end demo, and the denoiser's cost at F8 vs F16 latents.

    python -m benchmarks.demos.latent_diffusion_demo                 # demo + cost benchmark (~10 min on 2 CPU cores)
    python -m benchmarks.demos.latent_diffusion_demo --stage demo --checkpoint RUN_DIR   # a trained PQGAN as (a)
    python -m benchmarks.demos.latent_diffusion_demo --stage bench   # only (c), a few minutes

Demo (``--stage demo``):
  (a) trains a tiny PQGAN (``--config``, default tiny_f8_pq: 64px -> 8x8x16 latents) for ``--ae-minutes`` with
      L1 + MSE + the quantiser loss on random 32px crops (no GAN / perceptual term: CPU minutes), or loads
      ``--checkpoint``; the model is saved as a pqgan checkpoint (``--ckpt-dir``, default OUT/pqgan; reusable with
      --checkpoint);
  (b) fits the latent scaling factor, encodes random crops of the training photos (``--data``, default the folder
      named by $PQGAN_DATA, else scikit-image's bundled photos) once, trains a small diffusers ``UNet2DModel``
      (epsilon prediction, ``DDPMScheduler``) on the scaled PQ latents for ``--diff-minutes``, samples with DDIM,
      decodes through ``DiffusersPQAutoencoder`` (re-quantised) and writes OUT/samples.png (rows: photos, their
      reconstructions, samples) and OUT/demo.json (losses, PSNR, how far samples lie from valid codes).
Cost (``--stage bench``): one fixed UNet2DModel on random latents shaped like the paper models' latents
  (f8_k512_d128_s64 / f16_k128_d128_s64: D = 128) for F8 and F16 at the same image size, and F16 at twice the size:
  median wall time of a training step (forward + backward) and of a sampling step (forward, no grad), round-robin
  over the cases after warm-up, forward FLOPs (torch.utils.flop_counter) and the peak extra memory of one training
  step and one sampling step (CUDA: max_memory_allocated; CPU: torch profiler allocation events; parameter
  gradients are allocated beforehand, so the training peak is activations + temporaries). Writes OUT/bench.json and
  prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pqgan import PQGAN
from pqgan.checkpoint import load_pretrained, save_checkpoint
from pqgan.config import load_config
from pqgan.data import PHOTOS_ENV, build_dataset, photo_dir
from pqgan.diffusers_adapter import DiffusersPQAutoencoder

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- (a) the autoencoder -------------------------------------------------------------------------------------------

def random_batches(dataset, batch_size: int, generator: torch.Generator):
    """Endless batches of random items (each item re-cropped / flipped by the dataset)."""
    while True:
        idx = torch.randint(len(dataset), (batch_size,), generator=generator).tolist()
        yield torch.stack([dataset[i] for i in idx])


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random size x size window per image of (B, C, H, W) (the whole image when size >= H, W)."""
    H, W = x.shape[-2:]
    if size >= H and size >= W:
        return x
    tops = torch.randint(H - size + 1, (x.shape[0],), generator=generator).tolist()
    lefts = torch.randint(W - size + 1, (x.shape[0],), generator=generator).tolist()
    return torch.stack([img[:, t:t + size, l:l + size] for img, t, l in zip(x, tops, lefts)])


def train_autoencoder(config: str, dataset, minutes: float, max_steps: int, batch_size: int, lr: float,
                      device: str, seed: int, crop: int = 0) -> tuple[PQGAN, dict]:
    """L1 + MSE + quantiser loss, Adam; on random ``crop``-pixel windows when crop > 0 (the model is convolutional:
    small crops buy more steps per CPU second)."""
    torch.manual_seed(seed)
    cfg = load_config(config)
    model = PQGAN(cfg.model).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(seed)
    batches = random_batches(dataset, batch_size, gen)
    t0, step, losses = time.perf_counter(), 0, []
    while step < max_steps and time.perf_counter() - t0 < minutes * 60:
        x = next(batches)
        x = (random_crop(x, crop, gen) if crop else x).to(device)
        recon, q = model(x)
        rec = (recon - x).abs().mean() + F.mse_loss(recon, x)
        loss = rec + q.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(rec.detach()))
        step += 1
        if step % 50 == 0:
            log(f"ae step {step}: recon loss {statistics.mean(losses[-50:]):.4f}, "
                f"usage {float(q.stats.usage.mean()):.2f}")
    return model.eval(), {"config": config, "steps": step, "batch_size": batch_size, "crop": crop or None,
                          "seconds": round(time.perf_counter() - t0, 1),
                          "final_recon_loss": statistics.mean(losses[-50:]) if losses else None}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1], computed on [0, 1]."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


# --- (b) the latent diffusion model --------------------------------------------------------------------------------

def small_unet(channels: int, side: int):
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=side, in_channels=channels, out_channels=channels,
                       block_out_channels=(64, 128), layers_per_block=2,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16)


@torch.no_grad()
def encode_dataset(model: PQGAN, dataset, n: int, batch_size: int, device: str, seed: int) -> torch.Tensor:
    """n scaled latents of random crops (B, D, h, w)."""
    torch.manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        x = torch.stack([dataset[i % len(dataset)] for i in range(start, min(n, start + batch_size))])
        out.append(model.encode_latents(x.to(device)).cpu())
    return torch.cat(out)


def train_denoiser(latents: torch.Tensor, minutes: float, max_steps: int, batch_size: int, lr: float,
                   device: str, seed: int):
    from diffusers import DDPMScheduler
    torch.manual_seed(seed)
    unet = small_unet(latents.shape[1], latents.shape[-1]).to(device).train()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0, step, losses = time.perf_counter(), 0, []
    while step < max_steps and time.perf_counter() - t0 < minutes * 60:
        idx = torch.randint(len(latents), (batch_size,), generator=g)
        z = latents[idx].to(device)
        noise = torch.randn(z.shape, generator=g).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g).to(device)
        loss = F.mse_loss(unet(sched.add_noise(z, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 100 == 0:
            log(f"diffusion step {step}: loss {statistics.mean(losses[-100:]):.4f}")
    info = {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "batch_size": batch_size,
            "params": sum(p.numel() for p in unet.parameters()),
            "final_loss": statistics.mean(losses[-100:]) if losses else None}
    return unet.eval(), sched, info


@torch.no_grad()
def sample(unet, train_sched, ae: DiffusersPQAutoencoder, n: int, shape: tuple, steps: int, seed: int):
    """DDIM samples: (scaled latents (n, D, h, w), images (n, C, H, W))."""
    from diffusers import DDIMScheduler
    sched = DDIMScheduler.from_config(train_sched.config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n,) + tuple(shape), generator=g).to(ae.device)
    for t in sched.timesteps:
        z = sched.step(unet(z, t).sample, t, z).prev_sample
    return z, ae.decode(z / ae.config.scaling_factor).sample


def save_grid(path: Path, rows: list[torch.Tensor]) -> None:
    """Rows of (n, C, H, W) images in [-1, 1] -> one PNG (2 px gaps)."""
    n = max(r.shape[0] for r in rows)
    H, W = rows[0].shape[-2:]
    gap = 2
    canvas = np.full((len(rows) * (H + gap) + gap, n * (W + gap) + gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        arr = ((row.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for j, img in enumerate(arr):
            y, x = gap + i * (H + gap), gap + j * (W + gap)
            canvas[y:y + H, x:x + W] = img
    Image.fromarray(canvas).save(path)


def run_demo(args) -> dict:
    device = args.device
    data = str(args.data) if args.data else None
    train_ds = build_dataset(data, args.resolution, split="train")
    val_ds = build_dataset(data, args.resolution, split="val")
    log(f"data: {data or 'scikit-image photos'}: {len(train_ds)} train / {len(val_ds)} val images at "
        f"{args.resolution}px")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        model, ae_info = load_pretrained(args.checkpoint, map_location=device), {"checkpoint": args.checkpoint}
    else:
        model, ae_info = train_autoencoder(args.config, train_ds, args.ae_minutes, args.ae_steps, args.ae_batch,
                                           args.ae_lr, device, args.seed, args.ae_crop)
    val = torch.stack([val_ds[i] for i in range(min(len(val_ds), 16))]).to(device)
    with torch.no_grad():
        ae_info["val_psnr_db"] = psnr(model(val)[0], val)
    log(f"autoencoder: {ae_info}")
    factor = model.fit_scaling_factor(torch.stack([train_ds[i] for i in range(min(len(train_ds), 64))]).to(device))
    log(f"scaling factor {factor:.4f}")
    if not args.checkpoint:
        ckpt = Path(args.ckpt_dir) if args.ckpt_dir else out / "pqgan"
        save_checkpoint(str(ckpt / "checkpoints"), step=ae_info["steps"], model=model,
                        config=load_config(args.config).to_dict())
        ae_info["saved_to"] = str(ckpt)
    latents = encode_dataset(model, train_ds, args.num_latents, 32, device, args.seed)
    log(f"latents {tuple(latents.shape)}: mean {float(latents.mean()):+.3f} std {float(latents.std()):.3f}")
    unet, sched, diff_info = train_denoiser(latents, args.diff_minutes, args.diff_steps, args.diff_batch,
                                            args.diff_lr, device, args.seed)
    log(f"denoiser: {diff_info}")
    ae = DiffusersPQAutoencoder(model)
    z, images = sample(unet, sched, ae, args.num_samples, latents.shape[1:], args.sample_steps, args.seed)
    snapped = model.snap_latents(z)
    rel_snap = float((z - snapped).flatten(1).norm(dim=1).div(z.flatten(1).norm(dim=1)).mean())
    real = val[:8]
    with torch.no_grad():
        recon = model(real)[0]
    grid = out / "samples.png"
    half = (args.num_samples + 1) // 2
    save_grid(grid, [real, recon, images[:half], images[half:]])
    info = {"autoencoder": ae_info, "scaling_factor": factor, "num_latents": len(latents),
            "latent_shape": list(latents.shape[1:]), "denoiser": diff_info, "sample_steps": args.sample_steps,
            "sample_relative_snap_distance": rel_snap, "grid": grid.name}  # beside demo.json
    (out / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {grid}; samples lie {rel_snap:.3f} (relative L2) from their re-quantised codes")
    return info


# --- (c) denoiser cost at F8 vs F16 --------------------------------------------------------------------------------

def bench_unet(channels: int, width: int = 128):
    """The fixed denoiser of the cost benchmark: an LDM-style UNet2DModel (3 levels of width, 2*width, 2*width
    channels, attention at the lower two)."""
    from diffusers import UNet2DModel
    return UNet2DModel(in_channels=channels, out_channels=channels, block_out_channels=(width, 2 * width, 2 * width),
                       layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=32,
                       norm_num_groups=32)


def bench_cases(image_size: int) -> list[dict]:
    cases = []
    for label, name, size in (("F8", "f8_k512_d128_s64", image_size), ("F16", "f16_k128_d128_s64", image_size),
                              ("F16", "f16_k128_d128_s64", 2 * image_size)):
        m = load_config(name).model
        f = m.downsample_factor
        cases.append({"case": f"{label} @ {size}px", "config": name, "image_size": size, "factor": f,
                      "latent": [m.embed_dim, size // f, size // f]})
    return cases


def _forward_flops(unet, z, t) -> Optional[int]:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(z, t)
    return int(counter.get_total_flops())


def run_bench(args) -> dict:
    from ..timing import machine_info, peak_extra_bytes
    device = args.device
    cases = bench_cases(args.image_size)
    channels = {c["latent"][0] for c in cases}
    if len(channels) != 1:
        raise ValueError(f"the compared configs must share D, got {channels}")
    torch.manual_seed(args.seed)
    unet = bench_unet(channels.pop(), args.bench_width).to(device)
    params = sum(p.numel() for p in unet.parameters())
    B = args.bench_batch
    g = torch.Generator().manual_seed(args.seed)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fns = {}
    for c in cases:
        z = torch.randn((B, *c["latent"]), generator=g).to(device)
        noise = torch.randn(z.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (B,), generator=g).to(device)

        def train_step(z=z, noise=noise, t=t):
            unet.zero_grad(set_to_none=False)  # gradients stay allocated: the peak below is activations + temps
            F.mse_loss(unet(z, t).sample, noise).backward()

        def sample_step(z=z, t=t):
            with torch.no_grad():
                unet(z, t)

        fns[c["case"]] = {"train": train_step, "sample": sample_step}
        c["forward_gflops"] = (_forward_flops(unet, z, t) or 0) / 1e9
    samples = {c["case"]: {"train": [], "sample": []} for c in cases}
    for rep in range(args.bench_warmup + args.bench_repeats):  # round-robin: drift and load spread evenly
        for c in cases:
            for mode in ("train", "sample"):
                sync()
                t0 = time.perf_counter()
                fns[c["case"]][mode]()
                sync()
                if rep >= args.bench_warmup:
                    samples[c["case"]][mode].append((time.perf_counter() - t0) * 1e3)
        log(f"bench round {rep + 1}/{args.bench_warmup + args.bench_repeats}")
    for c in cases:
        for mode in ("train", "sample"):
            s = sorted(samples[c["case"]][mode])
            c[f"{mode}_ms_median"] = statistics.median(s)
            c[f"{mode}_ms_min"], c[f"{mode}_ms_max"] = s[0], s[-1]
        peak, method = peak_extra_bytes(fns[c["case"]]["train"], device, "torch")
        c["train_peak_mib"] = None if peak is None else peak / 2 ** 20
        c["memory_method"] = method
        peak, _ = peak_extra_bytes(fns[c["case"]]["sample"], device, "torch")
        c["sample_peak_mib"] = None if peak is None else peak / 2 ** 20
    result = {"machine": machine_info(device), "unet_params": params, "batch": B, "repeats": args.bench_repeats,
              "warmup": args.bench_warmup, "cases": cases}
    return result


def bench_table(result: dict) -> str:
    rows = ["| case | latent (D×h×w) | fwd GFLOPs | train step ms (median) | sample step ms (median) | "
            "train peak MiB | sample peak MiB |",
            "|---|---|---|---|---|---|---|"]
    base = result["cases"][0]
    for c in result["cases"]:
        def rel(key):
            return f" ({c[key] / base[key]:.2f}×)" if c.get(key) and base.get(key) else ""
        lat = "×".join(str(v) for v in c["latent"])
        tp = "n/a" if c["train_peak_mib"] is None else f"{c['train_peak_mib']:.0f}{rel('train_peak_mib')}"
        sp = "n/a" if c["sample_peak_mib"] is None else f"{c['sample_peak_mib']:.0f}{rel('sample_peak_mib')}"
        rows.append(f"| {c['case']} | {lat} | {c['forward_gflops']:.1f}{rel('forward_gflops')} | "
                    f"{c['train_ms_median']:.0f}{rel('train_ms_median')} | "
                    f"{c['sample_ms_median']:.0f}{rel('sample_ms_median')} | {tp} | {sp} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("all", "demo", "bench"), default="all")
    p.add_argument("--out", default=str(ROOT / "results" / "latent_diffusion"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("demo")
    g.add_argument("--config", default="tiny_f8_pq", help="PQGAN config to train (tiny_f8_pq, tiny_f16_pq, ...)")
    g.add_argument("--checkpoint", default=None, help="a trained PQGAN (run dir / checkpoint) instead of training")
    g.add_argument("--data", default=photo_dir(),
                   help=f"image folder (default: ${PHOTOS_ENV}, e.g. BSDS500/train; unset: scikit-image's photos)")
    g.add_argument("--resolution", type=int, default=64)
    g.add_argument("--ae-minutes", type=float, default=4.0)
    g.add_argument("--ae-steps", type=int, default=100000)
    g.add_argument("--ae-batch", type=int, default=8)
    g.add_argument("--ae-lr", type=float, default=1e-3)
    g.add_argument("--ae-crop", type=int, default=32, help="train the autoencoder on random crops of this side "
                   "(0: whole --resolution images)")
    g.add_argument("--ckpt-dir", default=None, help="where to save the trained PQGAN (default: OUT/pqgan)")
    g.add_argument("--num-latents", type=int, default=1024, help="random crops encoded for the denoiser")
    g.add_argument("--diff-minutes", type=float, default=4.0)
    g.add_argument("--diff-steps", type=int, default=100000)
    g.add_argument("--diff-batch", type=int, default=32)
    g.add_argument("--diff-lr", type=float, default=5e-4)
    g.add_argument("--num-samples", type=int, default=16)
    g.add_argument("--sample-steps", type=int, default=50)
    b = p.add_argument_group("bench")
    b.add_argument("--image-size", type=int, default=256, help="F8 and F16 image side; F16 also at twice it")
    b.add_argument("--bench-batch", type=int, default=2)
    b.add_argument("--bench-width", type=int, default=128, help="the UNet's first-level channels (multiple of 32)")
    b.add_argument("--bench-repeats", type=int, default=5)
    b.add_argument("--bench-warmup", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "demo"):
        run_demo(args)
    if args.stage in ("all", "bench"):
        result = run_bench(args)
        (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
        m = result["machine"]
        print(f"\nDenoiser cost: UNet2DModel {result['unet_params'] / 1e6:.1f} M params, batch {result['batch']}, "
              f"{m['device']} ({m['cpu_model']}, {m['torch_threads']} threads, load {m['load_average']}), "
              f"median of {result['repeats']} after {result['warmup']} warm-up rounds\n")
        print(bench_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
