"""Crash-safe training checkpoints (safetensors + JSON) and ``load_pretrained`` for users.

Layout of a checkpoint root (``<out>/checkpoints``)::

    step_00000100/                 one complete checkpoint (a directory, never modified once published)
        model.safetensors          the autoencoder's state_dict
        discriminator.safetensors  the discriminator's state_dict (absent when there is none)
        optimizer.safetensors      every optimizer-state tensor, keys "<optimizer>/state/<param id>/<name>"
        optimizer.json             the rest of each optimizer's state_dict (param_groups, non-tensor state)
        config.json                the full run configuration (``Config.to_dict()``)
        state.json                 step, epoch, per-rank RNG states (torch, cuda, numpy, python), extra fields
        manifest.json              {"files": {name: {"bytes": n, "sha256": hex}}} of every file above (written last)
    last.json                      {"step": 100, "dir": "step_00000100"}: the latest complete checkpoint

Publishing is atomic: a checkpoint is written into a hidden temp directory beside the others, every file is
fsync'ed, the directory is renamed to its final name, and only then ``last.json`` is replaced (temp file in the same
directory, fsync, ``os.replace``, fsync of the directory). A kill at any moment leaves ``last.json`` pointing at a
complete checkpoint. Clean-up (unless ``keep=True``) removes only numbered directories older than the one just
published (each is first renamed to a hidden name, so a half-deleted one never looks like a checkpoint).

Reading never trusts a file: the manifest's sizes and SHA-256 digests are checked before a file is used, and every
damaged or missing file is reported as one line naming it (``CheckpointError`` / ``FileNotFoundError``). When
``last.json`` is missing, unreadable or points at a damaged checkpoint, ``find_checkpoint`` takes the newest complete
numbered directory and says why.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

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
MANIFEST_FILE = "manifest.json"
# What a checkpoint written before manifests existed must hold; what evaluation / load_pretrained reads.
LEGACY_FILES = (MODEL_FILE, CONFIG_FILE, STATE_FILE)
EVAL_FILES = (MODEL_FILE, CONFIG_FILE)
_STEP_DIR = re.compile(r"^step_(\d+)(?:\.r(\d+))?$")


class CheckpointError(ValueError):
    """A checkpoint file is damaged (truncated, bit-flipped, not JSON / safetensors); the message names it."""


class CheckpointWarning(UserWarning):
    """A checkpoint other than the one ``last.json`` names is used (the message says why)."""


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
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one (temp file in the
    same directory, fsync, ``os.replace``, fsync of the directory)."""
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
    atomic_write_bytes(path, _json_bytes(obj))


def _tensors_for_saving(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """CPU, contiguous, non-aliasing copies (safetensors refuses tensors that share memory)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _file_entry(data: bytes) -> Dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _tensor_bytes(tensors: Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    return safetensors.torch.save(_tensors_for_saving(tensors), metadata=metadata)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def save_tensors(path: str, tensors: Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Atomically write a safetensors file."""
    atomic_write_bytes(path, _tensor_bytes(tensors, metadata))


def load_tensors(path: str, device: str | torch.device = "cpu") -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never unpickles). Missing: FileNotFoundError; damaged: CheckpointError;
    both name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing")
    try:
        return safetensors.torch.load_file(path, device=str(device))
    except safetensors.SafetensorError as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None


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


def parse_step_dir(name: str) -> Optional[Tuple[int, int]]:
    """(step, revision) of a numbered checkpoint directory name ("step_00000100", "step_00000100.r2"), else None."""
    m = _STEP_DIR.match(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def step_dirs(root: str) -> List[str]:
    """Names of the numbered checkpoint directories under ``root``, newest (step, revision) first."""
    if not os.path.isdir(root):
        return []
    found = [(parse_step_dir(e), e) for e in os.listdir(root)]
    return [e for key, e in sorted((k, e) for k, e in found if k is not None and
                                   os.path.isdir(os.path.join(root, e)))[::-1]]


def save_checkpoint(root: str, *, step: int, model: torch.nn.Module, config: Mapping[str, Any],
                    discriminator: Optional[torch.nn.Module] = None,
                    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
                    rng_states: Optional[list] = None, state: Optional[Mapping[str, Any]] = None,
                    keep: bool = False) -> str:
    """Publish a complete checkpoint under ``root`` and point ``root/last.json`` at it. Returns its directory.

    rng_states: one ``capture_rng_state()`` per rank (default: this process's only).
    state: extra JSON-able training state (epoch, ...), stored in state.json beside ``step``.
    keep: keep the older numbered checkpoints (otherwise those older than this one are deleted once it is
        published; newer ones, e.g. a damaged later checkpoint that a resume fell back from, are kept).
    """
    os.makedirs(root, exist_ok=True)
    name = step_dir_name(step)
    final = os.path.join(root, name)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root)
    manifest: Dict[str, Dict[str, Any]] = {}

    def write(file: str, data: bytes) -> None:
        atomic_write_bytes(os.path.join(tmp, file), data)
        manifest[file] = _file_entry(data)

    try:
        write(MODEL_FILE, _tensor_bytes(model.state_dict()))
        if discriminator is not None:
            write(DISC_FILE, _tensor_bytes(discriminator.state_dict()))
        if optimizers:
            tensors, rest = {}, {}
            for opt_name, opt in optimizers.items():
                if "/" in opt_name:
                    raise ValueError(f"optimizer names must not contain '/', got {opt_name!r}")
                t, r = flatten_optimizer_state(opt_name, opt.state_dict())
                tensors.update(t)
                rest[opt_name] = r
            write(OPTIM_FILE, _tensor_bytes(tensors))
            write(OPTIM_JSON, _json_bytes(rest))
        write(CONFIG_FILE, _json_bytes(dict(config)))
        write(STATE_FILE, _json_bytes({
            "step": int(step), "rng": rng_states if rng_states is not None else [capture_rng_state()],
            **dict(state or {})}))
        atomic_write_json(os.path.join(tmp, MANIFEST_FILE), {"format": 1, "step": int(step), "files": manifest,
                                                             "digest": _manifest_digest(manifest)})
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


def _remove(path: str) -> None:
    """Delete a directory so that no half-deleted copy keeps a checkpoint's name: rename it away first."""
    hidden = os.path.join(os.path.dirname(path), ".tmp-delete-" + os.path.basename(path))
    try:
        os.replace(path, hidden)
    except OSError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def _cleanup(root: str, current: str, keep: bool) -> None:
    """Remove leftover temp entries and (unless ``keep``) the numbered checkpoints older than ``current``."""
    now = parse_step_dir(current)
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if entry.startswith(".tmp-"):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            continue
        key = parse_step_dir(entry)
        if keep or key is None or now is None or key >= now or not os.path.isdir(path):
            continue
        _remove(path)
    _fsync_dir(root)


# --- reading and checking ------------------------------------------------------------------------------------------

def read_json(path: str) -> Any:
    """A JSON file; FileNotFoundError / CheckpointError (naming the file) when it is missing or damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON, truncated or corrupted ({e})") from None


def sha256_of_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_digest(files: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's file table (canonical JSON), stored beside it so a damaged table is caught."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def read_manifest(ckpt_dir: str) -> Optional[Dict[str, Dict[str, Any]]]:
    """{file: {"bytes", "sha256"}} of a checkpoint, or None for one written before manifests existed."""
    path = os.path.join(ckpt_dir, MANIFEST_FILE)
    if not os.path.lexists(path):
        return None
    record = read_json(path)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "bytes" in v and "sha256" in v
                                              for v in files.values()):
        raise CheckpointError(f"{path}: not a checkpoint manifest (no 'files' table)")
    if record.get("digest") != _manifest_digest(files):
        raise CheckpointError(f"{path}: damaged (its file table does not match its digest)")
    return files


def checkpoint_problem(ckpt_dir: str, need: Optional[Iterable[str]] = None) -> Optional[str]:
    """None when the checkpoint ``ckpt_dir`` holds every file in ``need`` intact, else one line naming the first
    file at fault and what is wrong with it.

    need: file names (default: every file the manifest lists; for a checkpoint without manifest, ``LEGACY_FILES``).
    Files listed in the manifest are checked by size and SHA-256; others only for being present.
    """
    if not os.path.isdir(ckpt_dir):
        return f"{ckpt_dir}: missing"
    try:
        manifest = read_manifest(ckpt_dir)
    except (CheckpointError, FileNotFoundError) as e:
        return str(e)
    names = list(need) if need is not None else (sorted(manifest) if manifest is not None else list(LEGACY_FILES))
    for name in names:
        path = os.path.join(ckpt_dir, name)
        if not os.path.isfile(path):
            return f"{path}: missing"
        entry = (manifest or {}).get(name)
        if entry is None:
            continue
        try:
            size = os.path.getsize(path)
            if size != entry["bytes"]:
                return f"{path}: {size} bytes, but {entry['bytes']} were written (truncated or overwritten)"
            if sha256_of_file(path) != entry["sha256"]:
                return f"{path}: contents changed since it was written (SHA-256 mismatch: corrupted)"
        except OSError as e:
            return f"{path}: cannot be read ({e.strerror or e})"
    return None


def verify_files(ckpt_dir: str, need: Iterable[str]) -> None:
    """Raise (FileNotFoundError for a missing file, else CheckpointError) unless every file in ``need`` is intact."""
    problem = checkpoint_problem(ckpt_dir, need)
    if problem is not None:
        raise (FileNotFoundError if problem.endswith(": missing") else CheckpointError)(problem)


def find_checkpoint(root: str, need: Optional[Iterable[str]] = None) -> Tuple[Optional[str], List[str]]:
    """The checkpoint to use under a checkpoint root, and notes on anything unexpected (empty when ``last.json``
    names a complete checkpoint).

    ``last.json``'s checkpoint when it is complete (see ``checkpoint_problem`` for ``need``); otherwise -- pointer
    missing, unreadable, or naming a missing / damaged directory -- the newest complete numbered directory.
    None when there is no complete checkpoint.
    """
    need = tuple(need) if need is not None else None
    notes: List[str] = []
    pointer = os.path.join(root, LAST)
    tried = set()
    if os.path.lexists(pointer):
        try:
            record = read_json(pointer)
            name = record["dir"] if isinstance(record, dict) else None
            if not isinstance(name, str) or parse_step_dir(name) is None:
                raise CheckpointError(f"{pointer}: no checkpoint directory name in it ({record!r:.80})")
        except (CheckpointError, FileNotFoundError) as e:
            notes.append(str(e))
        else:
            target = os.path.join(root, name)
            problem = checkpoint_problem(target, need)
            if problem is None:
                return target, notes
            tried.add(name)
            notes.append(f"{pointer} names {name}, which is unusable: {problem}")
    elif step_dirs(root):
        notes.append(f"{pointer}: missing")
    for name in step_dirs(root):
        if name in tried:
            continue
        target = os.path.join(root, name)
        problem = checkpoint_problem(target, need)
        if problem is None:
            notes.append(f"using the newest complete checkpoint instead: {target}")
            return target, notes
        notes.append(f"skipping {name}: {problem}")
    return None, notes


def holds_checkpoints(root: str) -> bool:
    """True when ``root`` has a last.json or any numbered checkpoint directory (complete or not)."""
    return os.path.lexists(os.path.join(root, LAST)) or bool(step_dirs(root))


def _warn(note: str) -> None:
    warnings.warn(note, CheckpointWarning, stacklevel=3)


def resolve_checkpoint(path: str, need: Optional[Iterable[str]] = EVAL_FILES,
                       on_note: Callable[[str], None] = _warn) -> str:
    """A checkpoint directory from: itself, a checkpoint root, or a run dir (``path/checkpoints``).

    For a root, ``find_checkpoint(root, need)`` picks it; its notes (why not ``last.json``'s) go to ``on_note``
    (default: a ``CheckpointWarning``). FileNotFoundError / CheckpointError (naming the file at fault) otherwise.
    """
    if os.path.isfile(os.path.join(path, MODEL_FILE)) or os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        return path
    for root in (path, os.path.join(path, "checkpoints")):
        if not holds_checkpoints(root):
            continue
        target, notes = find_checkpoint(root, need)
        if target is None:
            raise FileNotFoundError(f"no complete checkpoint in {root}: " + "; ".join(notes))
        for note in notes:
            on_note(note)
        return target
    raise FileNotFoundError(f"no checkpoint at {path!r}: expected {MODEL_FILE}, {LAST} or checkpoints/{LAST}")


def has_checkpoint(path: str) -> bool:
    try:
        resolve_checkpoint(path, on_note=lambda note: None)
        return True
    except (FileNotFoundError, CheckpointError):
        return False


def checkpoint_step(ckpt_dir: str) -> Optional[int]:
    """The step of a checkpoint from its directory name, else from its state.json; None when neither tells."""
    key = parse_step_dir(os.path.basename(os.path.normpath(ckpt_dir)))
    if key is not None:
        return key[0]
    try:
        step = read_json(os.path.join(ckpt_dir, STATE_FILE)).get("step")
    except (CheckpointError, FileNotFoundError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def load_checkpoint(path: str, *, model: Optional[torch.nn.Module] = None,
                    discriminator: Optional[torch.nn.Module] = None,
                    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
                    map_location: str | torch.device = "cpu", strict: bool = True) -> Dict[str, Any]:
    """Load whatever is given from the checkpoint at ``path`` (see ``resolve_checkpoint``).

    Returns {"dir", "config", "state"}: the checkpoint directory, its config dict and its state.json (step, rng, ...).
    RNG states are not restored here: call ``restore_rng_state(state["rng"][rank])``. Every file read is checked
    against the manifest first (FileNotFoundError / CheckpointError naming the file).
    """
    need = [CONFIG_FILE, STATE_FILE]
    if model is not None:
        need.append(MODEL_FILE)
    if discriminator is not None:
        need.append(DISC_FILE)
    if optimizers:
        need += [OPTIM_FILE, OPTIM_JSON]
    ckpt = resolve_checkpoint(path, need)
    verify_files(ckpt, need)
    if model is not None:
        model.load_state_dict(load_tensors(os.path.join(ckpt, MODEL_FILE), map_location), strict=strict)
    if discriminator is not None:
        discriminator.load_state_dict(load_tensors(os.path.join(ckpt, DISC_FILE), map_location), strict=strict)
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
    """A trained ``PQGAN`` (eval mode) from a checkpoint directory, checkpoint root or run directory. Reads only
    config.json and model.safetensors (both checked against the manifest)."""
    from .config import Config
    from .model import PQGAN

    ckpt = resolve_checkpoint(path, EVAL_FILES)
    verify_files(ckpt, EVAL_FILES)
    config = Config.from_dict(read_json(os.path.join(ckpt, CONFIG_FILE)))
    model = PQGAN(config.model)
    model.load_state_dict(load_tensors(os.path.join(ckpt, MODEL_FILE), map_location))
    return model.to(map_location).eval()
