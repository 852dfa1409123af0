"""Crash-safe training checkpoints (safetensors + JSON) and ``load_pretrained`` for users.

Layout of a checkpoint root (``<out>/checkpoints``)::

    step_00000100/                 one complete checkpoint (a directory, never modified once published)
        model.safetensors          the autoencoder's state_dict
        discriminator.safetensors  the discriminator's state_dict (absent when there is none)
        optimizer.safetensors      every optimizer-state tensor, keys "<optimizer>/state/<param id>/<name>"
        optimizer.json             the rest of each optimizer's state_dict (param_groups, non-tensor state)
        config.json                the full run configuration (``Config.to_dict()``)
        state.json                 step, epoch, per-rank RNG states (torch, cuda, numpy, python), extra fields
    last.json                      {"step": 100, "dir": "step_00000100"}: the latest complete checkpoint

Publishing is atomic: a checkpoint is written into a hidden temp directory beside the others, every file is
fsync'ed, the directory is renamed to its final name, and only then ``last.json`` is replaced (temp file in the same
directory, fsync, ``os.replace``, fsync of the directory). A kill at any moment leaves ``last.json`` pointing at a
complete checkpoint. Older numbered directories are removed unless ``keep=True``.
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional

import numpy as np
import safetensors.torch
import torch

LAST = "last.json"
MODEL_FILE = "model.safetensors"
DISC_FILE = "discriminator.safetensors"
OPTIM_FILE = "optimizer.safetensors"
OPTIM_JSON = "optimizer.json"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"


# --- atomic file writes --------------------------------------------------------------------------------------------

def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _tensors_for_saving(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """CPU, contiguous, non-aliasing copies (safetensors refuses tensors that share memory)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def save_tensors(path: str, tensors: Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Atomically write a safetensors file."""
    atomic_write_bytes(path, safetensors.torch.save(_tensors_for_saving(tensors), metadata=metadata))


def load_tensors(path: str, device: str | torch.device = "cpu") -> Dict[str, torch.Tensor]:
    return safetensors.torch.load_file(path, device=str(device))


# --- optimizer state -----------------------------------------------------------------------------------------------

def flatten_optimizer_state(name: str, state_dict: Mapping[str, Any]) -> tuple[Dict[str, torch.Tensor], Dict]:
    """Split ``optimizer.state_dict()`` into {"<name>/state/<pid>/<key>": tensor} and a JSON-able rest."""
    tensors: Dict[str, torch.Tensor] = {}
    rest_state: Dict[str, Dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        plain = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/state/{pid}/{key}"] = value
            else:
                plain[key] = value
        rest_state[str(pid)] = plain
    tuple_keys = sorted({k for g in state_dict["param_groups"] for k, v in g.items() if isinstance(v, tuple)})
    return tensors, {"state": rest_state, "param_groups": state_dict["param_groups"],
                     "state_keys": [str(pid) for pid in state_dict["state"]], "tuple_keys": tuple_keys}


def unflatten_optimizer_state(name: str, tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> Dict:
    """Inverse of ``flatten_optimizer_state``."""
    state: Dict[Any, Dict[str, Any]] = {}
    for pid in rest["state_keys"]:
        entry = dict(rest["state"].get(pid, {}))
        prefix = f"{name}/state/{pid}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                entry[key[len(prefix):]] = value
        state[_pid(pid)] = entry
    tuple_keys = set(rest.get("tuple_keys", ()))       # JSON turned tuples (Adam's betas) into lists
    groups = [{k: tuple(v) if k in tuple_keys and isinstance(v, list) else v for k, v in g.items()}
              for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def _pid(key: str):
    return int(key) if key.lstrip("-").isdigit() else key


# --- RNG state -----------------------------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_state() -> Dict[str, Any]:
    """This process's torch (CPU and every CUDA device), numpy and python RNG states, as JSON-able data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (CUDA states are restored only when the device count matches)."""
    torch.set_rng_state(_unb64(state["torch"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# --- checkpoints ---------------------------------------------------------------------------------------------------

def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(root: str, *, step: int, model: torch.nn.Module, config: Mapping[str, Any],
                    discriminator: Optional[torch.nn.Module] = None,
                    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
                    rng_states: Optional[list] = None, state: Optional[Mapping[str, Any]] = None,
                    keep: bool = False) -> str:
    """Publish a complete checkpoint under ``root`` and point ``root/last.json`` at it. Returns its directory.

    rng_states: one ``capture_rng_state()`` per rank (default: this process's only).
    state: extra JSON-able training state (epoch, ...), stored in state.json beside ``step``.
    keep: keep the older numbered checkpoints (otherwise they are deleted once the new one is published).
    """
    os.makedirs(root, exist_ok=True)
    name = step_dir_name(step)
    final = os.path.join(root, name)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root)
    try:
        save_tensors(os.path.join(tmp, MODEL_FILE), model.state_dict())
        if discriminator is not None:
            save_tensors(os.path.join(tmp, DISC_FILE), discriminator.state_dict())
        if optimizers:
            tensors, rest = {}, {}
            for opt_name, opt in optimizers.items():
                if "/" in opt_name:
                    raise ValueError(f"optimizer names must not contain '/', got {opt_name!r}")
                t, r = flatten_optimizer_state(opt_name, opt.state_dict())
                tensors.update(t)
                rest[opt_name] = r
            save_tensors(os.path.join(tmp, OPTIM_FILE), tensors)
            atomic_write_json(os.path.join(tmp, OPTIM_JSON), rest)
        atomic_write_json(os.path.join(tmp, CONFIG_FILE), dict(config))
        atomic_write_json(os.path.join(tmp, STATE_FILE), {
            "step": int(step), "rng": rng_states if rng_states is not None else [capture_rng_state()],
            **dict(state or {})})
        _fsync_dir(tmp)
        revision = 0
        while os.path.exists(final):  # the same step saved again: never touch the published one
            revision += 1
            name = f"{step_dir_name(step)}.r{revision}"
            final = os.path.join(root, name)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    atomic_write_json(os.path.join(root, LAST), {"step": int(step), "dir": name})
    _cleanup(root, current=name, keep=keep)
    return final


def _cleanup(root: str, current: str, keep: bool) -> None:
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if not os.path.isdir(path) or entry == current:
            continue
        if entry.startswith(".tmp-") or (not keep and entry.startswith("step_")):
            shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory from: itself, a checkpoint root (its last.json), or a run dir (``path/checkpoints``)."""
    if os.path.isfile(os.path.join(path, MODEL_FILE)):
        return path
    for root in (path, os.path.join(path, "checkpoints")):
        pointer = os.path.join(root, LAST)
        if os.path.isfile(pointer):
            with open(pointer) as f:
                target = os.path.join(root, json.load(f)["dir"])
            if not os.path.isfile(os.path.join(target, MODEL_FILE)):
                raise FileNotFoundError(f"{pointer} points at {target}, which holds no {MODEL_FILE}")
            return target
    raise FileNotFoundError(f"no checkpoint at {path!r}: expected {MODEL_FILE}, {LAST} or checkpoints/{LAST}")


def has_checkpoint(path: str) -> bool:
    try:
        resolve_checkpoint(path)
        return True
    except FileNotFoundError:
        return False


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def load_checkpoint(path: str, *, model: Optional[torch.nn.Module] = None,
                    discriminator: Optional[torch.nn.Module] = None,
                    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
                    map_location: str | torch.device = "cpu", strict: bool = True) -> Dict[str, Any]:
    """Load whatever is given from the checkpoint at ``path`` (see ``resolve_checkpoint``).

    Returns {"dir", "config", "state"}: the checkpoint directory, its config dict and its state.json (step, rng, ...).
    RNG states are not restored here: call ``restore_rng_state(state["rng"][rank])``.
    """
    ckpt = resolve_checkpoint(path)
    if model is not None:
        model.load_state_dict(load_tensors(os.path.join(ckpt, MODEL_FILE), map_location), strict=strict)
    if discriminator is not None:
        disc_path = os.path.join(ckpt, DISC_FILE)
        if not os.path.isfile(disc_path):
            raise FileNotFoundError(f"checkpoint {ckpt} has no discriminator weights")
        discriminator.load_state_dict(load_tensors(disc_path, map_location), strict=strict)
    if optimizers:
        tensors = load_tensors(os.path.join(ckpt, OPTIM_FILE), map_location)
        rest = read_json(os.path.join(ckpt, OPTIM_JSON))
        for opt_name, opt in optimizers.items():
            if opt_name not in rest:
                raise KeyError(f"checkpoint {ckpt} has no state for optimizer {opt_name!r}")
            opt.load_state_dict(unflatten_optimizer_state(opt_name, tensors, rest[opt_name]))
    return {"dir": ckpt, "config": read_json(os.path.join(ckpt, CONFIG_FILE)),
            "state": read_json(os.path.join(ckpt, STATE_FILE))}


def load_pretrained(path: str, map_location: str | torch.device = "cpu"):
    """A trained ``PQGAN`` (eval mode) from a checkpoint directory, checkpoint root or run directory."""
    from .config import Config
    from .model import PQGAN

    ckpt = resolve_checkpoint(path)
    config = Config.from_dict(read_json(os.path.join(ckpt, CONFIG_FILE)))
    model = PQGAN(config.model)
    model.load_state_dict(load_tensors(os.path.join(ckpt, MODEL_FILE), map_location))
    return model.to(map_location).eval()
