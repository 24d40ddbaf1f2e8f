"""Failures: a rank that dies or hangs, a group that cannot form, rank 0's errors, bad settings.

Every case must end in a :class:`DistributedError` (or the original PcirError) that names the
rank, the operation and the timeout, within the timeout plus a margin, never in a hang.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from _distributed_helpers import compile_model, launch, mixed_data

from pcir import cli, distributed, knobs
from pcir.distributed import DistributedError, LocalComm, buckets, flow_bytes, ring_all_reduce_seconds
from pcir.ir.diagnostics import CheckpointError, PcirError

TIMEOUT_S = 3.0
MARGIN_S = 8.0  # process scheduling on a busy 2-core machine


def _reduce_timed(comm, model) -> dict:
    t0 = time.monotonic()
    try:
        comm.all_reduce_flows(model)
    except DistributedError as e:
        return {"error": e.render(), "elapsed": time.monotonic() - t0}
    return {"error": None, "elapsed": time.monotonic() - t0}


def _fail_on_rank0():
    raise CheckpointError("out/epoch-0003: disk full", hint="free some space")


def rank0_fails(comm):
    try:
        comm.on_main(_fail_on_rank0)
    except PcirError as e:
        return type(e).__name__, e.message, e.hint
    return None


def dies(comm):
    model = compile_model()
    x, m = mixed_data()
    model.forward_backward(x, m)
    if comm.rank == 1:
        os._exit(3)  # a crash: no goodbye to the group
    return _reduce_timed(comm, model)


def nothing(comm):
    return None


def hangs(comm):
    model = compile_model()
    if comm.rank == 1:
        time.sleep(120)  # stuck (killed by the test once rank 0 reported)
    return _reduce_timed(comm, model)


def test_a_dead_rank_gives_a_clear_error_on_the_others():
    out = launch(dies, 2, timeout_s=TIMEOUT_S, wait_s=60, need=[0])
    status, res = out[0]
    assert status == "ok", res
    assert res["error"] is not None and res["elapsed"] < TIMEOUT_S + MARGIN_S
    assert "rank 0 of 2: all-reduce of the EM flows failed" in res["error"]
    assert "another rank died or did not reach this point within the timeout (3 s" in res["error"]


def test_rank0_errors_reach_the_other_ranks():
    """Checkpoints are written by rank 0: its error must stop every rank, not leave them waiting."""
    got = [v for _, v in sorted(launch(rank0_fails, 2, timeout_s=TIMEOUT_S).items())]
    assert got[0] == ("ok", ("CheckpointError", "out/epoch-0003: disk full", "free some space"))
    assert got[1] == ("ok", ("CheckpointError", "rank 0 failed: out/epoch-0003: disk full", "free some space"))


def test_a_hung_rank_times_out_instead_of_hanging():
    out = launch(hangs, 2, timeout_s=TIMEOUT_S, wait_s=60, need=[0])
    status, res = out[0]
    assert status == "ok", res
    assert res["error"] is not None, "the all-reduce returned although rank 1 never joined it"
    assert TIMEOUT_S * 0.5 <= res["elapsed"] < TIMEOUT_S + MARGIN_S
    assert "rank 0 of 2: all-reduce of the EM flows failed" in res["error"]


def test_a_group_that_cannot_form_fails_within_the_timeout():
    took: dict[int, float] = {}
    out = launch(nothing, 2, timeout_s=2.0, wait_s=60, start=[0], seconds=took)  # rank 1 never starts
    status, msg = out[0]
    assert status == "DistributedError"
    assert took[0] < 2.0 + MARGIN_S  # measured by the rank: its start-up under load is not the timeout's
    assert "rank 0 of 2: cannot join the process group" in msg
    assert "torchrun --nproc_per_node" in msg


# ---- without a group -----------------------------------------------------------------------------
def _no_launcher(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PCIR_DIST_TIMEOUT", "PCIR_DIST_BACKEND"):
        monkeypatch.delenv(k, raising=False)


def test_init_outside_a_launcher_says_how_to_start(monkeypatch):
    _no_launcher(monkeypatch)
    assert not distributed.launched()
    with pytest.raises(DistributedError) as e:
        distributed.init(device="cpu")
    assert "not started by a launcher: RANK and WORLD_SIZE are not set" in e.value.render()
    assert "torchrun --nproc_per_node=2 -m pcir train" in e.value.render()


def test_bad_launcher_settings(monkeypatch):
    _no_launcher(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(PcirError, match="environment variable WORLD_SIZE='two' is not an integer"):
        knobs.get()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DistributedError, match="RANK=2 and WORLD_SIZE=2 do not describe a rank"):
        distributed.init(device="cpu")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedError, match="timeout must be positive"):
        distributed.init(device="cpu", timeout_s=0)
    with pytest.raises(DistributedError, match="unknown distributed backend 'mpi'"):
        distributed.init(device="cpu", backend="mpi")
    with pytest.raises(DistributedError, match="nccl backend needs CUDA"):
        distributed.init(device="cpu", backend="nccl")


def test_pcir_train_distributed_outside_a_launcher(monkeypatch, capsys, tmp_path):
    _no_launcher(monkeypatch)
    rc = cli.main(["train", "model.pc", "--data", "nltcs", "--distributed", "--device", "cpu"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "error: not started by a launcher" in err and "hint: start one process per GPU with torchrun" in err


# ---- pieces --------------------------------------------------------------------------------------
def test_buckets_are_bounded_in_order_views():
    a = torch.arange(10, dtype=torch.float32)
    b = torch.arange(3, dtype=torch.float32)
    c = torch.zeros(0)
    d = torch.arange(4, dtype=torch.float64)
    bks = buckets([a, b, c, d], bucket_bytes=16)  # 4 float32s per bucket
    pieces = [p for bk in bks for p in bk]
    assert all(sum(p.numel() * p.element_size() for p in bk) <= 16 for bk in bks)
    assert all(len({p.dtype for p in bk}) == 1 for bk in bks)
    assert torch.equal(torch.cat([p for p in pieces if p.dtype == torch.float32]), torch.cat([a, b]))
    assert torch.equal(torch.cat([p for p in pieces if p.dtype == torch.float64]), d)
    pieces[0].fill_(-1)  # views: a bucket of one piece is reduced in place
    assert float(a[0]) == -1
    assert len(buckets([a, b], bucket_bytes=1 << 20)) == 1  # small tensors: one flat buffer, one call
    with pytest.raises(DistributedError, match="non-contiguous"):
        buckets([torch.zeros(4, 4).t()], 64)


def test_local_comm_is_the_identity():
    comm = LocalComm()
    assert comm.part(10) == (0, 10) and comm.shard(slice(3, 9), 5) == slice(3, 9)
    idx = torch.arange(7)
    assert comm.shard(idx) is idx
    assert comm.sum_floats([1.5, 2]) == [1.5, 2.0]
    assert comm.on_main(lambda: 7) == 7 and comm.broadcast_json({"a": 1}) == {"a": 1}
    model = compile_model()
    assert comm.ddp(model) is model and comm.params_in_sync(model) and not comm.sync_params(model)


def test_parts_cover_the_batch_for_any_number_of_ranks():
    for world in (1, 2, 3, 4, 7):
        for n in (0, 1, 5, 16, 17):
            comms = []
            for r in range(world):
                c = LocalComm()
                c.rank, c.world_size = r, world
                comms.append(c)
            parts = [c.part(n) for c in comms]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(p[1] == q[0] for p, q in zip(parts, parts[1:], strict=False))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1
            idx = torch.arange(100, 100 + n)
            assert torch.equal(torch.cat([c.shard(idx) for c in comms]), idx)
            data = torch.arange(10 + n)  # a batch slice running past the end of the data
            sl = [c.shard(slice(10, 10 + 2 * n), 10 + n) for c in comms]
            assert torch.equal(torch.cat([data[s] for s in sl]), data[10:])


def test_flow_bytes_and_ring_cost():
    model = compile_model()
    assert flow_bytes(model) == 4 * sum(t.numel() for t in model.flow_tensors())
    assert flow_bytes(model.plan) == flow_bytes(model)
    # 1 GB over 2 ranks at 100 GB/s: each rank sends and receives half twice = 1 GB -> 10 ms
    assert ring_all_reduce_seconds(1e9, 2, 100e9) == pytest.approx(0.01)
    assert ring_all_reduce_seconds(1e9, 8, 100e9) == pytest.approx(2 * 7 / 8 * 0.01)
    assert ring_all_reduce_seconds(1e9, 1, 100e9) == 0.0
