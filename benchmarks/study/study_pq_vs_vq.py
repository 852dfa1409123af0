"""Small-scale PQ vs VQ study on real photographs (issue 7): same architecture, same budget, different quantisers.

Every run trains the ``tiny_f8`` autoencoder (``pqgan/configs/tiny_f8_pq.yaml``: F=8, ch 32, one ResnetBlock per
level) from the same seed, on the same sequence of random crops, with the same optimiser and step count; only the
quantiser numbers (D = embed_dim, S = num_subspaces, d = D / S, K = codebook_size) change. Objective: L1 + ST-LPIPS
(alex trunk, the bundled shift-tolerant weights) + the quantiser loss; **no GAN** (loss.disc_weight = 0).
Codebooks are trained by gradient (the paper's recipe) and initialised by k-means++ on the first batch in every run
(``--no-kmeans-init`` keeps the N(0, 1) init, under which VQ collapses to a single code at this budget).
``--vq-dead-code-threshold T`` also restarts the VQ (S=1) runs' codes whose running usage falls below T assignments
per batch (the fixed VQ baseline of issue 17; 0, the default, is the original study).

Groups of runs (a run shared by two groups is trained once):
    s_sweep : D=128, K=256, S in {1 (VQ), 4, 16, 64 (d=2), 128 (d=1, SQ)}
    d_sweep : D in {16, 32, 64, 128}, K=256, for VQ (S=1) and for PQ with fixed d=2 (S=D/2)
    k_sweep : PQ D=128, S=64 (d=2), K in {16, 64, 256, 1024}

Training photos: BSDS500 train+val (300 JPEGs, shorter side resized to ``--scale``, random crop + flip); the BSDS500
folder is ``--data``, default the ``PQGAN_DATA`` environment variable.
Evaluation: the first ``--eval-images`` BSDS500 *test* photos (never seen in training), same scale, center crops.
Metrics per run: bits per image, PSNR (mean per image), SSIM, ST-LPIPS, codebook usage / perplexity over the
whole evaluation set (mean over subspaces), train time. Each run writes OUT/runs/<name>.json; OUT/study.json
collects them. Runs whose JSON exists with the same budget are skipped (resume by re-running the command).

    python -m benchmarks.study.study_pq_vs_vq                # CPU defaults (see --help), resumable
    python -m benchmarks.study.study_pq_vs_vq --runs vq_d16,pq_d16 --steps 20  # a smoke run of two configs
    python -m benchmarks.study.study_pq_vs_vq --preset gpu --out benchmarks/results/study_gpu --device cuda
    python -m benchmarks.study.study_pq_vs_vq --report       # table into docs/results.md + PSNR-vs-D plot
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root

from pqgan.config import Config, apply_overrides, load_config
from pqgan.data import PHOTOS_ENV, list_images, photo_dir
from pqgan.losses import PQGANLoss
from pqgan.metrics import MetricAccumulator, to_unit
from pqgan.model import PQGAN
from pqgan.packing import bits_per_code

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "study"
DOCS = ROOT / "docs" / "results.md"
PLOT = ROOT / "docs" / "study_psnr_vs_d.png"
BASE_CONFIG = "tiny_f8_pq"
TABLE_BEGIN, TABLE_END = "<!-- study-table:begin -->", "<!-- study-table:end -->"

# Budgets. "cpu" sizes the whole default study (14 runs) for a shared 2-core CPU; "gpu" is a bigger setting.
PRESETS: Dict[str, Dict[str, Any]] = {
    "cpu": dict(steps=150, batch_size=8, crop=32, scale=64, lr=5e-4, eval_images=50, eval_crop=64),
    "gpu": dict(steps=5000, batch_size=32, crop=128, scale=256, lr=2e-4, eval_images=200, eval_crop=256),
}
# Budget keys a stored run must match to be reused.
BUDGET_KEYS = ("steps", "batch_size", "crop", "scale", "lr", "seed", "eval_images", "eval_crop", "perceptual",
               "kmeans_init", "vq_dead_code_threshold")


@dataclass(frozen=True)
class RunSpec:
    """One quantiser setting: D = embed_dim, S = num_subspaces (d = D/S), K = codebook_size."""
    D: int
    S: int
    K: int

    @property
    def d(self) -> int:
        return self.D // self.S

    @property
    def kind(self) -> str:
        return "VQ" if self.S == 1 else ("SQ" if self.d == 1 else "PQ")

    @property
    def name(self) -> str:
        return f"{self.kind.lower()}_D{self.D}_S{self.S}_K{self.K}"


def study_runs() -> Dict[str, Dict[str, Any]]:
    """name -> {"spec": RunSpec, "groups": [...]}, in a fixed order (cheap, informative runs first)."""
    groups: List[tuple[str, RunSpec]] = []
    for D in (16, 32, 64, 128):
        groups.append(("d_sweep", RunSpec(D, 1, 256)))
        groups.append(("d_sweep", RunSpec(D, D // 2, 256)))
    for S in (1, 4, 16, 64, 128):
        groups.append(("s_sweep", RunSpec(128, S, 256)))
    for K in (16, 64, 256, 1024):
        groups.append(("k_sweep", RunSpec(128, 64, K)))
    runs: Dict[str, Dict[str, Any]] = {}
    for group, spec in groups:
        entry = runs.setdefault(spec.name, {"spec": spec, "groups": []})
        if group not in entry["groups"]:
            entry["groups"].append(group)
    return runs


def select_runs(selection: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """All runs, or those named in a comma list of run names / group names (s_sweep, d_sweep, k_sweep)."""
    runs = study_runs()
    if not selection:
        return runs
    wanted = [w.strip() for w in selection.split(",") if w.strip()]
    chosen = {n: r for n, r in runs.items() if n in wanted or any(g in wanted for g in r["groups"])}
    unknown = [w for w in wanted if w not in runs and not any(w in r["groups"] for r in runs.values())]
    if unknown:
        raise ValueError(f"unknown runs/groups {unknown}; runs: {', '.join(runs)}; groups: s_sweep, d_sweep, "
                         "k_sweep")
    return chosen


def run_config(spec: RunSpec, budget: Dict[str, Any]) -> Config:
    """The tiny_f8 config with this run's quantiser and the shared budget (GAN off, ST-LPIPS-alex)."""
    cfg = load_config(BASE_CONFIG)
    return apply_overrides(cfg, [
        f"name={spec.name}",
        f"model.embed_dim={spec.D}", f"model.num_subspaces={spec.S}", f"model.codebook_size={spec.K}",
        f"model.resolution={budget['crop']}", "model.backend=auto", f"model.kmeans_init={budget['kmeans_init']}",
        f"loss.perceptual={budget['perceptual']}", "loss.perceptual_net=alex", "loss.disc_weight=0",
        f"train.steps={budget['steps']}", f"train.batch_size={budget['batch_size']}", f"train.lr={budget['lr']}",
        f"train.resolution={budget['crop']}", f"train.seed={budget['seed']}",
        f"model.dead_code_threshold={budget['vq_dead_code_threshold'] if spec.S == 1 else 0.0}",
    ])


# --- data ----------------------------------------------------------------------------------------------------------

def train_files(dirs: Sequence[str]) -> List[Path]:
    files: List[Path] = []
    for d in dirs:
        files += list_images(d)
    if not files:
        raise FileNotFoundError(f"no training images in {list(dirs)}")
    return sorted(files)


def eval_files(directory: str, count: int) -> List[Path]:
    files = list_images(directory)[:count]
    if not files:
        raise FileNotFoundError(f"no evaluation images in {directory}")
    return files


class PhotoCrops(torch.utils.data.Dataset):
    """(3, R, R) tensors in [-1, 1] from photos decoded and resized (shorter side ``scale``, default R, with
    ``pqgan.data``) once, up front.

    random=True: a random R x R crop and a horizontal flip with p=0.5 per item (torch's global RNG), as
    ``pqgan.data.ImageFolder`` does for training; random=False: the center crop.
    """

    def __init__(self, files: Sequence[Path], resolution: int, random: bool, scale: Optional[int] = None):
        from pqgan.data import load_image, resize_shorter
        scale = scale or resolution
        if scale < resolution:
            raise ValueError(f"scale ({scale}) must be >= the crop size ({resolution})")
        self.resolution, self.random = resolution, random
        self.images = [resize_shorter(load_image(f), scale) for f in files]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        from pqgan.data import crop_square, to_tensor
        return to_tensor(crop_square(self.images[index], self.resolution, self.random, self.random))


# --- one run -------------------------------------------------------------------------------------------------------

def train_run(cfg: Config, train_set, device: torch.device, log_every: int = 50,
              log=print) -> tuple[PQGAN, PQGANLoss, Dict[str, Any]]:
    """Train with PQGANLoss.generator_loss (GAN off). Weights from ``seed``; crops/flips/order from ``seed + 1``
    (re-seeded after building the model, so every run sees exactly the same batches)."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = PQGAN(cfg.model).to(device)
    crit = PQGANLoss(cfg.loss).to(device)
    if crit.disc_active(0):
        raise ValueError("the study trains without the GAN: loss.disc_weight must be 0")
    opt = torch.optim.Adam(model.parameters(), lr=tc.learning_rate, betas=tc.betas, weight_decay=tc.weight_decay)
    torch.manual_seed(tc.seed + 1)
    loader = torch.utils.data.DataLoader(train_set, batch_size=tc.batch_size, shuffle=True, drop_last=True,
                                         num_workers=0, generator=torch.Generator().manual_seed(tc.seed + 1))
    model.train()
    step, t0 = 0, time.perf_counter()
    tail: Dict[str, List[float]] = {}
    tail_from = max(0, tc.steps - max(1, tc.steps // 10))          # average the logs over the last 10% of steps
    while step < tc.steps:
        for img in loader:
            if step >= tc.steps:
                break
            img = img.to(device)
            recon, q = model(img)
            loss, logs = crit.generator_loss(img, recon, q.loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"{cfg.name}: non-finite loss at step {step}")
            if step >= tail_from:
                for k in ("l1", "perceptual", "quant", "total"):
                    if k in logs:
                        tail.setdefault(k, []).append(float(logs[k]))
                tail.setdefault("train_perplexity", []).append(float(q.stats.perplexity.mean()))
            step += 1
            if log_every and (step % log_every == 0 or step == tc.steps):
                log(f"  [{cfg.name}] step {step}/{tc.steps} loss {float(loss.detach()):.4f} "
                    f"l1 {float(logs['l1']):.4f} ppl {float(q.stats.perplexity.mean()):.1f} "
                    f"({time.perf_counter() - t0:.0f}s)")
    train_s = time.perf_counter() - t0
    summary = {f"train_{k}" if not k.startswith("train_") else k: sum(v) / len(v) for k, v in tail.items()}
    summary.update(train_time_s=train_s, train_steps=step, sec_per_step=train_s / max(step, 1))
    return model, crit, summary


@torch.no_grad()
def evaluate_run(model: PQGAN, crit: PQGANLoss, eval_set, device: torch.device,
                 batch_size: int = 20) -> Dict[str, Any]:
    """Metrics of ``pqgan.metrics.MetricAccumulator`` over the held-out set (perceptual = the loss's network)."""
    model.eval()
    perc = crit.perceptual
    perc_fn = None if perc is None else (lambda x, y: perc(x * 2 - 1, y * 2 - 1))
    q = model.quantizer
    acc = MetricAccumulator(q.codebook_size, q.num_subspaces, perceptual=perc_fn, perceptual_name="perceptual")
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(eval_set, batch_size=batch_size, shuffle=False, num_workers=0)
    for img in loader:
        img = img.to(device)
        recon, out = model(img)
        acc.update(to_unit(img), to_unit(recon.float().clamp(-1, 1)), out.indices)
    m = acc.compute()
    return {
        "num_eval_images": m["num_images"], "eval_image_size": m["image_size"],
        "psnr": m["psnr_mean_per_image_db"], "psnr_pooled": m["psnr_pooled_db"], "ssim": m["ssim"],
        "stlpips": m.get("perceptual"), "perceptual_name": crit.perceptual_name,
        "bits_per_image": m["bits_per_image"], "bits_per_pixel": m["bits_per_pixel"],
        "latent_size": m["latent_size"],
        "codebook_usage": m["codebook_usage_mean"], "codebook_perplexity": m["codebook_perplexity_mean"],
        "codebook_usage_min": min(m["codebook_usage_per_subspace"]),
        "eval_time_s": time.perf_counter() - t0,
    }


def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_one(name: str, entry: Dict[str, Any], budget: Dict[str, Any], train_set, eval_set, device: torch.device,
            out: Path, log=print) -> Dict[str, Any]:
    spec: RunSpec = entry["spec"]
    cfg = run_config(spec, budget)
    model, crit, train_summary = train_run(cfg, train_set, device, log_every=budget.get("log_every", 50), log=log)
    metrics = evaluate_run(model, crit, eval_set, device)
    record = {
        "name": name, "kind": spec.kind, "groups": entry["groups"], "D": spec.D, "S": spec.S, "d": spec.d,
        "K": spec.K, "bits_per_position": spec.S * bits_per_code(spec.K),
        "budget": {k: budget[k] for k in BUDGET_KEYS}, "gan": False,
        "num_train_images": len(train_set), "params": model.num_parameters(),
        "quantizer_params": model.num_parameters("quantizer"), "device": str(device), "machine": machine_info(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **train_summary, **metrics,
    }
    path = out / "runs" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return record


def load_records(out: Path) -> Dict[str, Dict[str, Any]]:
    records = {}
    for path in sorted((out / "runs").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        records[rec["name"]] = rec
    return records


def write_combined(out: Path, budget: Dict[str, Any]) -> Path:
    records = load_records(out)
    order = list(study_runs())
    runs = sorted(records.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    missing = [n for n in order if n not in records]
    combined = {"budget": {k: budget[k] for k in BUDGET_KEYS}, "base_config": BASE_CONFIG, "gan": False,
                "runs": runs, "missing": missing}
    path = out / "study.json"
    path.write_text(json.dumps(combined, indent=1))
    return path


# --- report --------------------------------------------------------------------------------------------------------

def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown_table(runs: Iterable[Dict[str, Any]]) -> str:
    head = ("| run | groups | D | S | d | K | bits / image | PSNR (dB) | SSIM | ST-LPIPS | usage | perplexity "
            "| train time |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [head]
    for r in runs:
        rows.append(f"| {r['name']} | {', '.join(r['groups'])} | {r['D']} | {r['S']} | {r['d']} | {r['K']} | "
                    f"{r['bits_per_image']} | {_fmt(r['psnr'], '.2f')} | {_fmt(r['ssim'], '.4f')} | "
                    f"{_fmt(r['stlpips'], '.4f')} | {100 * r['codebook_usage']:.0f}% | "
                    f"{_fmt(r['codebook_perplexity'], '.1f')} | {r['train_time_s'] / 60:.1f} min |")
    return "\n".join(rows)


def plot_psnr_vs_d(runs: List[Dict[str, Any]], path: Path) -> Optional[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"VQ (S=1, K=256)": [r for r in runs if "d_sweep" in r["groups"] and r["S"] == 1],
              "PQ (d=2, S=D/2, K=256)": [r for r in runs if "d_sweep" in r["groups"] and r["S"] > 1]}
    if not any(series.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, rs in series.items():
        rs = sorted(rs, key=lambda r: r["D"])
        marker = "o" if label.startswith("VQ") else "s"
        axes[0].plot([r["D"] for r in rs], [r["psnr"] for r in rs], marker=marker, label=label)
        axes[1].plot([r["D"] for r in rs], [r["stlpips"] for r in rs], marker=marker, label=label)
    for ax, ylabel in zip(axes, ("PSNR (dB, higher is better)", "ST-LPIPS (lower is better)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([16, 32, 64, 128], ["16", "32", "64", "128"])
        ax.set_xlabel("embedding dim D")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    b = runs[0]["budget"]
    fig.suptitle(f"tiny_f8, BSDS500 test center crops {b['eval_crop']}px; {b['steps']} steps x batch "
                 f"{b['batch_size']} of {b['crop']}px crops, no GAN", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def reference_baselines(eval_set) -> Dict[str, float]:
    """PSNR of model-free reconstructions of the evaluation crops, to put the runs' numbers in scale:
    each image's mean colour, the whole set's mean colour, and the F x F block means (the 8x8 grid a F8 latent
    has, 3 floats per position) upsampled bilinearly."""
    import torch.nn.functional as F
    from pqgan.metrics import psnr
    x = to_unit(torch.stack([eval_set[i] for i in range(len(eval_set))]))
    per_image = x.mean((2, 3), keepdim=True).expand_as(x)
    global_mean = x.mean((0, 2, 3), keepdim=True).expand_as(x)
    blocks = F.interpolate(F.avg_pool2d(x, 8), scale_factor=8, mode="bilinear", align_corners=False)
    return {"per-image mean colour": float(psnr(x, per_image).mean()),
            "evaluation-set mean colour": float(psnr(x, global_mean).mean()),
            "8x8-pixel block means, bilinear upsampling (192 floats per image)": float(psnr(x, blocks).mean())}


def baselines_text(budget: Dict[str, Any], eval_dir: Optional[str]) -> str:
    if not eval_dir:
        return ""
    try:
        eval_set = PhotoCrops(eval_files(eval_dir, budget["eval_images"]), budget["eval_crop"], random=False,
                              scale=budget.get("scale", budget["eval_crop"]))
    except FileNotFoundError:
        return ""
    lines = [f"- {name}: PSNR {value:.2f} dB" for name, value in reference_baselines(eval_set).items()]
    return (f"\n\nModel-free references on the same {len(eval_set)} evaluation crops:\n" + "\n".join(lines))


def report(out: Path, docs: Path = DOCS, plot: Path = PLOT, eval_dir: Optional[str] = None) -> str:
    """Table (into ``docs`` between the study-table markers, when present) and the PSNR-vs-D plot."""
    records = load_records(out)
    if not records:
        raise SystemExit(f"no run results in {out / 'runs'}")
    order = list(study_runs())
    runs = sorted(records.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    missing = [n for n in order if n not in records]
    table = markdown_table(runs)
    if missing:
        table += "\n\nMissing (not run / not finished): " + ", ".join(f"`{m}`" for m in missing)
    table += baselines_text(runs[0]["budget"], eval_dir)
    plot_psnr_vs_d(runs, plot)
    if docs.is_file():
        text = docs.read_text()
        if TABLE_BEGIN in text and TABLE_END in text:
            pre, rest = text.split(TABLE_BEGIN, 1)
            _, post = rest.split(TABLE_END, 1)
            docs.write_text(f"{pre}{TABLE_BEGIN}\n{table}\n{TABLE_END}{post}")
    return table


# --- CLI -----------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="budget defaults (default cpu)")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int, help="training crop side (multiple of 8)")
    p.add_argument("--scale", type=int, help="photos are resized to this shorter side before any crop")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-images", type=int, help="number of held-out test photos")
    p.add_argument("--eval-crop", type=int, help="evaluation center-crop side (multiple of 8, >= 11)")
    p.add_argument("--perceptual", default="stlpips", choices=["stlpips", "lpips", "none"],
                   help="perceptual loss/metric network (alex trunk)")
    p.add_argument("--no-kmeans-init", action="store_true",
                   help="keep the N(0,1) codebook init (default: k-means++ on the first batch, for every run)")
    p.add_argument("--vq-dead-code-threshold", type=float, default=0.0,
                   help="dead-code restarts for the VQ (S=1) runs: running usage threshold (default 0: off)")
    p.add_argument("--runs", default=None, help="comma list of run names or groups (default: all)")
    p.add_argument("--data", default=photo_dir(),
                   help=f"BSDS500 folder (train/, val/, test/ inside; default: ${PHOTOS_ENV})")
    p.add_argument("--train-dirs", default=None, help="comma list of folders (default: DATA/train,DATA/val)")
    p.add_argument("--eval-dir", default=None, help="held-out photos (default: DATA/test)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default 1 on CPU: the study machine is shared)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--force", action="store_true", help="re-run runs that already have a result")
    p.add_argument("--list", action="store_true", help="print the runs and exit")
    p.add_argument("--report", action="store_true", help="only write the table into docs/results.md and the plot")
    p.add_argument("--docs", default=str(DOCS), help="markdown file whose study-table section --report fills")
    p.add_argument("--plot", default=str(PLOT), help="PSNR-vs-D PNG written by --report")
    return p


def resolve_budget(args: argparse.Namespace) -> Dict[str, Any]:
    budget = dict(PRESETS[args.preset])
    for key in ("steps", "batch_size", "crop", "scale", "lr", "eval_images", "eval_crop"):
        value = getattr(args, key)
        if value is not None:
            budget[key] = value
    budget.update(seed=args.seed, perceptual=args.perceptual, log_every=args.log_every,
                  kmeans_init=not args.no_kmeans_init, vq_dead_code_threshold=args.vq_dead_code_threshold)
    for key in ("crop", "eval_crop"):
        if budget[key] % 8 or budget[key] < 16:
            raise SystemExit(f"--{key.replace('_', '-')} must be a multiple of 8 and >= 16, got {budget[key]}")
    if budget["scale"] < max(budget["crop"], budget["eval_crop"]):
        raise SystemExit(f"--scale must be >= --crop and --eval-crop, got {budget['scale']}")
    if budget["steps"] < 1 or budget["batch_size"] < 1 or budget["eval_images"] < 1:
        raise SystemExit("--steps, --batch-size and --eval-images must be >= 1")
    return budget


def shown(path) -> str:
    """A path for logs: relative to the repository when inside it (logs get committed), else as given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    data = Path(args.data) if args.data else None
    if args.eval_dir is None and data is not None:
        args.eval_dir = str(data / "test")
    if args.report:
        print(report(out, Path(args.docs), Path(args.plot), args.eval_dir))
        return 0
    try:
        runs = select_runs(args.runs)
    except ValueError as e:
        raise SystemExit(str(e))
    if args.list:
        for name, entry in runs.items():
            print(name, ",".join(entry["groups"]))
        return 0
    budget = resolve_budget(args)
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    if args.train_dirs is None:
        if data is None:
            raise SystemExit(f"no photos: pass --data (a BSDS500 folder) or set {PHOTOS_ENV}, or --train-dirs "
                             "and --eval-dir")
        args.train_dirs = f"{data / 'train'},{data / 'val'}"
    if args.eval_dir is None:
        raise SystemExit(f"no evaluation photos: pass --eval-dir, or --data / {PHOTOS_ENV} (uses DATA/test)")
    train_set = PhotoCrops(train_files([d for d in args.train_dirs.split(",") if d]), budget["crop"], random=True,
                           scale=budget["scale"])
    eval_set = PhotoCrops(eval_files(args.eval_dir, budget["eval_images"]), budget["eval_crop"], random=False,
                          scale=budget["scale"])
    done = load_records(out)
    want = {k: budget[k] for k in BUDGET_KEYS}
    print(f"study: {len(runs)} runs, budget {want}, {len(train_set)} train / {len(eval_set)} eval photos -> {shown(out)}",
          flush=True)
    for i, (name, entry) in enumerate(runs.items()):
        if not args.force and name in done and done[name].get("budget") == want:
            print(f"[{i + 1}/{len(runs)}] {name}: done, skipped", flush=True)
            continue
        print(f"[{i + 1}/{len(runs)}] {name} groups={entry['groups']}", flush=True)
        rec = run_one(name, entry, budget, train_set, eval_set, device, out,
                      log=lambda s: print(s, flush=True))
        print(f"[{i + 1}/{len(runs)}] {name}: PSNR {rec['psnr']:.2f} SSIM {rec['ssim']:.4f} ST-LPIPS "
              f"{_fmt(rec['stlpips'], '.4f')} usage {rec['codebook_usage']:.2f} bits {rec['bits_per_image']} "
              f"train {rec['train_time_s']:.0f}s", flush=True)
        write_combined(out, budget)
    print(f"combined: {shown(write_combined(out, budget))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
