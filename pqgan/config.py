"""Configuration dataclasses for PQGAN models, losses and training, with YAML loading and CLI-style overrides.

    >>> cfg = load_config("tiny_f8_pq")                       # pqgan/configs/tiny_f8_pq.yaml
    >>> cfg = apply_overrides(cfg, ["model.codebook_size=256", "train.steps=10"])
    >>> Config.from_dict(cfg.to_dict()) == cfg
    True
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from pqgan_kernels.validate import check_distance

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

PERCEPTUAL = ("auto", "lpips", "stlpips", "none")
DISC_LOSSES = ("hinge", "vanilla")
PREPROCESS = ("crop", "resize")
CODEBOOK_INITS = ("normal", "uniform")
# torchvision's ImageNet statistics: the official PQGAN code feeds its networks (x - mean) / std of [0, 1] images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """Autoencoder + quantiser. The latent grid is resolution / 2**(len(ch_mult) - 1) on a side.

    embed_dim is D, num_subspaces is S (d = D / S), codebook_size is K. attn_resolutions lists the feature-map
    sides (in pixels of the feature map) at which an attention block follows each ResnetBlock.
    ema_decay=None trains the codebooks by gradient (the paper); a float switches to EMA updates.
    codebook_init: "normal" (N(0, 1), the paper's PQ) or "uniform" (U(-1/K, 1/K), taming's VQ init).
    norm_mean / norm_std (in_channels entries each, or null): the networks see (x01 - mean) / std of the [0, 1]
    image and produce that space, while ``PQGAN`` still takes and returns [-1, 1] images; the official PQGAN
    weights need ImageNet's statistics (``IMAGENET_MEAN`` / ``IMAGENET_STD``).
    """
    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    z_channels: int = 256
    embed_dim: int = 128
    num_subspaces: int = 64
    codebook_size: int = 512
    dropout: float = 0.0
    double_z: bool = False
    ema_decay: Optional[float] = None
    commitment_weight: float = 1.0
    codebook_weight: float = 0.25
    kmeans_init: bool = False
    dead_code_threshold: float = 0.0
    codebook_init: str = "normal"
    distance: str = "l2"
    backend: str = "auto"
    norm_mean: Optional[tuple[float, ...]] = None
    norm_std: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("model.norm_mean and model.norm_std must be given together (or both null)")
        if self.norm_mean is not None:
            self.norm_mean = tuple(float(m) for m in self.norm_mean)
            self.norm_std = tuple(float(s) for s in self.norm_std)
            if len(self.norm_mean) != self.in_channels or len(self.norm_std) != self.in_channels \
                    or self.in_channels != self.out_channels:
                raise ValueError(f"model.norm_mean / model.norm_std need in_channels == out_channels == "
                                 f"{self.in_channels} entries each, got {self.norm_mean} and {self.norm_std}")
            if min(self.norm_std) <= 0:
                raise ValueError(f"model.norm_std entries must be > 0, got {self.norm_std}")
        if self.codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"model.codebook_init must be one of {CODEBOOK_INITS}, got {self.codebook_init!r}")
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        for name in ("resolution", "in_channels", "out_channels", "ch", "z_channels", "embed_dim",
                     "num_subspaces", "codebook_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_res_blocks < 0:
            raise ValueError(f"model.num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"model.ch_mult must be a non-empty list of positive ints, got {self.ch_mult}")
        if self.embed_dim % self.num_subspaces:
            raise ValueError(f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_subspaces "
                             f"({self.num_subspaces})")
        if self.resolution % self.downsample_factor:
            raise ValueError(f"model.resolution ({self.resolution}) must be divisible by the downsampling factor "
                             f"{self.downsample_factor}")
        check_distance(self.distance, "model.distance")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"model.ema_decay must be null or in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def downsample_factor(self) -> int:
        """F: pixels per latent position on a side (8 for ch_mult of length 4)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def subspace_dim(self) -> int:
        return self.embed_dim // self.num_subspaces

    def latent_size(self, resolution: Optional[int] = None) -> int:
        return (resolution or self.resolution) // self.downsample_factor


@dataclass
class LossConfig:
    """L1 + perceptual + GAN (PatchGAN discriminator, adaptive weight) + quantiser loss.

    perceptual: "auto" (LPIPS if its weights are cached locally, else ST-LPIPS), "lpips", "stlpips" or "none";
    perceptual_net: its trunk, "vgg" (as in VQGAN) or "alex".
    disc_start: first training step at which the GAN terms are on. disc_norm: "batch" or "act" (ActNorm).
    disc_factor: multiplies the GAN terms once they are on.
    on_normalized: compute every term (L1, perceptual, discriminator) on the model's normalised images
    ((x01 - model.norm_mean) / model.norm_std) instead of [-1, 1] ones, as the official PQGAN code does.
    """
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual: str = "auto"
    perceptual_net: str = "vgg"
    disc_weight: float = 0.75
    disc_start: int = 0
    disc_ndf: int = 64
    disc_layers: int = 3
    disc_loss: str = "hinge"
    disc_norm: str = "batch"
    disc_factor: float = 1.0
    adaptive_weight_max: float = 1e4
    codebook_loss_weight: float = 1.0
    on_normalized: bool = False

    def __post_init__(self) -> None:
        if self.perceptual not in PERCEPTUAL:
            raise ValueError(f"loss.perceptual must be one of {PERCEPTUAL}, got {self.perceptual!r}")
        if self.perceptual_net not in ("vgg", "alex"):
            raise ValueError(f"loss.perceptual_net must be 'vgg' or 'alex', got {self.perceptual_net!r}")
        if self.disc_norm not in ("batch", "act"):
            raise ValueError(f"loss.disc_norm must be 'batch' or 'act', got {self.disc_norm!r}")
        if self.disc_loss not in DISC_LOSSES:
            raise ValueError(f"loss.disc_loss must be one of {DISC_LOSSES}, got {self.disc_loss!r}")
        if self.disc_layers < 1 or self.disc_ndf < 1:
            raise ValueError(f"loss.disc_layers and loss.disc_ndf must be >= 1, got {self.disc_layers}, "
                             f"{self.disc_ndf}")
        if self.adaptive_weight_max < 0:
            raise ValueError(f"loss.adaptive_weight_max must be >= 0, got {self.adaptive_weight_max}")


@dataclass
class TrainConfig:
    """Optimisation and logging. lr=None means base_lr * batch_size (taming's scaling, base_lr 4.5e-6); a number is
    used as is (the official PQGAN recipe: 4.5e-6 flat).

    preprocess: "crop" (resize the shorter side to resolution, random square crop, random horizontal flip) or
    "resize" (the whole image resized to resolution x resolution, no crop, no flip: the official PQGAN loader).
    """
    batch_size: int = 8
    lr: Optional[float] = None
    base_lr: float = 4.5e-6
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    steps: int = 100_000
    resolution: int = 256
    num_workers: int = 4
    log_every: int = 50
    sample_every: int = 1000
    ckpt_every: int = 5000
    seed: int = 0
    bf16: bool = False
    data_root: Optional[str] = None
    val_fraction: float = 0.1
    preprocess: str = "crop"

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS:
            raise ValueError(f"train.preprocess must be one of {PREPROCESS}, got {self.preprocess!r}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2:
            raise ValueError(f"train.betas must have 2 entries, got {self.betas}")
        if self.batch_size < 1 or self.steps < 0 or self.resolution < 1:
            raise ValueError(f"train.batch_size/resolution must be >= 1 and steps >= 0, got {self.batch_size}, "
                             f"{self.resolution}, {self.steps}")

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else self.base_lr * self.batch_size


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists): YAML/JSON-safe."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Inverse of ``to_dict``; missing keys take defaults, unknown keys raise ValueError."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"model", "loss", "train", "name"}
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        return cls(model=_build(ModelConfig, data.get("model") or {}, "model"),
                   loss=_build(LossConfig, data.get("loss") or {}, "loss"),
                   train=_build(TrainConfig, data.get("train") or {}, "train"),
                   name=str(data.get("name", "custom")))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, data: dict[str, Any], section: str):
    if not isinstance(data, dict):
        raise TypeError(f"config section {section!r} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown keys in {section}: {sorted(unknown)} (known: {sorted(names)})")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items()})


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert an already-parsed value (YAML or override) to the annotated type, or raise TypeError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key} expects a list, got {value!r}")
        elem = args[0] if args else Any
        return tuple(_coerce(v, elem, key) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError(f"{key} expects a bool, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise TypeError(f"{key} expects an int, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                raise TypeError(f"{key} expects an int, got {value!r}") from None
        if not isinstance(value, int):
            raise TypeError(f"{key} expects an int, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(f"{key} expects a float, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{key} expects a float, got {value!r}") from None
    if hint is str:
        if value is None or isinstance(value, (dict, list)):
            raise TypeError(f"{key} expects a string, got {value!r}")
        return str(value)
    return value


def config_path(name_or_path: Union[str, os.PathLike]) -> Path:
    """A path to a YAML file, or a bare name resolved to ``pqgan/configs/<name>.yaml``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or os.sep in str(name_or_path):
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise FileNotFoundError(f"no config named {name_or_path!r}; available: {', '.join(available_configs())}")
    return candidate


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: Union[str, os.PathLike]) -> Config:
    """Load a Config from ``pqgan/configs/<name>.yaml`` or a YAML path; ``name`` defaults to the file stem."""
    path = config_path(name_or_path)
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    data.setdefault("name", path.stem)
    return Config.from_dict(data)


def save_config(config: Config, path: Union[str, os.PathLike]) -> None:
    Path(path).write_text(config.to_yaml())


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return a new Config with ``section.key=value`` overrides applied (values parsed as YAML, then coerced to
    the field's type: ``model.ch_mult=[1,2,4]``, ``model.ema_decay=null``, ``train.bf16=true``, ``name=x``)."""
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = yaml.safe_load(raw) if raw.strip() else ""
        if key == "name":
            data["name"] = str(raw)
            continue
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in ("model", "loss", "train"):
            raise ValueError(f"override key must be model.<k>, loss.<k>, train.<k> or name, got {key!r}")
        section, field_name = parts
        if field_name not in data[section]:
            raise ValueError(f"unknown key {key!r}; known: {sorted(data[section])}")
        data[section][field_name] = value
    return Config.from_dict(data)


__all__ = ["Config", "ModelConfig", "LossConfig", "TrainConfig", "load_config", "save_config", "apply_overrides",
           "available_configs", "config_path", "CONFIG_DIR", "IMAGENET_MEAN", "IMAGENET_STD"]
