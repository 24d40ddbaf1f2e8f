"""Compile every Triton kernel of an engine at once, in parallel, before its first real launch.

Triton compiles a kernel the first time it is launched with a new specialisation (the batch size
is one: ``B == 1``, ``B % 16``), one after the other. A circuit's first training step launches a
dozen distinct kernels (per tile shape: forward, node flows, parameter flows; inputs, products,
counts), so that first step used to be most of ``compile`` time. :func:`precompile` replays the
engine's own forward, backward and statistics passes with every launch turned into Triton's
``warmup`` (compile, do not run) under ``triton.runtime._async_compile.AsyncCompileMode`` with a
thread pool: the compilations run concurrently (Triton's passes and ``ptxas`` release the GIL) and
land in the kernels' caches, so the real launches that follow find them compiled. Then the same
pool does what each kernel's first launch would do one after the other: build its launcher (a C
module compiled by the host compiler) and load its binary. The buffers the replay allocates hold
garbage and are dropped.

It is an optimisation only: on any error (another Triton version, an API change) it gives up
quietly and the kernels compile on first launch as before.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


class _WarmupLaunch:
    """``fn[grid](*args)`` -> ``fn.warmup(*args, grid=grid)``: compiles, launches nothing."""

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.fn.warmup(*args, grid=grid, **kwargs)


class WarmupKernels:
    """A view of a generated kernel module whose ``@triton.jit`` functions only compile."""

    warming = True  # the engines skip their library (torch) products while this is their module

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        value = getattr(self._module, name)
        return _WarmupLaunch(value) if hasattr(value, "warmup") else value


@contextmanager
def _async_compile(threads: int, device: torch.device):
    """Compile on a pool of ``threads``, then load every compiled kernel on the same pool
    (:func:`_load`)."""
    from triton.runtime import _async_compile as ac

    with ThreadPoolExecutor(max_workers=threads) as pool:
        mode = ac.AsyncCompileMode(pool)
        try:
            with mode:
                yield
        finally:
            # Triton 3.6's __exit__ raises a failed compile before it clears its mode; left set,
            # every later compile of the process would go to this pool, closed below
            active = getattr(ac, "active_mode", None)
            if active is not None and active.get() is mode:
                active.set(None)
        kernels = [fk.kernel for fk in mode.future_kernels.values() if getattr(fk, "kernel", None) is not None]
        with _serial_module_loads():
            list(pool.map(lambda k: _load(k, device), kernels))


@contextmanager
def _serial_module_loads():
    """Triton imports every launcher as a module of the same name; two imports at once can bind
    a kernel to another kernel's launcher (a GPU run raised "function takes exactly 25 arguments
    (24 given)"). The C compiles stay parallel, the imports take turns."""
    import threading

    try:
        from triton.runtime import build
    except ImportError:  # pragma: no cover
        yield
        return
    orig = getattr(build, "_load_module_from_path", None)
    if orig is None:  # pragma: no cover (another Triton: nothing to guard, _load then fails quietly)
        yield
        return
    lock = threading.Lock()

    def locked(*args, **kwargs):
        with lock:
            return orig(*args, **kwargs)

    build._load_module_from_path = locked
    try:
        yield
    finally:
        build._load_module_from_path = orig


def _load(kernel, device: torch.device) -> None:
    """What a compiled kernel's first launch does before it runs: build its launcher (a small C
    module per argument signature, compiled by the host's C compiler, then cached by Triton) and
    load its binary. One after the other at first launch, that was most of a cold first train
    step that compiled nothing (hclt-32: 1.7 of 2.1 s, bench/compile_probe.py). Best effort: a
    failure here happens again, and is reported, at the real launch."""
    init = getattr(kernel, "_init_handles", None)
    if init is None:
        return
    try:
        if device.type == "cuda":
            with torch.cuda.device(device):  # the pool's threads start on the default device
                init()
        else:
            init()
    except Exception:  # noqa: BLE001,S110  (the real launch raises it)
        pass


def compile_threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def same_specialisation(B: int) -> int:
    """The smallest batch whose launches compile to the same kernels as batch ``B``: Triton
    specialises integer arguments on ``== 1`` and on divisibility by 16, and the engines derive
    from ``B`` the batch tile (a power of two, 16..64, a compile-time constant) and the chunk
    length of the parameter-flow programs (a multiple of the tile)."""
    if B <= 64:
        return B
    return 64 if B % 16 == 0 else 65


def _replay(engine, passes, threads: int | None) -> bool:
    """Run ``passes()`` with ``engine``'s launches turned into parallel compilations. True when
    it ran; False when it failed (the kernels then compile on first launch). The engine's
    kernels are restored either way."""
    kernels = engine.k
    try:
        engine.k = WarmupKernels(kernels)
        with torch.no_grad(), _async_compile(threads or compile_threads(), engine.device):
            passes()
        return True
    except Exception:  # noqa: BLE001  (an optimisation: the kernels then compile on first launch)
        return False
    finally:
        engine.k = kernels


def precompile_rows(engine, *, threads: int | None = None) -> bool:
    """Compile the row-wise parameter kernels (EM, normalisation) of ``engine`` in parallel: they
    do not depend on the batch, so this runs once, when the engine is built. Same contract as
    :func:`precompile`."""
    if not hasattr(engine, "em_rows"):
        return False
    f = torch.zeros(2, dtype=torch.float32, device=engine.device)
    # the runtime passes the edge mask as bytes, or None where every entry is an edge
    edge = None if engine.plan.sum_edge.all() else torch.zeros(2, dtype=torch.uint8, device=engine.device)

    def passes():
        engine.em_rows(f, f, f, edge, f, f, f, f)
        engine.em_cat_pass(f, None, f, f)  # the training step's table update (train_step)
        engine.em_cat_pass(f, f, f, f)
        engine.normalise_rows("sum", f, f, False)
        engine.normalise_rows("cat", f, f, True)

    return _replay(engine, passes, threads)


def precompile(engine, W, cat_logp, gauss, xf, *, threads: int | None = None) -> bool:
    """Compile the kernels ``engine`` launches for a batch shaped like ``xf`` (forward, backward,
    leaf statistics, the training step's table update). Returns whether the parallel compile ran
    (False: it was skipped or failed, and nothing changed)."""

    def passes():
        xs = xf[: same_specialisation(xf.shape[0])]  # a few rows: the replay's buffers stay small
        dummy = torch.zeros(1, dtype=torch.float32, device=xf.device)  # flows go nowhere
        nv = xf.shape[1]  # the data check of the graphed calls and the training step
        bounds = torch.zeros(nv, dtype=torch.float32, device=xf.device)
        real = torch.zeros(nv, dtype=torch.int8, device=xf.device)
        engine.check_data(xs, bounds, bounds, real)
        # ... and its signalling forms, captured in the graphs of a second call (runtime
        # _data_ok): the training step's on float32 data, the forward's through the address
        # word, whose verdict is the word's second entry (8 bytes in: Triton specialises on a
        # pointer's alignment)
        word = torch.zeros(2, dtype=torch.int64, device=xf.device)
        done = torch.zeros(1, dtype=torch.int32, device=xf.device)
        engine.check_data(xs.to(torch.float32), bounds, bounds, real, signal=(word[:1], done))
        for dt in sorted(getattr(engine, "data_dtypes", {xs.dtype}), key=str):
            engine.check_data_at(word, tuple(xs.shape), dt, bounds, bounds, real, signal=(word[1:], done))
        alias = bool(engine.leaf_end)  # as the training step runs it (runtime, leaf_alias)
        V, aux = engine.forward(W, cat_logp, gauss, xs, precompile=False, flow_rows=alias)
        ones = torch.ones((engine.plan.root_units, xs.shape[0]), dtype=torch.float32, device=xf.device)
        F, _ = engine.backward(W, V, aux, xs, ones, PF=dummy, leaf_alias=alias)
        leaf = engine.leaf_flows(V, F, alias)
        engine.input_stats(leaf, xs, gauss, cat=dummy)
        # the training step's fused table update (CompiledCircuit.train_step)
        engine.input_stats(leaf, xs, gauss, em=(dummy, dummy, torch.zeros(2, device=xf.device)))

    return _replay(engine, passes, threads)
