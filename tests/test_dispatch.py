"""Dispatch: the backend a call asks for is the one whose functions run (spies on every registered backend
record), "auto" and the default/env overrides resolve as documented, and backend="triton" really launches Triton
kernels (a spy on the Triton launcher records each kernel by name)."""
import dataclasses
import sys

import pytest
import torch

import pqgan_kernels
from pqgan import ProductQuantizer
from pqgan_kernels import dispatch, reference

from kernel_checks import random_case

FIELDS = ("assign", "ema_stats", "codebook_grad", "ema_update")


@pytest.fixture
def calls(monkeypatch):
    """Replace every available backend's record by one whose functions log (backend, function) and then run the
    real function; returns the log."""
    log = []
    for name in pqgan_kernels.available_backends():
        real = dispatch.get_backend(name)

        def spy(field, fn, _name=name):
            def wrapped(*args, **kwargs):
                log.append((_name, field))
                return fn(*args, **kwargs)
            return wrapped
        spied = dataclasses.replace(real, **{f: spy(f, getattr(real, f)) for f in FIELDS
                                             if getattr(real, f) is not None})
        monkeypatch.setitem(dispatch._registry, name, spied)
    monkeypatch.setattr(dispatch, "_default", None)
    monkeypatch.delenv("PQGAN_BACKEND", raising=False)
    return log


def _all_ops(backend):
    x, cb = random_case(24, 3, 2, 5, seed=1)
    cb.requires_grad_(True)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend=backend)
    q.sum().backward()                                      # -> codebook_grad of the same backend
    pqgan_kernels.pq_ema_stats(x, idx, 5, backend=backend)
    state = (cb.detach().clone(), torch.ones(3, 5), cb.detach().clone())
    pqgan_kernels.pq_ema_update(x, idx, *state, decay=0.9, eps=1e-5, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_the_backend_asked_for_is_the_one_that_runs(backend, calls):
    if backend not in pqgan_kernels.available_backends():
        pytest.skip(f"backend {backend} unavailable: {pqgan_kernels.backend_info()[backend]}")
    _all_ops(backend)
    expected_update = "ema_update" if dispatch.get_backend(backend).ema_update is not None else "ema_stats"
    assert calls == [(backend, "assign"), (backend, "codebook_grad"), (backend, "ema_stats"),
                     (backend, expected_update)]


def test_auto_on_cpu_tensors_runs_the_first_of_auto_order(calls):
    x, cb = random_case(8, 2, 2, 3)
    expected = next(n for n in dispatch.auto_order(x.device, x, cb) if n in pqgan_kernels.available_backends())
    assert expected == ("cpu" if "cpu" in pqgan_kernels.available_backends() else "reference")
    pqgan_kernels.pq_assign(x, cb)
    assert calls == [(expected, "assign")]


def test_default_and_environment_override_auto_but_not_an_explicit_backend(calls, monkeypatch):
    x, cb = random_case(8, 2, 2, 3)
    monkeypatch.setenv("PQGAN_BACKEND", "reference")
    pqgan_kernels.pq_assign(x, cb)
    assert calls[-1] == ("reference", "assign")
    if "cpu" in pqgan_kernels.available_backends():
        pqgan_kernels.set_default_backend("cpu")            # set_default_backend beats the environment
        pqgan_kernels.pq_assign(x, cb)
        assert calls[-1] == ("cpu", "assign")
        pqgan_kernels.pq_assign(x, cb, backend="reference")  # an explicit argument beats both
        assert calls[-1] == ("reference", "assign")
        pqgan_kernels.set_default_backend("auto")
        monkeypatch.delenv("PQGAN_BACKEND")
        pqgan_kernels.pq_assign(x, cb)
        assert calls[-1] == ("cpu", "assign")
    assert len(calls) in (1, 4)


@pytest.mark.parametrize("ema", [0.9, None])
def test_the_layer_runs_its_backend_for_every_op(ema, calls):
    pq = ProductQuantizer(4, 2, 6, ema_decay=ema, backend="reference", kmeans_init=True)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = pq.train()(z)
    (out.quantized.sum() + out.loss).backward()
    assert {name for name, _ in calls} == {"reference"}
    fields = [f for _, f in calls]
    assert fields.count("assign") == 10 + 1                 # 10 Lloyd iterations of the k-means init + forward
    assert ("ema_update" in fields) == (ema is not None)
    assert ("codebook_grad" in fields) == (ema is None)


def test_unsupported_inputs_name_the_reason_instead_of_falling_back(calls):
    if "triton" not in pqgan_kernels.available_backends():
        pytest.skip("triton unavailable")
    x, cb = random_case(8, 2, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        pqgan_kernels.pq_assign(x, cb, backend="triton")
    assert calls == []
    pqgan_kernels.pq_assign(x, cb)                          # auto skips triton for fp64 and says which ran
    assert calls[0][0] == pqgan_kernels.resolved_backend(x, cb) != "triton"


def test_registry_rejects_unknown_names_and_reports_unavailable_ones(monkeypatch):
    fake = dataclasses.replace(dispatch.get_backend("reference"), name="tpu")
    with pytest.raises(ValueError, match="unknown backend name"):
        dispatch.register_backend(fake)
    monkeypatch.setattr(dispatch, "_unavailable", dict(dispatch._unavailable))
    monkeypatch.setattr(dispatch, "_registry", {k: v for k, v in dispatch._registry.items() if k != "cuda"})
    dispatch.mark_unavailable("cuda", "no device here")
    assert dispatch.backend_info()["cuda"] == "no device here"
    with pytest.raises(RuntimeError, match="no device here"):
        dispatch.get_backend("cuda")


def test_check_supports_device_and_reason():
    ref = dispatch.get_backend("reference")
    gpu_only = dataclasses.replace(ref, devices=("cuda",))
    assert "runs on cuda tensors, got cpu" in gpu_only.check_supports(torch.zeros(2, 2), None)
    assert ref.check_supports(torch.zeros(2, 2), None) is None
    picky = dataclasses.replace(ref, unsupported=lambda x, cb, distance: f"no {distance}")
    assert picky.check_supports(torch.zeros(2, 2), None, "cosine") == "no cosine"


@pytest.fixture
def triton_launches(monkeypatch):
    """Names of the Triton kernels launched (a spy on the interpreter's launcher: CPU machines only)."""
    if "triton" not in pqgan_kernels.available_backends() or torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1, no GPU)")
    from pqgan_kernels import triton_scatter
    kernel_type = type(triton_scatter._scatter_kernel)
    real_run = kernel_type.run
    launched = []

    def run(self, *args, **kwargs):
        launched.append(self.fn.__name__)
        return real_run(self, *args, **kwargs)
    monkeypatch.setattr(kernel_type, "run", run)
    return launched


def test_backend_triton_launches_triton_kernels(triton_launches):
    x, cb = random_case(24, 3, 2, 5, seed=2)
    q, idx = pqgan_kernels.pq_assign(x, cb, backend="triton")
    assert triton_launches and all("assign" in k for k in triton_launches)
    r_q, r_idx = reference.pq_assign(x, cb)
    assert torch.equal(idx, r_idx) and torch.equal(q, r_q)
    del triton_launches[:]
    pqgan_kernels.pq_ema_stats(x, idx, 5, backend="triton")
    assert triton_launches == ["_scatter_kernel"]
    del triton_launches[:]
    pqgan_kernels.pq_assign(x, cb, backend="reference")
    pqgan_kernels.pq_assign(x, cb, backend="cpu")
    assert triton_launches == []


# --- lazy loading and the registry, from a clean state --------------------------------------------------------

@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """dispatch with only 'reference' registered and every other backend provided by a throw-away module."""
    sources = {
        "pqgan_fake_missing": "import pqgan_no_such_dependency_xyz\n",
        "pqgan_fake_raises": "raise TypeError('boom')\n",
        "pqgan_fake_silent": "x = 1\n",
        "pqgan_fake_registers": ("import dataclasses\nfrom pqgan_kernels import dispatch\n"
                                 "dispatch.register_backend(dataclasses.replace(dispatch._registry['reference'], "
                                 "name='cpu', devices=('cpu',)))\n"),
    }
    for name, text in sources.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(dispatch, "_registry", {"reference": dispatch.get_backend("reference")})
    monkeypatch.setattr(dispatch, "_unavailable", {})
    monkeypatch.setattr(dispatch, "_default", None)
    monkeypatch.delenv("PQGAN_BACKEND", raising=False)
    yield monkeypatch
    for name in sources:                                               # imported afresh by the next test
        sys.modules.pop(name, None)


def test_lazy_loading_records_why_each_backend_is_missing(fresh):
    fresh.setattr(dispatch, "_MODULES", {"triton": "pqgan_fake_missing", "cuda": "pqgan_fake_raises",
                                         "cpu": "pqgan_fake_silent"})
    info = pqgan_kernels.backend_info()
    assert info["reference"] == "available"
    assert info["triton"] == "import failed: No module named 'pqgan_no_such_dependency_xyz'"
    assert info["cuda"] == "import failed: TypeError: boom"
    assert info["cpu"] == "pqgan_fake_silent did not register it"
    assert pqgan_kernels.available_backends() == ["reference"]
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available: import failed: TypeError: boom"):
        dispatch.get_backend("cuda")


def test_a_module_that_is_not_built_and_one_that_registers(fresh):
    fresh.setattr(dispatch, "_MODULES", {"triton": "pqgan_fake_not_built_module", "cpu": "pqgan_fake_registers"})
    assert dispatch.backend_info() == {"reference": "available", "triton": "not built yet", "cuda": "unknown",
                                       "cpu": "available"}
    assert dispatch.get_backend("cpu").devices == ("cpu",)
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available: unknown$"):
        dispatch.get_backend("cuda")


def test_get_backend_loads_only_what_it_needs(fresh):
    fresh.setattr(dispatch, "_MODULES", {"triton": "pqgan_fake_raises", "cpu": "pqgan_fake_registers"})
    assert dispatch.get_backend("cpu").name == "cpu"
    assert "triton" not in dispatch._unavailable                      # never imported
    x, cb = random_case(4, 2, 2, 3)
    assert dispatch.resolve_backend("auto", x, cb) == "cpu"


def test_register_clears_an_earlier_reason_and_mark_unavailable_never_hides_a_backend(fresh):
    dispatch.mark_unavailable("cpu", "was missing")
    assert dispatch._unavailable == {"cpu": "was missing"}
    cpu = dataclasses.replace(dispatch.get_backend("reference"), name="cpu")
    dispatch.register_backend(cpu)
    assert dispatch._registry["cpu"] is cpu and dispatch._unavailable == {}
    dispatch.mark_unavailable("cpu", "too late")
    assert dispatch._unavailable == {} and dispatch.get_backend("cpu") is cpu


def test_auto_order_per_device(fresh):
    import types
    x, cb = random_case(4, 2, 2, 3)
    assert dispatch.auto_order(torch.device("cpu"), x, cb) == ("cpu", "reference")
    assert dispatch.auto_order(torch.device("mps"), x, cb) == ("reference",)
    fresh.setitem(sys.modules, "pqgan_kernels.autotable", None)         # no measured table: fixed order
    assert dispatch.auto_order(torch.device("cuda"), x, cb) == ("cuda", "triton", "reference")
    seen = []
    table = types.ModuleType("pqgan_kernels.autotable")
    table.cuda_order = lambda a, b: seen.append((a, b)) or ["triton", "cuda"]
    fresh.setitem(sys.modules, "pqgan_kernels.autotable", table)
    assert dispatch.auto_order(torch.device("cuda"), x, cb) == ("triton", "cuda", "reference")
    assert seen[0][0] is x and seen[0][1] is cb


def test_auto_skips_backends_that_refuse_the_inputs_and_says_why_when_none_can(fresh):
    seen = []

    def picky(x, codebooks, distance):
        seen.append((x, codebooks, distance))
        return "no cosine here" if distance == "cosine" else None
    cpu = dataclasses.replace(dispatch.get_backend("reference"), name="cpu", unsupported=picky)
    dispatch.register_backend(cpu)
    fresh.setattr(dispatch, "_MODULES", {})
    x, cb = random_case(4, 2, 2, 3)
    assert dispatch.resolve_backend("auto", x, cb, "l2") == "cpu"
    assert seen[-1][0] is x and seen[-1][1] is cb and seen[-1][2] == "l2"
    assert dispatch.resolve_backend("auto", x, cb, "cosine") == "reference"
    with pytest.raises(ValueError, match="no cosine here"):
        dispatch.resolve_backend("cpu", x, cb, "cosine")
    assert seen[-1][1] is cb and seen[-1][2] == "cosine"
    fresh.setattr(dispatch, "_registry", {"cpu": cpu})
    with pytest.raises(RuntimeError, match=r"no backend can run on cpu tensors: .*'cpu': 'available'"):
        dispatch.resolve_backend("auto", x, cb, "cosine")


def test_set_default_auto_gives_the_choice_back_to_the_environment(fresh):
    cpu = dataclasses.replace(dispatch.get_backend("reference"), name="cpu")
    dispatch.register_backend(cpu)
    fresh.setattr(dispatch, "_MODULES", {})
    x, cb = random_case(4, 2, 2, 3)
    fresh.setenv("PQGAN_BACKEND", "reference")
    dispatch.set_default_backend("cpu")
    assert dispatch.resolve_backend("auto", x, cb) == "cpu"
    dispatch.set_default_backend("auto")
    assert dispatch._default is None and dispatch.resolve_backend("auto", x, cb) == "reference"
    dispatch.set_default_backend(None)
    assert dispatch.resolve_backend(None, x, cb) == "reference"
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'; expected 'auto' or one of"):
        dispatch.set_default_backend("tpu")
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'; expected 'auto' or one of"):
        dispatch.get_backend("tpu")


def test_check_supports_passes_its_inputs_and_lists_devices():
    seen = []
    ref = dispatch.get_backend("reference")
    two = dataclasses.replace(ref, devices=("cuda", "mps"), unsupported=lambda *a: seen.append(a))
    assert two.check_supports(torch.zeros(1), None) == "backend 'reference' runs on cuda/mps tensors, got cpu"
    x, cb = torch.zeros(2, 2), torch.zeros(1, 2, 2)
    one = dataclasses.replace(ref, unsupported=lambda *a: seen.append(a))
    assert one.check_supports(x, cb) is None
    assert seen[-1][0] is x and seen[-1][1] is cb and seen[-1][2] == "l2"


def test_auto_loads_backends_lazily_and_passes_the_inputs_to_auto_order(fresh):
    fresh.setattr(dispatch, "_MODULES", {"cpu": "pqgan_fake_registers"})
    seen = []
    real_order = dispatch.auto_order
    fresh.setattr(dispatch, "auto_order", lambda device, x, cb: seen.append((device, x, cb)) or
                  real_order(device, x, cb))
    x, cb = random_case(4, 2, 2, 3)
    assert "cpu" not in dispatch._registry
    assert dispatch.resolve_backend("auto", x, cb) == "cpu"            # imported by the auto loop itself
    assert seen[0][0] == x.device and seen[0][1] is x and seen[0][2] is cb


def test_the_default_distance_is_l2(fresh):
    seen = []
    dispatch.register_backend(dataclasses.replace(dispatch.get_backend("reference"), name="cpu",
                                                  unsupported=lambda x, cb, distance: seen.append(distance)))
    fresh.setattr(dispatch, "_MODULES", {})
    x, cb = random_case(4, 2, 2, 3)
    dispatch.resolve_backend("auto", x, cb)
    dispatch.resolve_backend("cpu", x, cb)
    assert seen == ["l2", "l2"]
