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
from pcir.backend import triton_engine as te
from pcir.backend.triton_engine import TritonEngine


class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def _sig(self, args, kwargs):
        # what Triton specialises a launch on: tensor dtypes (not sizes), integers by == 1 and
        # divisibility by 16, the compile-time keyword arguments
        def key(a):
            if isinstance(a, torch.Tensor):
                return str(a.dtype)
            if isinstance(a, int) and not isinstance(a, bool):
                return "int:1" if a == 1 else ("int:d16" if a % 16 == 0 else "int")
            return a

        return (self.name, tuple(key(a) for a in args), tuple(sorted((k, key(v)) for k, v in kwargs.items())))

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


@pytest.mark.parametrize("case, batch", [("mixed", 7), ("tied_bernoulli", 100), ("scratch_chain", 80)])
def test_precompile_warms_exactly_what_the_passes_launch(case, batch, monkeypatch):
    c = CASES[case]()
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")  # codegen only: nothing runs
    log: list = []
    eng = TritonEngine(m.plan, torch.device("cpu"), _FakeModule(m._kernels, log), m.precision)
    m._engines[m._key()] = eng  # the model's own calls below launch through the recorder
    _, logp, W = m._normalised_cached()
    x, miss = data_for(c, batch, seed=1, p_missing=0.2)
    xf = m._prepare(x, miss)
    m.forward_backward(x, miss)  # forward, flows, leaf counts into the model's buffers
    m.em_step(0.5, 0.1)
    m.train_step(x, 0.5, 0.1, miss)  # the table update inside the step (scaled counts)
    m.train_step(x, 0.5, 0.1)  # no mask: the data checked by the engine (check_data)
    with torch.no_grad():
        m(x, miss)
    m(x, miss).sum().backward()  # the autograd path
    launched = {s for kind, g, s in log if not s[0].startswith(("em_", "normalise_"))}
    assert log and all(kind == "launch" for kind, _, _ in log)
    log.clear()
    fake = eng.k
    assert pre.precompile(eng, W, logp, m.gauss, xf, threads=2) is True
    assert eng.k is fake  # restored
    assert all(kind == "warmup" for kind, _, _ in log)
    warmed = {s for _, g, s in log if not s[0].startswith(("em_", "normalise_"))}
    # plus the data check's signalling forms, which only the CUDA graphs of a second call launch
    # (the training step's on float32 data, the forward's through the address word)
    signalling = {s for s in warmed if ("SG", True) in s[2]}
    assert warmed - signalling == launched
    assert {s[0] for s in signalling} == {"check_data"} and len(signalling) == 2
    assert {dict(s[2])["AT"] for s in signalling if "AT" in dict(s[2])} == {True}
    # batch tiles of 64 (batches over 32) run the batch-major forward
    fwd = "sum_fwdt_v0" if batch > 32 else "sum_fwd_v0"
    # the categorical leaves from whole table rows at batches of 32 and more (LEAF_ROWS)
    leaf = "input_categorical_rows" if batch >= te.LEAF_ROWS_MIN_BATCH else "input_categorical"
    assert {fwd, leaf, "input_categorical_counts"} <= {s[0] for s in launched}
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
    # the launches recorded are the model's own: its EM step and its normalisation, through the
    # runtime (a recording engine installed in place of the real one)
    c = CASES[case]()
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")
    log: list = []
    eng = TritonEngine(m.plan, torch.device("cpu"), _FakeModule(m._kernels, log), m.precision)
    m._engines[m._key()] = eng
    m.em_step(0.5, 0.1)  # normalises (first use of the buffers), then the EM row kernels
    x, miss = data_for(c, 9, seed=2, p_missing=0.2)
    m.train_step(x, 0.5, 0.1, miss)  # and the training step's table update (its row passes)
    rowwise = ("em_", "normalise_")
    launched = {s for kind, _, s in log if s[0].startswith(rowwise)}
    names = {s[0] for s in launched}
    assert {"em_sum_rows", "normalise_rows"} <= names
    # the four-pass table update's row passes: tied tables only (mixed's are one-pass)
    assert ({"em_cat_prep", "em_cat_log"} <= names) == (case == "tied_bernoulli"), names
    assert all(kind == "launch" for kind, _, _ in log)
    log.clear()
    assert pre.precompile_rows(eng, threads=2) is True
    assert all(kind == "warmup" for kind, _, _ in log)
    assert {s for _, _, s in log} == launched
    assert all(s[0].startswith(rowwise) for _, _, s in log)


def _compiled_kernels(module) -> int:
    """How many (kernel, specialisation) pairs the generated module's JIT functions hold."""
    n = 0
    for name in dir(module):
        fn = getattr(module, name)
        caches = getattr(fn, "device_caches", None)
        if caches:
            n += sum(len(c[0]) for c in caches.values())
    return n


@pytest.mark.parametrize("batch", [1, 37, 64, 100, 512])
def test_precompile_covers_every_launch_on_the_gpu(batch, device):
    # the parallel compile replays a few rows (same_specialisation) instead of the whole batch:
    # the real step that follows must find every kernel compiled (no compilation in the step)
    if device != "cuda":
        pytest.skip("needs the compiled kernels (pytest --device cuda)")
    c = CASES["tied_bernoulli"]()
    m = pc_compile(c, engine="triton", device="cuda", precision="fp32")
    x, miss = data_for(c, batch, seed=3, p_missing=0.2)
    m.cuda_graphs = False
    eng = m._engine()
    _, logp, W = m._normalised_cached()
    xf = m._prepare(x, miss)
    assert pre.precompile(eng, W, logp, m.gauss, xf) is True
    eng.compiled_for.add(batch)
    before = _compiled_kernels(m._kernels)
    assert before > 0
    ll = m(x, miss).detach()
    m.forward_backward(x, miss)
    m.em_step(0.5, 0.1)
    m(x, miss)
    assert _compiled_kernels(m._kernels) == before
    # and the results are right (before the EM step changed the parameters)
    np.testing.assert_allclose(
        ll.cpu().double().numpy(), _plain(c).log_likelihood(x, miss).double().numpy(), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_graph_captures_compile_nothing_after_the_first_call(dtype, device):
    # the second call of a shape captures CUDA graphs whose data check signals its verdict
    # (runtime _data_ok): precompile compiled those forms with the rest, so no call after the
    # first compiles anything (a cold cache used to spend 0.3-0.7 s in the second call)
    if device != "cuda":
        pytest.skip("needs the compiled kernels and CUDA graphs (pytest --device cuda)")
    c = CASES["tied_bernoulli"]()
    m = pc_compile(c, engine="triton", device="cuda", precision="fp32")
    xs = [torch.as_tensor(data_for(c, 48, seed=s)[0], device="cuda").to(dtype) for s in range(3)]
    with torch.no_grad():
        m(xs[0])
    m.train_step(xs[0], 0.5, 0.1)
    before = _compiled_kernels(m._kernels)
    for x in xs:
        with torch.no_grad():
            m(x)
        m.train_step(x, 0.5, 0.1)
    shape = tuple(xs[0].shape)
    for kind in ("forward-checked", "train-checked"):  # both captured, and signalling
        ent = m._graphs[(kind, shape, dtype)]
        assert type(ent) is tuple and (ent[3] is not None if kind == "train-checked" else len(ent[1]) == 2)
    assert _compiled_kernels(m._kernels) == before


def test_same_specialisation_keeps_the_batch_class():
    for B in (1, 2, 15, 16, 17, 63, 64, 65, 100, 128, 512, 1000, 4096):
        s = pre.same_specialisation(B)
        assert s <= B and (s == 1) == (B == 1) and (s % 16 == 0) == (B % 16 == 0)
        assert min(s, 64) == min(B, 64) or (B > 64 and s >= 64)


class _FakeKernel:
    def __init__(self, fail: bool = False):
        self.loaded = 0
        self.fail = fail

    def _init_handles(self):
        self.loaded += 1
        if self.fail:
            raise RuntimeError("no launcher")


def test_compiled_kernels_are_loaded_on_the_pool(monkeypatch):
    """After the parallel compile, every compiled kernel's launcher is built and its binary
    loaded on the same pool (precompile._load), once each; a failure there is left for the real
    launch to report."""
    from triton.runtime import _async_compile

    fakes = [_FakeKernel(), _FakeKernel(fail=True), _FakeKernel()]

    class Mode:
        def __init__(self, pool):
            self.future_kernels = {i: type("FK", (), {"kernel": k})() for i, k in enumerate(fakes)}
            self.future_kernels["pending"] = type("FK", (), {"kernel": None})()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(_async_compile, "AsyncCompileMode", Mode)
    with pre._async_compile(2, torch.device("cpu")):
        assert [k.loaded for k in fakes] == [0, 0, 0]  # not before the compiles are done
    assert [k.loaded for k in fakes] == [1, 1, 1]


def test_launcher_imports_take_turns_while_loading():
    """Triton imports each launcher under one module name; while the pool loads kernels those
    imports are serialised (precompile._serial_module_loads), and the original is restored."""
    import threading
    import time

    from triton.runtime import build

    orig = build._load_module_from_path
    inside, most = [0], [0]

    def slow(*a, **k):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        inside[0] -= 1
        return a

    build._load_module_from_path = slow
    try:
        with pre._serial_module_loads():
            threads = [threading.Thread(target=build._load_module_from_path, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert most[0] == 1
        assert build._load_module_from_path is slow
    finally:
        build._load_module_from_path = orig


def test_a_failed_compile_leaves_no_async_mode_behind():
    """Triton 3.6's AsyncCompileMode raises a failed compile from ``__exit__`` before it clears
    its mode: left set, every later compile of the process went to the closed pool ("cannot
    schedule new futures after shutdown"; 200 GPU tests failed after one kernel did not
    compile). precompile._async_compile clears it, and the next parallel compile works."""
    from triton.runtime import _async_compile

    with pytest.raises(ZeroDivisionError), pre._async_compile(2, torch.device("cpu")):
        _async_compile.active_mode.get().submit("bad", lambda: 1 / 0, lambda k: None)
    assert _async_compile.active_mode.get() is None
    with pre._async_compile(2, torch.device("cpu")):
        fk = _async_compile.active_mode.get().submit("good", lambda: 41, lambda k: None)
    assert fk.result() == 41
