"""Data-parallel EM and gradient training on 2 and 4 gloo processes agree with one process.

Every rank is a process joining a gloo group on 127.0.0.1 (a free port) through the same
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Each rank
trains on its contiguous part of every global batch; the parent process runs the same steps on
the whole batches and compares. Tolerance: float32 summation order (per-rank partial sums, then
the all-reduce) changes results by a few ulps per step, so parameters must agree to rtol 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _distributed_helpers import N, compile_model, launch, mixed_data, one_thread, params_of, values

from pcir import distributed

RTOL, ATOL = 1e-5, 1e-6


# ---- EM --------------------------------------------------------------------------------------
FULL_STEPS, MINI_STEPS, MINI_BATCH = 3, 4, 16


def em_reference():
    """One process: full-batch EM (flows of two half batches), then mini-batch EM."""
    x, m = mixed_data()
    model = compile_model()
    for _ in range(FULL_STEPS):
        model.forward_backward(x[: N // 2], m[: N // 2])
        model.forward_backward(x[N // 2 :], m[N // 2 :])
        model.em_step(step_size=1.0, pseudocount=0.1)
    after_full = params_of(model)
    for i in range(MINI_STEPS):
        s = (i * MINI_BATCH) % N
        model.forward_backward(x[s : s + MINI_BATCH], m[s : s + MINI_BATCH])
        model.em_step(step_size=0.5, pseudocount=0.1)
    return after_full, params_of(model)


def em_worker(comm):
    distributed._HASH_CHUNK = 5  # parameter checksums in many chunks (this process only)
    x, m = mixed_data()
    model = compile_model()
    with torch.no_grad():  # a different start on every rank: broadcast_params must fix it
        model.sum_logits.add_(torch.rand_like(model.sum_logits) * comm.rank)
    comm.broadcast_params(model)
    start_in_sync = comm.params_in_sync(model)
    lo, hi = comm.part(N)
    for _ in range(FULL_STEPS):
        # the rank's part in two pieces: flows accumulate before the all-reduce
        mid = (lo + hi) // 2
        model.forward_backward(x[lo:mid], m[lo:mid])
        model.forward_backward(x[mid:hi], m[mid:hi])
        comm.em_step(model, step_size=1.0, pseudocount=0.1)
    after_full = params_of(model)
    flows_zeroed = all(float(t.abs().sum()) == 0 for t in model.flow_tensors())
    for i in range(MINI_STEPS):
        s = (i * MINI_BATCH) % N
        idx = comm.shard(torch.arange(s, s + MINI_BATCH))
        model.forward_backward(x[idx], m[idx])
        comm.em_step(model, step_size=0.5, pseudocount=0.1)
    final, in_sync = params_of(model), comm.params_in_sync(model)
    # drift on one rank (what an atomics-based kernel could cause): found and repaired from rank 0
    if comm.rank == comm.world_size - 1:
        with torch.no_grad():
            model.cat_logits[0] += 1e-3
    drift = [comm.params_in_sync(model), comm.sync_params(model), comm.sync_params(model)]
    return {
        "start_in_sync": start_in_sync,
        "after_full": after_full,
        "final": final,
        "after_repair": params_of(model),
        "drift": drift,
        "in_sync": in_sync,
        "flows_zeroed": flows_zeroed,
        "part": (lo, hi),
        "calls": comm.stats["calls"],
    }


def assert_params_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        g, w = got[k], want[k]
        fin = np.isfinite(w)
        assert np.array_equal(fin, np.isfinite(g)), k  # -inf (no edge) stays -inf
        np.testing.assert_allclose(g[fin], w[fin], rtol=RTOL, atol=ATOL, err_msg=k)


@pytest.fixture(scope="module")
def reference():
    with one_thread():
        return em_reference()


@pytest.mark.parametrize("world", [2, 4])
def test_data_parallel_em_equals_one_process(world, reference):
    ref_full, ref_final = reference
    res = values(launch(em_worker, world), world)
    parts = [r["part"] for r in res]
    assert parts[0][0] == 0 and parts[-1][1] == N
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))  # contiguous, disjoint, complete
    for r in res:
        assert r["start_in_sync"] and r["in_sync"] and r["flows_zeroed"]
        # 3 tensors in one bucket: one collective per EM step (plus the checks' and the barrier's)
        assert r["calls"] == FULL_STEPS + MINI_STEPS
        assert_params_close(r["after_full"], ref_full)
        assert_params_close(r["final"], ref_final)
    for r in res[1:]:  # identical parameters on every rank, to the bit
        for k in r["final"]:
            assert np.array_equal(r["final"][k], res[0]["final"][k], equal_nan=True), k
    for r in res:  # out of sync, repaired (True), then nothing left to repair (False)
        assert r["drift"] == [False, True, False]
        for k in r["final"]:
            assert np.array_equal(r["after_repair"][k], res[0]["final"][k], equal_nan=True), k


def test_the_reference_moved(reference):
    """Guard against a vacuous comparison: EM changed the parameters."""
    start = params_of(compile_model())
    _, final = reference
    assert any(not np.allclose(final[k], start[k]) for k in start if np.isfinite(start[k]).any())


# ---- gradients -----------------------------------------------------------------------------------
GRAD_STEPS = 3


def grad_reference(kind: str):
    x, m = mixed_data()
    model = compile_model()
    opt = (
        torch.optim.Adam(model.parameters(), lr=0.05) if kind == "adam" else torch.optim.SGD(model.parameters(), lr=0.1)
    )
    for _ in range(GRAD_STEPS):
        opt.zero_grad()
        (-model(x, m).mean()).backward()
        opt.step()
    return params_of(model)


def grad_worker(comm):
    x, m = mixed_data()
    lo, hi = comm.part(N)
    out = {}
    # DistributedDataParallel (averages gradients: with equal parts, the mean loss of the batch)
    model = compile_model()
    ddp = comm.ddp(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=0.05)
    for _ in range(GRAD_STEPS):
        opt.zero_grad()
        (-ddp(x[lo:hi], m[lo:hi]).mean()).backward()
        opt.step()
    out["adam_ddp"] = params_of(model)
    # the explicit bucketed all-reduce, for a circuit inside a larger training loop
    model = compile_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(GRAD_STEPS):
        opt.zero_grad()
        (-model(x[lo:hi], m[lo:hi]).mean()).backward()
        comm.all_reduce_gradients(model)
        opt.step()
    out["sgd_all_reduce"] = params_of(model)
    out["in_sync"] = comm.params_in_sync(model)
    return out


def test_gradient_training_on_2_ranks_equals_one_process():
    res = values(launch(grad_worker, 2), 2)
    with one_thread():
        want_adam, want_sgd = grad_reference("adam"), grad_reference("sgd")
    for r in res:
        assert r["in_sync"]
        assert_params_close(r["adam_ddp"], want_adam)
        assert_params_close(r["sgd_all_reduce"], want_sgd)
    assert any(not np.allclose(want_sgd[k], params_of(compile_model())[k]) for k in want_sgd if want_sgd[k].size)
