"""The parallel up-front compile (pcir.backend.precompile): it must warm up exactly the kernels,
with exactly the arguments, that the real forward/backward/statistics passes launch, and launch
nothing itself. Checked with a recording stand-in for the generated module (no GPU needed); on
the GPU the suite's real runs go through it (``TritonEngine.forward`` on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backend_helpers import CASES, data_for

from pcir import knobs
from pcir.backend import compile as pc_compile
from pcir.backend import precompile as pre
from pcir.backend.triton_engine import TritonEngine


class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def _sig(self, args, kwargs):
        shapes = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args)
        return (self.name, shapes, tuple(sorted(kwargs.items())))

    def __getitem__(self, grid):
        return lambda *a, **kw: self.log.append(("launch", grid, self._sig(a, kw)))

    def warmup(self, *a, grid, **kw):
        self.log.append(("warmup", grid, self._sig(a, kw)))


class _FakeModule:
    def __init__(self, real, log):
        self._real, self._log = real, log

    def __getattr__(self, name):
        v = getattr(self._real, name)
        return _Recorder(name, self._log) if callable(v) and not isinstance(v, type) else v


def _plain(c):
    """The same circuit on the torch engine: its normalised buffers have the plan's layout, and
    computing them launches no Triton kernel (the tests here run on any machine)."""
    return pc_compile(c, engine="torch", device="cpu")


@pytest.mark.parametrize("case", ["mixed", "tied_bernoulli", "scratch_chain"])
def test_precompile_warms_exactly_what_the_passes_launch(case, monkeypatch):
    c = CASES[case]()
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")  # codegen only: nothing runs
    log: list = []
    eng = TritonEngine(m.plan, torch.device("cpu"), _FakeModule(m._kernels, log), m.precision)
    _, logp, W = _plain(c)._normalised_cached()  # no real Triton launch (no GPU, no interpreter)
    x, miss = data_for(c, 7, seed=1, p_missing=0.2)
    xf = m._prepare(x, miss)
    with torch.no_grad():
        V, aux = eng.forward(W, logp, m.gauss, xf, precompile=False)
        ones = torch.ones((m.plan.root_units, xf.shape[0]))
        F, _ = eng.backward(W, V, aux, xf, ones)
        eng.input_stats(F, xf, m.gauss)
    launched = [(g, s) for kind, g, s in log]
    assert log and all(kind == "launch" for kind, _, _ in log)
    log.clear()
    fake = eng.k
    assert pre.precompile(eng, W, logp, m.gauss, xf, threads=2) is True
    assert eng.k is fake  # restored
    assert all(kind == "warmup" for kind, _, _ in log)
    assert [(g, s) for _, g, s in log] == launched
    names = {s[0] for _, _, s in log}
    assert {"product_fwd"} <= names if case == "scratch_chain" else "product_fwd" not in names


def test_precompile_failure_changes_nothing(monkeypatch):
    c = CASES["mixed"]()
    m = pc_compile(c, engine="torch", device="cpu")

    class Broken:
        k = object()
        plan = m.plan

        def forward(self, *a, **kw):
            raise RuntimeError("boom")

    eng = Broken()
    k = eng.k
    assert pre.precompile(eng, None, None, None, torch.zeros((2, 2))) is False
    assert eng.k is k


def test_engine_precompiles_once_per_batch_size_on_cuda_only(monkeypatch):
    if not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    calls = []
    monkeypatch.setattr(pre, "precompile", lambda eng, *a, **kw: calls.append(a[-1].shape[0]) or True)
    c = CASES["mixed"]()
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")
    eng = m._engine()
    x, _ = data_for(c, 5, seed=0)
    _, logp, W = m._normalised_cached()
    want = pc_compile(c, engine="torch", device="cpu")(x).detach().numpy()
    eng.forward(W, logp, m.gauss, m._prepare(x, None))
    assert calls == []  # a CPU engine (the interpreter) compiles nothing up front
    eng.device = torch.device("cuda")  # the hook looks only at the device type
    try:
        for n in (4, 4, 5, 4):
            xf = m._prepare(x[:n], None)
            V, _ = eng.forward(W, logp, m.gauss, xf)
            np.testing.assert_allclose(m._root_values(V).numpy().reshape(-1), want[:n], rtol=1e-4)
    finally:
        eng.device = torch.device("cpu")
    assert calls == [4, 5]


@pytest.mark.parametrize("case", ["mixed", "tied_bernoulli"])
def test_precompile_rows_warms_the_parameter_kernels_the_model_launches(case):
    c = CASES[case]()
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")
    log: list = []
    eng = TritonEngine(m.plan, torch.device("cpu"), _FakeModule(m._kernels, log), m.precision)
    t = m._tab()
    _, logp, W = _plain(c)._normalised_cached()
    args = torch.tensor([0.5, 0.1])
    eng.em_rows(W, m.sum_flows, m.sum_logits.detach(), t.sum_edge, logp, m.cat_flows, m.cat_logits.detach(), args)
    eng.normalise_rows("sum", m.sum_logits.detach(), W, False)
    eng.normalise_rows("cat", m.cat_logits.detach(), logp, True)
    # specialisations: the kernel and its compile-time arguments (pointers differ only in size)
    launched = {(s[0], s[2]) for kind, _, s in log}
    assert launched and all(kind == "launch" for kind, _, _ in log)
    log.clear()
    assert pre.precompile_rows(eng, threads=2) is True
    assert all(kind == "warmup" for kind, _, _ in log)
    assert {(s[0], s[2]) for _, _, s in log} == launched
