"""The interpreter patch that reorders a launch's programs (tests/_program_order.py)."""

from __future__ import annotations

import _program_order
import pytest
import torch

triton = pytest.importorskip("triton")
tl = triton.language


@triton.jit
def _stamp(order_out, last_out, counter):
    pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    # the launch's running count of programs done so far, as this program sees it
    seen = tl.load(counter)
    tl.store(counter, seen + 1)
    tl.store(order_out + pid, seen)
    tl.store(last_out, pid)


def _run(grid):
    n = grid[0] * grid[1]
    order = torch.full((n,), -1, dtype=torch.int32)
    last = torch.full((1,), -1, dtype=torch.int32)
    counter = torch.zeros(1, dtype=torch.int32)
    _stamp[grid](order, last, counter)
    return order.tolist(), int(last.item())


@pytest.fixture
def interpreted(device):
    from pcir import knobs

    if device != "cpu" or not knobs.get().triton_interpret:
        pytest.skip("the program-order patch is for TRITON_INTERPRET=1")


@pytest.mark.parametrize("order", ["reverse", "shuffle"])
def test_every_program_runs_once_in_the_patched_order(interpreted, order, request):
    outer = getattr(request.config, "_pcir_program_order", None)
    _program_order.uninstall(outer)
    try:
        remap = _program_order.install(order, seed=3)
        try:
            seen, last = _run((3, 5))
        finally:
            _program_order.uninstall(remap)
        assert remap.launches == 1
        assert sorted(seen) == list(range(15))  # every program ran, once
        if order == "reverse":
            assert seen == list(range(14, -1, -1))
            assert last == 0
        else:
            assert seen != list(range(15))  # seed 3 gives a permutation that moves something
            assert last == seen.index(14)
        # grid order again once the patch is off
        seen, last = _run((3, 5))
        assert seen == list(range(15)) and last == 14
    finally:
        if outer is not None:
            request.config._pcir_program_order = _program_order.install(outer.order)


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="program order 'sideways'"):
        _program_order.install("sideways")


def test_the_session_runs_in_the_order_asked_for(interpreted, request):
    """With --program-order reverse|shuffle every worker has the patch on (conftest.py)."""
    order = request.config.getoption("--program-order")
    seen, _ = _run((4, 4))
    assert sorted(seen) == list(range(16))
    if order == "grid":
        assert seen == list(range(16))
    elif order == "reverse":
        assert seen == list(range(15, -1, -1))
    else:
        assert seen != list(range(16))
