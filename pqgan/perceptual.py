"""Perceptual distances for training and evaluation: LPIPS or ST-LPIPS, never a randomly initialised network.

``build_perceptual(kind, net)`` returns a frozen module ``m`` with ``m(x, y) -> (B,)`` distances for images
(B, 3, H, W) in [-1, 1], and ``m.name`` ("LPIPS-vgg", "ST-LPIPS-alex", ...), or None for kind="none".

* "lpips": the ``lpips`` package (Zhang et al. 2018). Its linear heads ship with the package, but its ImageNet
  backbone comes from torchvision's download cache; it is used ONLY when that file is already in the torch hub
  cache (``torch.hub.get_dir()/checkpoints``) -- nothing is ever downloaded. Both files are loaded here with
  ``torch.load(weights_only=True)`` (never through torchvision's hub loader, which unpickles arbitrary objects):
  a file holding anything but tensors is refused with an error naming it, and no code in it runs.
* "stlpips": shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022). The ``stlpips-pytorch`` wheel bundles complete
  weights (backbone + linear heads) in ``stlpips_pytorch/weights/vST0.0/{alex,vgg}_shift_tolerant.pth``. Its
  Python module imports IPython and torchsummary, so the network is rebuilt here (same layer layout and state-dict
  keys) and the bundled file is loaded with ``strict=True``; the package is only used as a weights container.
* "auto": LPIPS if its backbone is cached, else ST-LPIPS; RuntimeError if neither is available.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .image_checks import check_image_pair

NETS = ("vgg", "alex")
# torchvision's download file names of the ImageNet backbones that ``lpips`` builds on.
_TORCHVISION_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"perceptual net must be one of {NETS}, got {net!r}")


def lpips_backbone_path(net: str = "vgg") -> Path:
    """Where torchvision caches the backbone ``lpips`` needs (it may not exist)."""
    _check_net(net)
    return Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_FILES[net]


def lpips_available(net: str = "vgg") -> bool:
    """True when the ``lpips`` package imports and its backbone is already cached (so nothing is downloaded)."""
    return importlib.util.find_spec("lpips") is not None and lpips_backbone_path(net).is_file()


def stlpips_weights_path(net: str = "vgg") -> Optional[Path]:
    """The ST-LPIPS weights bundled with ``stlpips-pytorch``, or None when the package is not installed."""
    _check_net(net)
    spec = importlib.util.find_spec("stlpips_pytorch")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
        if path.is_file():
            return path
    return None


def stlpips_available(net: str = "vgg") -> bool:
    return stlpips_weights_path(net) is not None


# --- ST-LPIPS network ----------------------------------------------------------------------------------------


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad 2 on every side, depthwise [1,2,1]x[1,2,1]/16 blur."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = (a[:, None] * a[None, :]) / 16.0
        self.register_buffer("filt", filt.expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def _sliced(layers: list[nn.Module], bounds: list[int]) -> nn.ModuleList:
    """Split ``layers`` at ``bounds`` into Sequentials whose children keep their global index as name."""
    slices = nn.ModuleList()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        seq = nn.Sequential()
        for i in range(lo, hi):
            seq.add_module(str(i), layers[i])
        slices.append(seq)
    return slices


def _st_alex() -> tuple[nn.ModuleList, list[int]]:
    """Shift-tolerant AlexNet trunk: stride-1 conv1, max-pool stride 1 + blur-pool instead of strided pools."""
    layers = [nn.Conv2d(3, 64, 11, padding=2), BlurDownsample(64), nn.ReLU(),
              nn.MaxPool2d(3, stride=1), BlurDownsample(64), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
              nn.MaxPool2d(3, stride=1), BlurDownsample(192), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
              nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
              nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
    return _sliced(layers, [0, 3, 7, 11, 13, 15]), [64, 192, 384, 256, 256]


def _st_vgg() -> tuple[nn.ModuleList, list[int]]:
    """Shift-tolerant VGG16 trunk up to relu5_3: each 2x2 max-pool runs at stride 1, then a blur-pool."""
    layers: list[nn.Module] = []
    cin = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if v == "M":
            layers += [nn.MaxPool2d(2, stride=1), BlurDownsample(cin)]
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return _sliced(layers, [0, 4, 10, 18, 26, 34]), [64, 128, 256, 512, 512]


class _Trunk(nn.Module):
    def __init__(self, slices: nn.ModuleList):
        super().__init__()
        for i, s in enumerate(slices):
            self.add_module(f"slice{i + 1}", s)
        self.n = len(slices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(self.n):
            x = getattr(self, f"slice{i + 1}")(x)
            feats.append(x)
        return feats


class STLPIPS(nn.Module):
    """ST-LPIPS distance with the weights bundled in ``stlpips-pytorch``. forward(x, y) -> (B,) for [-1, 1] input."""

    def __init__(self, net: str = "vgg", weights: Optional[os.PathLike] = None):
        super().__init__()
        _check_net(net)
        path = Path(weights) if weights is not None else stlpips_weights_path(net)
        if path is None or not path.is_file():
            raise RuntimeError(f"ST-LPIPS weights for {net!r} not found: install them with "
                               f"`pip install --no-deps stlpips-pytorch` (or use perceptual='none')")
        slices, self.chns = _st_alex() if net == "alex" else _st_vgg()
        self.net = _Trunk(slices)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.chns)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        state = load_weights(path)
        remapped = {}
        for key, value in state.items():
            if key.startswith("scaling_layer."):
                key = key[len("scaling_layer."):]
            elif key.startswith("lin"):  # "lin3.model.1.weight" (Dropout at .0) -> "lins.3.weight"
                key = f"lins.{key[3:key.index('.')]}.weight"
            remapped[key] = value
        self.load_state_dict(remapped, strict=True)
        self.name = f"ST-LPIPS-{net}"
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "STLPIPS":
        return super().train(False)  # frozen metric network: always in eval mode

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_image_pair(x, y, channels=3)
        fx, fy = self.net((x - self.shift) / self.scale), self.net((y - self.shift) / self.scale)
        total = 0.0
        for lin, a, b in zip(self.lins, fx, fy):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b).pow(2)).mean((1, 2, 3))
        return total


def load_weights(path: os.PathLike) -> dict:
    """A state dict of tensors from a torch file, with ``weights_only=True`` (never runs code in the file).
    RuntimeError naming the file when it is missing, damaged or holds anything but plain tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, OSError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"{path}: not a plain weights file, refused ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path}: not a state dict of tensors")
    return state


def lpips_heads_path(net: str = "vgg") -> Path:
    """The linear-head weights the ``lpips`` package ships (``lpips/weights/v0.1/<net>.pth``)."""
    _check_net(net)
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the lpips package is not installed (pip install lpips)")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"


def _load_lpips_weights(model: nn.Module, net: str) -> None:
    """Fill an ``lpips.LPIPS(pretrained=False, pnet_rand=True)`` with the cached torchvision backbone and the
    package's linear heads, every tensor checked for presence and shape."""
    backbone_path, heads_path = lpips_backbone_path(net), lpips_heads_path(net)
    backbone, heads = load_weights(backbone_path), load_weights(heads_path)
    target = {}
    for name, param in model.net.named_parameters():          # "slice2.3.weight" <- "features.3.weight"
        _, index, kind = name.split(".")
        source = f"features.{index}.{kind}"
        if source not in backbone or backbone[source].shape != param.shape:
            raise RuntimeError(f"{backbone_path}: not the torchvision {net} weights ({source} missing or of "
                               f"another shape)")
        target[f"net.{name}"] = backbone[source]
    for name, param in model.named_parameters():
        if name.startswith("lin"):
            if name not in heads or heads[name].shape != param.shape:
                raise RuntimeError(f"{heads_path}: not the LPIPS {net} linear heads ({name} missing)")
            target[name] = heads[name]
    model.load_state_dict(target, strict=False)   # the rest: "lins.*" (aliases of lin0..), scaling buffers


class _LPIPSWrapper(nn.Module):
    """The ``lpips`` package's LPIPS network with weights loaded by ``_load_lpips_weights`` (backbone from the
    local torch hub cache, never downloaded, never unpickled), forward(x, y) -> (B,)."""

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if not lpips_available(net):
            raise RuntimeError(f"LPIPS needs the torchvision {net} backbone in the local cache "
                               f"({lpips_backbone_path(net)}); it is not there and will not be downloaded. "
                               f"Use perceptual='stlpips' or 'none'.")
        import warnings

        import lpips
        with warnings.catch_warnings():                      # torchvision's deprecation note for pretrained=False
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        _load_lpips_weights(self.model, net)
        self.name = f"LPIPS-{net}"
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "_LPIPSWrapper":
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_image_pair(x, y, channels=3)
        return self.model(x, y).flatten()


def build_perceptual(kind: str = "auto", net: str = "vgg") -> Optional[nn.Module]:
    """The perceptual module for ``kind`` in ("auto", "lpips", "stlpips", "none"); None for "none"."""
    _check_net(net)
    if kind == "none":
        return None
    if kind == "lpips":
        return _LPIPSWrapper(net)
    if kind == "stlpips":
        return STLPIPS(net)
    if kind == "auto":
        if lpips_available(net):
            return _LPIPSWrapper(net)
        if stlpips_available(net):
            return STLPIPS(net)
        raise RuntimeError(f"no perceptual network available offline: the lpips {net} backbone is not in "
                           f"{lpips_backbone_path(net).parent} and stlpips-pytorch is not installed "
                           f"(`pip install --no-deps stlpips-pytorch`); set loss.perceptual=none to train without")
    raise ValueError(f"perceptual must be one of ('auto', 'lpips', 'stlpips', 'none'), got {kind!r}")


__all__ = ["STLPIPS", "BlurDownsample", "build_perceptual", "load_weights", "lpips_available",
           "lpips_backbone_path", "lpips_heads_path", "stlpips_available", "stlpips_weights_path"]
