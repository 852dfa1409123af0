"""pqgan.checkpoint without training: the files a checkpoint holds, optimiser state through safetensors + JSON,
RNG states, atomic publication, revisions, cleanup, and resolving / loading errors (fast, tiny modules)."""
import hashlib
import json
import os
import random

import numpy as np
import pytest
import torch

from pqgan import checkpoint as ckpt


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def _stepped_adam(net):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.5, 0.9), weight_decay=1e-3)
    for _ in range(3):
        net(torch.randn(5, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return opt


def test_layout_and_json_contents(tmp_path):
    net, disc = _net(), _net(1)
    opt = _stepped_adam(net)
    path = ckpt.save_checkpoint(str(tmp_path), step=12, model=net, discriminator=disc, optimizers={"g": opt},
                                config={"name": "x", "lr": 0.5}, state={"epoch": 3})
    assert path == str(tmp_path / "step_00000012")
    files = ["config.json", "discriminator.safetensors", "model.safetensors", "optimizer.json",
             "optimizer.safetensors", "state.json"]
    assert sorted(os.listdir(path)) == sorted(files + ["manifest.json"])
    manifest = ckpt.read_manifest(path)                                # size + SHA-256 of every other file
    assert sorted(manifest) == files
    for name in files:
        data = open(os.path.join(path, name), "rb").read()
        assert manifest[name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert json.load(open(tmp_path / "last.json")) == {"step": 12, "dir": "step_00000012"}
    assert json.load(open(os.path.join(path, "config.json"))) == {"name": "x", "lr": 0.5}
    state = json.load(open(os.path.join(path, "state.json")))
    assert state["step"] == 12 and state["epoch"] == 3 and len(state["rng"]) == 1
    tensors = ckpt.load_tensors(os.path.join(path, "model.safetensors"))
    assert tensors.keys() == net.state_dict().keys()
    assert all(torch.equal(tensors[k], v) for k, v in net.state_dict().items())
    opt_tensors = ckpt.load_tensors(os.path.join(path, "optimizer.safetensors"))
    assert sorted(opt_tensors) == sorted(f"g/state/{pid}/{key}" for pid in range(4)
                                         for key in ("step", "exp_avg", "exp_avg_sq"))
    rest = json.load(open(os.path.join(path, "optimizer.json")))["g"]
    assert rest["state_keys"] == ["0", "1", "2", "3"] and rest["tuple_keys"] == ["betas"]
    assert rest["param_groups"][0]["betas"] == [0.5, 0.9] and rest["param_groups"][0]["lr"] == 0.01


def test_optimizer_state_round_trip_is_exact(tmp_path):
    net = _net()
    opt = _stepped_adam(net)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(5, 3)).sum().backward()
    sgd.step()
    ckpt.save_checkpoint(str(tmp_path), step=1, model=net, config={}, optimizers={"adam": opt, "sgd": sgd})
    net2 = _net(5)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1.0)
    sgd2 = torch.optim.SGD(net2.parameters(), lr=1.0, momentum=0.0)
    info = ckpt.load_checkpoint(str(tmp_path), model=net2, optimizers={"adam": opt2, "sgd": sgd2})
    assert info["dir"] == str(tmp_path / "step_00000001") and info["state"]["step"] == 1 and info["config"] == {}
    for a, b in ((opt, opt2), (sgd, sgd2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        assert isinstance(sb["param_groups"][0].get("betas", ()), tuple)
        assert sa["state"].keys() == sb["state"].keys()
        for pid in sa["state"]:
            assert sa["state"][pid].keys() == sb["state"][pid].keys()
            for key, value in sa["state"][pid].items():
                assert torch.equal(value, sb["state"][pid][key]) if torch.is_tensor(value) else \
                    value == sb["state"][pid][key]
    assert all(torch.equal(v, net2.state_dict()[k]) for k, v in net.state_dict().items())


def test_flatten_keeps_non_tensor_state_and_string_ids():
    sd = {"state": {0: {"step": torch.tensor(3.0), "note": "x", "count": 2}, "extra": {"m": torch.ones(2)}},
          "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, "extra"]}]}
    tensors, rest = ckpt.flatten_optimizer_state("o", sd)
    assert sorted(tensors) == ["o/state/0/step", "o/state/extra/m"]
    rest = json.loads(json.dumps(rest))
    back = ckpt.unflatten_optimizer_state("o", tensors, rest)
    assert back["param_groups"] == [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, "extra"]}]
    assert set(back["state"]) == {0, "extra"}
    assert back["state"][0]["note"] == "x" and back["state"][0]["count"] == 2
    assert torch.equal(back["state"][0]["step"], torch.tensor(3.0))
    assert torch.equal(back["state"]["extra"]["m"], torch.ones(2))
    # a prefix of another id must not match: "o/state/1/" vs "o/state/10/"
    sd = {"state": {1: {"a": torch.zeros(1)}, 10: {"a": torch.ones(1)}}, "param_groups": []}
    back = ckpt.unflatten_optimizer_state("o", *ckpt.flatten_optimizer_state("o", sd))
    assert back["state"][1]["a"].item() == 0.0 and back["state"][10]["a"].item() == 1.0
    assert ckpt._pid("-3") == -3 and ckpt._pid("a") == "a"


def test_rng_state_round_trip_through_json_restores_every_stream():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    state = json.loads(json.dumps(ckpt.capture_rng_state()))
    assert set(state) == {"torch", "cuda", "numpy", "python"}
    a = (torch.rand(4), torch.randint(100, (4,)), np.random.rand(4), random.random())
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    ckpt.restore_rng_state(state)
    b = (torch.rand(4), torch.randint(100, (4,)), np.random.rand(4), random.random())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]


def test_explicit_rng_states_per_rank_are_stored(tmp_path):
    states = [{"rank": 0}, {"rank": 1}]
    path = ckpt.save_checkpoint(str(tmp_path), step=3, model=_net(), config={}, rng_states=states)
    assert ckpt.read_json(os.path.join(path, "state.json"))["rng"] == states


def test_same_step_twice_gets_a_revision_and_keep(tmp_path):
    root = str(tmp_path)
    ckpt.save_checkpoint(root, step=5, model=_net(), config={}, keep=True)
    second = ckpt.save_checkpoint(root, step=5, model=_net(1), config={}, keep=True)
    assert os.path.basename(second) == "step_00000005.r1"
    third = ckpt.save_checkpoint(root, step=5, model=_net(2), config={}, keep=True)
    assert os.path.basename(third) == "step_00000005.r2"
    assert ckpt.read_json(os.path.join(root, "last.json")) == {"step": 5, "dir": "step_00000005.r2"}
    ckpt.save_checkpoint(root, step=6, model=_net(), config={}, keep=True)
    assert sorted(os.listdir(root)) == ["last.json", "step_00000005", "step_00000005.r1", "step_00000005.r2",
                                        "step_00000006"]
    os.makedirs(os.path.join(root, ".tmp-step_00000007-crashed"))
    os.makedirs(os.path.join(root, "notes"))
    ckpt.save_checkpoint(root, step=7, model=_net(), config={})          # keep=False: older steps go
    assert sorted(os.listdir(root)) == ["last.json", "notes", "step_00000007"]


def test_failed_save_leaves_the_previous_checkpoint_and_no_temp_dir(tmp_path):
    root = str(tmp_path)
    ckpt.save_checkpoint(root, step=1, model=_net(), config={})
    with pytest.raises(ValueError, match="must not contain '/'"):
        ckpt.save_checkpoint(root, step=2, model=_net(), config={}, optimizers={"a/b": _stepped_adam(_net())})
    assert sorted(os.listdir(root)) == ["last.json", "step_00000001"]
    assert ckpt.resolve_checkpoint(root) == os.path.join(root, "step_00000001")


def test_resolve_from_dir_root_or_run(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path / "checkpoints"), step=4, model=_net(), config={})
    for where in (path, str(tmp_path / "checkpoints"), str(tmp_path)):
        assert ckpt.resolve_checkpoint(where) == path
        assert ckpt.has_checkpoint(where)
    assert not ckpt.has_checkpoint(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.resolve_checkpoint(str(tmp_path / "nothing"))
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.safetensors: missing"):
        ckpt.resolve_checkpoint(str(tmp_path))


def test_load_errors_name_what_is_missing(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path), step=1, model=_net(), config={}, optimizers={"g": _stepped_adam(
        _net())})
    with pytest.raises(FileNotFoundError, match="discriminator.safetensors: missing"):
        ckpt.load_checkpoint(path, discriminator=_net())
    opt = torch.optim.Adam(_net().parameters())
    with pytest.raises(KeyError, match="no state for optimizer 'd'"):
        ckpt.load_checkpoint(path, optimizers={"d": opt})
    partial = torch.nn.Sequential(torch.nn.Linear(3, 4))               # lacks the BatchNorm entries
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ckpt.load_checkpoint(path, model=partial)
    ckpt.load_checkpoint(path, model=partial, strict=False)             # non-strict: the matching keys load
    assert torch.equal(partial[0].weight, _net().state_dict()["0.weight"])


def test_atomic_write_replaces_whole_files(tmp_path):
    target = str(tmp_path / "f.json")
    ckpt.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert open(target).read() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    ckpt.atomic_write_bytes(target, b"xyz")
    assert open(target, "rb").read() == b"xyz" and os.listdir(tmp_path) == ["f.json"]


def test_saved_tensors_do_not_alias(tmp_path):
    base = torch.arange(6.0)
    ckpt.save_tensors(str(tmp_path / "t.safetensors"), {"a": base, "b": base[:3], "c": base.view(2, 3).t()},
                      metadata={"k": "v"})
    out = ckpt.load_tensors(str(tmp_path / "t.safetensors"))
    assert torch.equal(out["a"], base) and torch.equal(out["b"], base[:3]) and torch.equal(out["c"],
                                                                                         base.view(2, 3).t())


def test_load_pretrained_builds_the_model_in_eval_mode(tmp_path):
    from pqgan import PQGAN
    from pqgan.config import apply_overrides, load_config
    cfg = apply_overrides(load_config("tiny_f8_pq"), ["model.resolution=32", "model.ch=16", "model.z_channels=16"])
    torch.manual_seed(0)
    model = PQGAN(cfg.model)
    ckpt.save_checkpoint(str(tmp_path / "checkpoints"), step=1, model=model, config=cfg.to_dict())
    loaded = ckpt.load_pretrained(str(tmp_path))
    assert isinstance(loaded, PQGAN) and not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
