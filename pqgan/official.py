"""Import the released PQGAN weights (vislearn/PQGAN; Hugging Face CVL-Heidelberg/PQGAN) into our ``PQGAN``.

    model = pqgan.load_official("PQGAN_F8_K512_Z128_S64.safetensors")          # config: the .yaml beside it
    pqgan-convert PQGAN_F8_K512_Z128_S64.safetensors --out ckpts/pqgan_f8     # a checkpoint directory of ours

The official safetensors hold the autoencoder and quantiser of their Lightning ``VQModel`` (no discriminator, no
optimiser). Their layout, and what becomes of each key here:

* ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``: the taming/LDM networks, same shapes as
  ours, with two renames: the resamplers are ``down.{i}.downsample`` / ``up.{i}.upsample`` (ours: ``.sample``),
  and ``decoder.up.{i}`` is numbered finest-first (i = 0 is the full resolution; ours coarsest-first).
* ``quantize.embeddings.{s}.weight`` and/or its alias ``vq_split.embeddings.{s}.weight`` (``quantize`` is the
  same module as ``vq_split``): subspace s's codebook (K, d), stacked into ``quantizer.codebooks`` (S, K, d). When
  both names are present they must hold the same values.
* ``*.embedding.weight`` (K, D: the unused full-D codebook every VectorQuantizer2 owns), ``vq_standard.*`` (the
  unused plain VQ) and ``loss.*`` (LPIPS and discriminator): not part of the model, skipped.

Every key is accounted for: an unknown key, a missing one (other than our own buffers ``quantizer.cluster_size``,
``quantizer.initted``, ``quantizer.usage_steps``, ``scaling_factor``) or a shape mismatch raises ``ValueError``
naming the first offending key. Their networks see ImageNet mean/std-normalised images; the imported model gets
``model.norm_mean`` / ``model.norm_std`` = ImageNet's, so it takes and returns [-1, 1] images like every model here.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
import yaml

from . import checkpoint as ckpt
from .config import IMAGENET_MEAN, IMAGENET_STD, Config, ModelConfig, load_config

# Official checkpoint stem -> our config with the same networks and quantiser.
KNOWN_CHECKPOINTS = {"PQGAN_F8_K512_Z128_S64": "f8_k512_d128_s64", "PQGAN_F16_K128_Z128_S64": "f16_k128_d128_s64"}
# Our state-dict entries the official files do not have (their values stay as a fresh model has them).
OWN_BUFFERS = ("quantizer.cluster_size", "quantizer.initted", "quantizer.usage_steps", "scaling_factor")
CODEBOOK_PREFIXES = ("quantize.embeddings.", "vq_split.embeddings.")

_RESAMPLER = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.(downsample|upsample)\.(.*)$")
_UP_LEVEL = re.compile(r"^decoder\.up\.(\d+)\.(.*)$")
_CODEBOOK = re.compile(r"^(?:quantize|vq_split)\.embeddings\.(\d+)\.weight$")


def _is_skipped(key: str) -> bool:
    """Official entries that are not part of the model: vq_standard.*, loss.*, *.embedding.weight (full-D)."""
    return key.startswith(("vq_standard.", "loss.")) or key in ("quantize.embedding.weight",
                                                                  "vq_split.embedding.weight")


def official_key_to_ours(key: str, num_levels: int) -> str:
    """Rename one official network key (not a codebook, not a skipped key) to ours; num_levels = len(ch_mult)."""
    m = _RESAMPLER.match(key)
    if m:
        key = f"{m.group(1)}.{m.group(2)}.sample.{m.group(4)}"
    m = _UP_LEVEL.match(key)
    if m:
        level = int(m.group(1))
        if level >= num_levels:
            raise ValueError(f"official key {key!r}: decoder level {level} does not exist with {num_levels} levels")
        key = f"decoder.up.{num_levels - 1 - level}.{m.group(2)}"
    return key


def convert_state_dict(official: Dict[str, torch.Tensor], model_config: ModelConfig) -> Dict[str, torch.Tensor]:
    """Official state dict -> a complete state dict for ``PQGAN(model_config)`` (float32), checked key by key."""
    from .model import PQGAN

    with torch.device("meta"):
        reference = PQGAN(model_config).state_dict()
    S, K, d = model_config.num_subspaces, model_config.codebook_size, model_config.subspace_dim
    levels = len(model_config.ch_mult)
    ours: Dict[str, torch.Tensor] = {}
    codebooks: Dict[int, tuple[str, torch.Tensor]] = {}
    for key in sorted(official):
        value = official[key]
        if _is_skipped(key):
            continue
        m = _CODEBOOK.match(key)
        if m:
            s = int(m.group(1))
            if s >= S or tuple(value.shape) != (K, d):
                raise ValueError(f"official key {key!r}: expected subspace < {S} of shape ({K}, {d}), got "
                                 f"subspace {s} of shape {tuple(value.shape)}")
            if s in codebooks:
                other_key, other = codebooks[s]
                if not torch.equal(other, value):
                    raise ValueError(f"official key {key!r} differs from its alias {other_key!r} (both are the "
                                     f"codebook of subspace {s})")
                continue
            codebooks[s] = (key, value)
            continue
        name = official_key_to_ours(key, levels)
        if name not in reference or name in OWN_BUFFERS or name == "quantizer.codebooks":
            raise ValueError(f"unexpected official key {key!r} (ours: {name!r}); not part of a PQGAN with this config")
        if name in ours:
            raise ValueError(f"official key {key!r} maps onto {name!r} twice")
        if tuple(value.shape) != tuple(reference[name].shape):
            raise ValueError(f"official key {key!r} has shape {tuple(value.shape)}, the config expects "
                             f"{tuple(reference[name].shape)} for {name!r}: wrong config for this checkpoint?")
        ours[name] = value.detach().to("cpu", torch.float32)
    missing_cb = [s for s in range(S) if s not in codebooks]
    if missing_cb:
        raise ValueError(f"missing official key 'quantize.embeddings.{missing_cb[0]}.weight' (or its alias "
                         f"'vq_split.embeddings.{missing_cb[0]}.weight'): {len(missing_cb)} of {S} codebooks absent")
    ours["quantizer.codebooks"] = torch.stack([codebooks[s][1] for s in range(S)]).to("cpu", torch.float32)
    for name in reference:
        if name not in ours and name not in OWN_BUFFERS:
            raise ValueError(f"missing official key for our {name!r} (e.g. "
                             f"{_ours_to_official_hint(name, levels)!r}); is this a PQGAN autoencoder checkpoint?")
    return ours


def _ours_to_official_hint(name: str, levels: int) -> str:
    """Best-effort official name of one of our keys, for error messages only."""
    m = re.match(r"^decoder\.up\.(\d+)\.(.*)$", name)
    if m:
        name = f"decoder.up.{levels - 1 - int(m.group(1))}.{m.group(2)}"
    name = re.sub(r"^encoder\.down\.(\d+)\.sample\.", r"encoder.down.\1.downsample.", name)
    return re.sub(r"^decoder\.up\.(\d+)\.sample\.", r"decoder.up.\1.upsample.", name)


def model_config_from_official_yaml(path: Union[str, os.PathLike]) -> ModelConfig:
    """Our ModelConfig from an official Lightning config (``model.init_args`` or ``model.params``: ddconfig,
    n_embed, embed_dim, num_spaces, distance_type), with the ImageNet normalisation of their data loader."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    model = data.get("model") if isinstance(data, dict) else None
    args = (model or {}).get("init_args") or (model or {}).get("params")
    if not isinstance(args, dict) or "ddconfig" not in args:
        raise ValueError(f"{path}: not an official PQGAN config (no model.init_args.ddconfig)")
    dd = args["ddconfig"]
    try:
        return ModelConfig(resolution=int(dd.get("resolution", 256)), in_channels=int(dd.get("in_channels", 3)),
                           out_channels=int(dd.get("out_ch", 3)), ch=int(dd["ch"]), ch_mult=tuple(dd["ch_mult"]),
                           num_res_blocks=int(dd["num_res_blocks"]),
                           attn_resolutions=tuple(dd.get("attn_resolutions") or ()),
                           z_channels=int(dd["z_channels"]), embed_dim=int(args["embed_dim"]),
                           num_subspaces=int(args.get("num_spaces", 1)), codebook_size=int(args["n_embed"]),
                           dropout=float(dd.get("dropout", 0.0)), double_z=bool(dd.get("double_z", False)),
                           distance=str(args.get("distance_type", "l2")),
                           norm_mean=IMAGENET_MEAN, norm_std=IMAGENET_STD)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: incomplete official config ({e})") from None


def resolve_official_config(path: Union[str, os.PathLike], config: Any = None) -> Config:
    """The full Config for an official checkpoint. ``config``: a Config / ModelConfig, one of our config names or
    YAML files, or an official YAML; None: the official YAML beside the weights (same stem), else our paper
    config for a released file name (``KNOWN_CHECKPOINTS``). The model gets ImageNet normalisation unless the
    given config sets its own."""
    path = Path(path)
    if config is None:
        sibling = path.with_suffix(".yaml")
        if sibling.is_file():
            config = sibling
        elif path.stem in KNOWN_CHECKPOINTS:
            config = KNOWN_CHECKPOINTS[path.stem]
        else:
            raise ValueError(f"{path}: no {sibling.name} beside it and not a released file name "
                             f"({', '.join(KNOWN_CHECKPOINTS)}); pass config=")
    if isinstance(config, ModelConfig):
        cfg = Config(model=config, name="official-import")
    elif isinstance(config, Config):
        cfg = config
    else:
        cfg = None
        text = str(config)
        if text.endswith((".yaml", ".yml")) and os.path.isfile(text):
            with open(text) as f:
                raw = yaml.safe_load(f) or {}
            if isinstance(raw.get("model"), dict) and ("init_args" in raw["model"] or "params" in raw["model"]):
                base = load_config(KNOWN_CHECKPOINTS.get(Path(text).stem, "f8_k512_d128_s64"))
                cfg = Config(model=model_config_from_official_yaml(text), loss=base.loss, train=base.train,
                             name=Path(text).stem)
        if cfg is None:
            cfg = load_config(config)
    model = cfg.model
    if model.norm_mean is None:
        model = ModelConfig(**{**model.__dict__, "norm_mean": IMAGENET_MEAN, "norm_std": IMAGENET_STD})
    return Config(model=model, loss=cfg.loss, train=cfg.train, name=cfg.name)


def read_official(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """The tensors of an official .safetensors file (no pickle)."""
    import safetensors.torch
    if not os.path.isfile(path):
        raise FileNotFoundError(f"official weights not found: {path}")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def _load(path: Union[str, os.PathLike], config: Any) -> tuple[Any, Config]:
    from .model import PQGAN
    cfg = resolve_official_config(path, config)
    state = convert_state_dict(read_official(path), cfg.model)
    model = PQGAN(cfg.model)
    model.load_state_dict(state, strict=False)  # complete but for OWN_BUFFERS (checked by convert_state_dict)
    return model.eval(), cfg


def load_official(path: Union[str, os.PathLike], config: Any = None, map_location: Union[str, torch.device] = "cpu"):
    """A ready ``PQGAN`` (eval mode, [-1, 1] images in and out) from the official weights at ``path``.

    ``config``: see ``resolve_official_config``. Raises ValueError naming the first key that does not fit."""
    return _load(path, config)[0].to(map_location)


def convert(path: Union[str, os.PathLike], out: Union[str, os.PathLike], config: Any = None) -> str:
    """Write the official weights at ``path`` as one of our checkpoint directories ``out`` (model.safetensors,
    config.json, state.json), loadable by ``pqgan.load_pretrained(out)`` and ``pqgan-eval out``. Refuses to
    overwrite an existing checkpoint. Returns ``out``."""
    out = os.fspath(out)
    if os.path.exists(os.path.join(out, ckpt.MODEL_FILE)):
        raise FileExistsError(f"{out} already holds a checkpoint ({ckpt.MODEL_FILE}); choose another --out")
    model, cfg = _load(path, config)
    os.makedirs(out, exist_ok=True)
    ckpt.save_tensors(os.path.join(out, ckpt.MODEL_FILE), model.state_dict())
    ckpt.atomic_write_json(os.path.join(out, ckpt.CONFIG_FILE), cfg.to_dict())
    ckpt.atomic_write_json(os.path.join(out, ckpt.STATE_FILE), {
        "step": 0, "rng": [], "imported_from": os.path.abspath(path), "imported_sha256": ckpt.sha256_of_file(path)})
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pqgan-convert", description="Convert official PQGAN weights "
                                "(vislearn/PQGAN .safetensors) into a pqgan checkpoint directory.")
    p.add_argument("weights", help="official .safetensors file (e.g. PQGAN_F8_K512_Z128_S64.safetensors)")
    p.add_argument("--out", required=True, help="checkpoint directory to write (must not hold one already)")
    p.add_argument("--config", default=None, help="official .yaml, or our config name / YAML (default: the .yaml "
                   "beside the weights, else our paper config for a released file name)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``pqgan-convert``."""
    args = build_parser().parse_args(argv)
    try:
        out = convert(args.weights, args.out, args.config)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"pqgan-convert: {e}")
    print(f"pqgan-convert: wrote {out} (pqgan-eval {out} --data DIR --resize 256x256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
