"""Helpers of the distributed tests: a small circuit with every leaf family, its data, and
``launch`` (run a function on N gloo ranks in processes started from a forkserver, with the
environment torchrun would set)."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import time
import traceback

import numpy as np
import torch

import pcir
from pcir import distributed
from pcir.ir import CircuitBuilder, Dist, Domain

N = 48  # samples; 4 ranks get 12 each


# ---- a small circuit with every leaf family the runtime trains ----------------------------------
def mixed_circuit(seed: int = 0):
    """Bernoulli, categorical and gaussian leaves under two levels of sums (one explicit)."""
    b = CircuitBuilder(seed=seed)
    xs = [b.variable(Domain.binary(), f"b{i}") for i in range(3)]
    xc = b.variable(Domain.categorical(3), "c")
    xr = b.variable(Domain.real(), "r")
    bern, cat, gauss = Dist.make("bernoulli"), Dist.make("categorical", k=3), Dist.make("gaussian")
    low = b.product([b.input(xs[0], 4, bern), b.input(xs[1], 4, bern)], pattern="aligned")
    s_low = b.sum([low], 3)
    other = b.product([b.input(xs[0], 2, bern), b.input(xs[1], 2, bern)], pattern="outer")
    s_mix = b.sum([s_low, other], 3, edges=np.array([[0, 0], [0, 3], [1, 1], [1, 5], [2, 2], [2, 6]]))
    top = b.product([s_mix, b.input(xs[2], 3, bern), b.input(xc, 3, cat), b.input(xr, 3, gauss)], pattern="aligned")
    b.root(b.sum([top], 1))
    return b.build()


def mixed_data(n: int = N, seed: int = 1):
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, n)
    x = np.zeros((n, 5), dtype=np.float32)
    x[:, :3] = rng.random((n, 3)) < np.where(z[:, None] == 1, 0.8, 0.2)
    x[:, 3] = np.where(z == 1, rng.integers(0, 2, n), 2)
    x[:, 4] = rng.normal(np.where(z == 1, 1.5, -1.0), 0.7)
    missing = rng.random((n, 5)) < 0.1  # marginalised entries flow nowhere: tested too
    return torch.as_tensor(x), torch.as_tensor(missing)


@contextlib.contextmanager
def one_thread():
    """Tiny tensors: one CPU thread is much faster than several competing for busy CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def compile_model(device: str = "cpu"):
    return pcir.compile(mixed_circuit(), device=device, engine="torch")


def params_of(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


# ---- launching ranks ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank: int, world: int, port: int, results, timeout_s: float, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # several ranks share the CI's two cores
    t0 = time.monotonic()  # from here on: the rank's own clock (process start-up not counted)
    try:
        comm = distributed.init(device="cpu", timeout_s=timeout_s)
        out = fn(comm, *args)
        results.put((rank, "ok", out, time.monotonic() - t0))
        comm.close()
    except BaseException as e:  # noqa: BLE001  (report everything to the parent)
        msg = e.render() if isinstance(e, pcir.PcirError) else traceback.format_exc()
        results.put((rank, type(e).__name__, msg, time.monotonic() - t0))


def launch(
    fn,
    world: int,
    *args,
    timeout_s: float = 30.0,
    wait_s: float = 120.0,
    start: list[int] | None = None,
    need: list[int] | None = None,
    seconds: dict[int, float] | None = None,
) -> dict[int, tuple]:
    """Run ``fn(comm, *args)`` on the ranks ``start`` (default all) of a group of ``world``;
    returns {rank: (status, value or rendered error)} once the ranks in ``need`` (default: those
    started) reported or ``wait_s`` passed. Ranks still running then are killed. ``seconds``
    receives each reporting rank's time from joining the group to its report (its own clock, so
    a slow process start on a loaded machine does not count)."""
    # forkserver: a clean server process (no torch threads started, so forking it is safe) that
    # imported torch and pcir once; every rank after the first starts in milliseconds
    ctx = torch.multiprocessing.get_context("forkserver")
    preload = ["torch", "torch.distributed", "torch._dynamo", "torch.optim", "pcir", "pcir.distributed", __name__]
    ctx.set_forkserver_preload([*preload, fn.__module__])
    results = ctx.Queue()
    port = free_port()
    start = list(range(world)) if start is None else start
    need = set(start if need is None else need)
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, results, timeout_s, args)) for r in start]
    for p in procs:
        p.start()
    out: dict[int, tuple] = {}
    deadline = time.monotonic() + wait_s
    try:
        while not need <= out.keys() and time.monotonic() < deadline:
            try:
                rank, status, value, took = results.get(timeout=0.2)
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
                continue
            out[rank] = (status, value)
            if seconds is not None:
                seconds[rank] = took
    finally:
        for p in procs:
            p.join(timeout=2 if need <= out.keys() else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    return out


def values(out: dict[int, tuple], world: int) -> list:
    for r in range(world):
        assert r in out, f"rank {r} reported nothing"
        status, value = out[r]
        assert status == "ok", f"rank {r}: {status}\n{value}"
    return [out[r][1] for r in range(world)]
