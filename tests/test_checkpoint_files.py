"""pqgan.checkpoint without training: the files a checkpoint holds, optimiser state through safetensors + JSON,
RNG states, atomic publication, revisions, cleanup, and resolving / loading errors (fast, tiny modules)."""
import hashlib
import json
import os
import random
import warnings

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


# --- finding a usable checkpoint: exact notes -----------------------------------------------------------------

def _root_with(tmp_path, steps):
    root = str(tmp_path / "ck")
    for s in steps:
        ckpt.save_checkpoint(root, step=s, model=_net(s), config={"s": s}, keep=True)
    return root


def _truncate(path, nbytes=10):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:nbytes])
    return len(data)


def test_find_checkpoint_prefers_last_json_and_says_nothing(tmp_path):
    root = _root_with(tmp_path, [1, 2])
    assert ckpt.find_checkpoint(root) == (os.path.join(root, "step_00000002"), [])
    assert ckpt.find_checkpoint(str(tmp_path / "nothing")) == (None, [])


def test_find_checkpoint_without_pointer_takes_the_newest(tmp_path):
    root = _root_with(tmp_path, [1, 3, 2])
    os.remove(os.path.join(root, "last.json"))
    target, notes = ckpt.find_checkpoint(root)
    assert target == os.path.join(root, "step_00000003")
    assert notes == [f"{root}/last.json: missing", f"using the newest complete checkpoint instead: {target}"]


@pytest.mark.parametrize("content,note", [
    (b"{not json", "not valid JSON, truncated or corrupted"),
    (b'{"dir": "elsewhere"}', "no checkpoint directory name in it ({'dir': 'elsewhere'})"),
    (b'["step_00000001"]', "no checkpoint directory name in it (['step_00000001'])"),
    (b'{"dir": 5}', "no checkpoint directory name in it ({'dir': 5})"),
])
def test_find_checkpoint_with_a_bad_pointer(tmp_path, content, note):
    root = _root_with(tmp_path, [1, 2])
    open(os.path.join(root, "last.json"), "wb").write(content)
    target, notes = ckpt.find_checkpoint(root)
    assert target == os.path.join(root, "step_00000002") and len(notes) == 2
    assert notes[0].startswith(f"{root}/last.json: ") and note in notes[0]
    assert notes[1] == f"using the newest complete checkpoint instead: {target}"


def test_find_checkpoint_skips_damaged_ones_and_names_each_problem(tmp_path):
    root = _root_with(tmp_path, [1, 2, 3])
    size3 = _truncate(os.path.join(root, "step_00000003", "model.safetensors"))
    os.remove(os.path.join(root, "step_00000002", "state.json"))
    target, notes = ckpt.find_checkpoint(root)
    assert target == os.path.join(root, "step_00000001")
    m3 = os.path.join(root, "step_00000003", "model.safetensors")
    assert notes == [
        f"{root}/last.json names step_00000003, which is unusable: {m3}: 10 bytes, but {size3} were written "
        "(truncated or overwritten)",
        f"skipping step_00000002: {root}/step_00000002/state.json: missing",
        f"using the newest complete checkpoint instead: {target}"]
    # asking only for what evaluation reads, step 2 (no state.json) is fine
    target, notes = ckpt.find_checkpoint(root, need=ckpt.EVAL_FILES)
    assert target == os.path.join(root, "step_00000002") and len(notes) == 2
    os.remove(os.path.join(root, "step_00000001", "config.json"))
    os.remove(os.path.join(root, "step_00000002", "config.json"))
    target, notes = ckpt.find_checkpoint(root)
    assert target is None and [n.split(":")[0] for n in notes[1:]] == ["skipping step_00000002",
                                                                       "skipping step_00000001"]


def test_checkpoint_problem_by_kind(tmp_path):
    root = _root_with(tmp_path, [1])
    d = os.path.join(root, "step_00000001")
    assert ckpt.checkpoint_problem(d) is None and ckpt.checkpoint_problem(d, ["model.safetensors"]) is None
    assert ckpt.checkpoint_problem(os.path.join(root, "nope")) == f"{root}/nope: missing"
    assert ckpt.checkpoint_problem(d, ["extra.bin"]) == f"{d}/extra.bin: missing"
    open(os.path.join(d, "extra.bin"), "wb").write(b"x")                 # present, not in the manifest: fine
    assert ckpt.checkpoint_problem(d, ["extra.bin"]) is None
    cfg = os.path.join(d, "config.json")
    data = bytearray(open(cfg, "rb").read())
    data[3] ^= 1                                                         # same size, one bit flipped
    open(cfg, "wb").write(bytes(data))
    assert ckpt.checkpoint_problem(d) == f"{cfg}: contents changed since it was written (SHA-256 mismatch: corrupted)"
    assert ckpt.checkpoint_problem(d, ["model.safetensors"]) is None       # only what is needed is checked
    with pytest.raises(ckpt.CheckpointError, match="SHA-256 mismatch"):
        ckpt.verify_files(d, ["config.json"])
    with pytest.raises(FileNotFoundError, match="extra2.bin: missing"):
        ckpt.verify_files(d, ["extra2.bin"])


def test_manifest_damage(tmp_path):
    root = _root_with(tmp_path, [1])
    d = os.path.join(root, "step_00000001")
    man = os.path.join(d, "manifest.json")
    record = json.load(open(man))
    assert record["format"] == 1 and record["step"] == 1 and set(record) == {"format", "step", "files", "digest"}
    assert ckpt.read_manifest(d) == record["files"]
    record["files"]["model.safetensors"]["bytes"] += 1
    open(man, "w").write(json.dumps(record))
    assert ckpt.checkpoint_problem(d) == f"{man}: damaged (its file table does not match its digest)"
    for bad in ({"files": []}, {"files": {"a": {"bytes": 1}}}, [1], {"nofiles": 1}):
        open(man, "w").write(json.dumps(bad))
        assert ckpt.checkpoint_problem(d) == f"{man}: not a checkpoint manifest (no 'files' table)"
    os.remove(man)                                                        # a checkpoint from before manifests
    assert ckpt.read_manifest(d) is None and ckpt.checkpoint_problem(d) is None
    os.remove(os.path.join(d, "state.json"))
    assert ckpt.checkpoint_problem(d) == f"{d}/state.json: missing"       # the legacy file list


def test_step_dirs_order_and_step_of_a_checkpoint(tmp_path):
    root = tmp_path / "r"
    for name in ["step_00000002", "step_00000010", "step_00000002.r1", "step_00000002.r10", "other", "step_x"]:
        (root / name).mkdir(parents=True)
    (root / "step_00000099").write_text("a file, not a checkpoint")
    assert ckpt.step_dirs(str(root)) == ["step_00000010", "step_00000002.r10", "step_00000002.r1",
                                         "step_00000002"]
    assert ckpt.step_dirs(str(tmp_path / "none")) == []
    assert ckpt.parse_step_dir("step_00000007.r3") == (7, 3) and ckpt.parse_step_dir("step_7") == (7, 0)
    assert ckpt.parse_step_dir("xstep_00000007") is None and ckpt.parse_step_dir("step_1.r") is None
    assert ckpt.holds_checkpoints(str(root)) and not ckpt.holds_checkpoints(str(tmp_path / "none"))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "last.json").write_text("{}")
    assert ckpt.holds_checkpoints(str(tmp_path / "p"))
    assert ckpt.checkpoint_step(str(root / "step_00000010")) == 10
    assert ckpt.checkpoint_step(str(root / "step_00000002.r1") + "/") == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    assert ckpt.checkpoint_step(str(mine)) is None                        # no name, no state.json
    (mine / "state.json").write_text('{"step": 42}')
    assert ckpt.checkpoint_step(str(mine)) == 42
    (mine / "state.json").write_text('{"step": "42"}')
    assert ckpt.checkpoint_step(str(mine)) is None
    (mine / "state.json").write_text('[1]')
    assert ckpt.checkpoint_step(str(mine)) is None
    (mine / "state.json").write_text('{"step"')
    assert ckpt.checkpoint_step(str(mine)) is None


def test_resolve_reports_fallbacks_through_on_note_or_a_warning(tmp_path):
    root = _root_with(tmp_path, [1, 2])
    _truncate(os.path.join(root, "step_00000002", "config.json"), 3)
    notes = []
    assert ckpt.resolve_checkpoint(root, on_note=notes.append) == os.path.join(root, "step_00000001")
    assert len(notes) == 2 and "step_00000002" in notes[0]
    with pytest.warns(ckpt.CheckpointWarning) as caught:
        ckpt.resolve_checkpoint(root)
    assert [str(w.message) for w in caught] == notes
    d1 = os.path.join(root, "step_00000001")
    os.remove(os.path.join(d1, "model.safetensors"))
    assert ckpt.resolve_checkpoint(d1) == d1                               # a directory with a manifest is itself
    with pytest.raises(FileNotFoundError, match=f"no complete checkpoint in {root}: "):
        ckpt.resolve_checkpoint(root)
    assert not ckpt.has_checkpoint(root)


def test_read_json_and_load_tensors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"/a\.json: missing$"):
        ckpt.read_json(str(tmp_path / "a.json"))
    (tmp_path / "b.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ckpt.CheckpointError, match=r"/b\.json: not valid JSON, truncated or corrupted"):
        ckpt.read_json(str(tmp_path / "b.json"))
    with pytest.raises(FileNotFoundError, match=r"/t\.safetensors: missing$"):
        ckpt.load_tensors(str(tmp_path / "t.safetensors"))
    (tmp_path / "t.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ckpt.CheckpointError, match=r"/t\.safetensors: not a valid safetensors file"):
        ckpt.load_tensors(str(tmp_path / "t.safetensors"))
    ckpt.save_tensors(str(tmp_path / "u.safetensors"), {"w": torch.ones(2)})
    assert torch.equal(ckpt.load_tensors(str(tmp_path / "u.safetensors"), device="cpu")["w"], torch.ones(2))


def test_load_checkpoint_checks_only_what_it_reads(tmp_path):
    net = _net()
    opt = _stepped_adam(net)
    path = ckpt.save_checkpoint(str(tmp_path), step=1, model=net, config={}, optimizers={"g": opt},
                                discriminator=_net(1))
    _truncate(os.path.join(path, "optimizer.safetensors"))
    other = _net(3)
    info = ckpt.load_checkpoint(path, model=other, discriminator=_net(4))   # the optimizer file is not read
    assert info["state"]["step"] == 1 and torch.equal(other[0].weight, net[0].weight)
    with pytest.raises(ckpt.CheckpointError, match="optimizer.safetensors: 10 bytes"):
        ckpt.load_checkpoint(path, optimizers={"g": torch.optim.Adam(_net().parameters())})
    _truncate(os.path.join(path, "discriminator.safetensors"))
    with pytest.raises(ckpt.CheckpointError, match="discriminator.safetensors: 10 bytes"):
        ckpt.load_checkpoint(path, discriminator=_net())
    ckpt.load_checkpoint(path, model=_net())
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        _truncate(os.path.join(path, "model.safetensors"))
        ckpt.load_checkpoint(path, model=_net())
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load_pretrained(path)


def test_atomic_write_failure_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        ckpt.atomic_write_bytes(str(target), "not bytes")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_cleanup_removes_stray_temp_files_and_keeps_newer_checkpoints(tmp_path):
    root = _root_with(tmp_path, [5])
    open(os.path.join(root, ".tmp-last.json-abc"), "w").write("x")
    os.makedirs(os.path.join(root, "step_00000009"))                     # newer than the one being published
    ckpt.save_checkpoint(root, step=6, model=_net(), config={})
    assert sorted(os.listdir(root)) == ["last.json", "step_00000006", "step_00000009"]


def test_numpy_and_python_rng_states_restore_exactly():
    np.random.seed(3)
    np.random.randn(1)                                                   # leaves a cached gaussian
    random.seed(3)
    random.gauss(0, 1)
    state = json.loads(json.dumps(ckpt.capture_rng_state()))
    want_np, want_py = np.random.get_state(), random.getstate()
    a = (np.random.randn(3), random.gauss(0, 1), random.random())
    np.random.seed(9)
    random.seed(9)
    ckpt.restore_rng_state(state)
    got_np = np.random.get_state()
    assert got_np[0] == want_np[0] and np.array_equal(got_np[1], want_np[1]) and got_np[1].dtype == np.uint32
    assert got_np[2:] == want_np[2:] and random.getstate() == want_py
    assert np.array_equal(np.random.randn(3), a[0]) and random.gauss(0, 1) == a[1] and random.random() == a[2]
    assert state["cuda"] == [] or torch.cuda.is_available()


def test_temp_names_live_beside_their_targets(tmp_path, monkeypatch):
    moves = []
    real_replace = os.replace
    monkeypatch.setattr(ckpt.os, "replace", lambda s, d: moves.append((s, d)) or real_replace(s, d))
    ckpt.atomic_write_bytes(str(tmp_path / "f.bin"), b"x")
    src, dst = moves[-1]
    assert os.path.dirname(src) == str(tmp_path) and os.path.basename(src).startswith(".tmp-f.bin-")
    moves.clear()
    root = str(tmp_path / "ck")
    ckpt.save_checkpoint(root, step=1, model=_net(), config={})
    dir_moves = [(s, d) for s, d in moves if d == os.path.join(root, "step_00000001")]
    assert len(dir_moves) == 1 and os.path.dirname(dir_moves[0][0]) == root
    assert os.path.basename(dir_moves[0][0]).startswith(".tmp-step_00000001-")


def test_save_tensors_keeps_metadata(tmp_path):
    from safetensors import safe_open
    ckpt.save_tensors(str(tmp_path / "m.safetensors"), {"a": torch.ones(1)}, metadata={"k": "v"})
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert f.metadata() == {"k": "v"}


def test_unflatten_tolerates_older_records():
    t = {"o/state/0/a": torch.ones(1)}
    back = ckpt.unflatten_optimizer_state("o", t, {"state": {}, "state_keys": ["0"],
                                                   "param_groups": [{"betas": [0.9, 0.99]}]})
    assert torch.equal(back["state"][0]["a"], torch.ones(1)) and back["param_groups"] == [{"betas": [0.9, 0.99]}]


def test_cleanup_visits_every_entry(tmp_path):
    root = _root_with(tmp_path, [1])
    for i in range(4):
        open(os.path.join(root, f".tmp-x{i}"), "w").write("x")
    ckpt.save_checkpoint(root, step=2, model=_net(), config={})
    assert sorted(os.listdir(root)) == ["last.json", "step_00000002"]


def test_readers_check_only_the_files_they_need(tmp_path):
    root = str(tmp_path / "ck")
    net = _net()
    ckpt.save_checkpoint(root, step=1, model=net, config={}, optimizers={"g": _stepped_adam(_net())})
    d = os.path.join(root, "step_00000001")
    _truncate(os.path.join(d, "optimizer.safetensors"))
    os.remove(os.path.join(d, "state.json"))
    # last.json names a checkpoint that lacks state.json and has a damaged optimizer: fine for evaluation
    assert ckpt.find_checkpoint(root, need=ckpt.EVAL_FILES) == (d, [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.resolve_checkpoint(root) == d and ckpt.has_checkpoint(root)
    m = _net(5)
    with pytest.raises(FileNotFoundError, match="state.json: missing"):
        ckpt.load_checkpoint(root, model=m)                              # state.json is always read


def test_load_checkpoint_reads_state_checked_and_model_only_when_asked(tmp_path):
    root = str(tmp_path / "ck")
    net = _net()
    opt = _stepped_adam(net)
    ckpt.save_checkpoint(root, step=1, model=net, config={}, optimizers={"g": opt})
    d = os.path.join(root, "step_00000001")
    _truncate(os.path.join(d, "model.safetensors"))
    info = ckpt.load_checkpoint(d, optimizers={"g": torch.optim.Adam(_net().parameters())})   # model not read
    assert info["state"]["step"] == 1
    state = os.path.join(d, "state.json")
    text = open(state).read()
    open(state, "w").write(text.replace('"step": 1', '"step": 7'))        # same size, still valid JSON
    with pytest.raises(ckpt.CheckpointError, match="state.json: contents changed"):
        ckpt.load_checkpoint(d, optimizers={"g": torch.optim.Adam(_net().parameters())})


def test_has_checkpoint_and_load_pretrained_with_a_fallback_are_quiet(tmp_path):
    from pqgan import PQGAN
    from pqgan.config import apply_overrides, load_config
    cfg = apply_overrides(load_config("tiny_f8_pq"), ["model.resolution=32", "model.ch=16", "model.z_channels=16"])
    root = str(tmp_path / "checkpoints")
    model = PQGAN(cfg.model)
    ckpt.save_checkpoint(root, step=1, model=model, config=cfg.to_dict(), keep=True,
                         optimizers={"g": torch.optim.Adam(model.parameters())})
    ckpt.save_checkpoint(root, step=2, model=model, config=cfg.to_dict(), keep=True)
    _truncate(os.path.join(root, "step_00000002", "config.json"), 2)
    _truncate(os.path.join(root, "step_00000001", "optimizer.json"), 2)   # not needed for evaluation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.has_checkpoint(root)
    with pytest.warns(ckpt.CheckpointWarning):
        assert isinstance(ckpt.load_pretrained(root), PQGAN)              # falls back to step 1, says so
