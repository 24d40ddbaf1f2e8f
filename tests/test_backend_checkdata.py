"""The data check of the graphed calls and the training step on the Triton engine
(``TritonEngine.check_data``, codegen's ``check_data``): one kernel writes the data transposed as
the leaf kernels read it, with every entry the runtime's value check rejects replaced by 0, and
counts the rejected entries. It must agree with the elementwise check (``_values_ok``) entry by
entry, for any layout of the data, and the calls that use it must give what the unchecked path
gives on good data and raise the same error on bad data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_backend_helpers import CASES, data_for

from pcir import knobs
from pcir.backend import compile as pc_compile
from pcir.ir.diagnostics import DataError


@pytest.fixture
def triton_device(device):
    if device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return device


def _spoil(x: np.ndarray, rng, n: int) -> np.ndarray:
    """``x`` with ``n`` entries replaced by values some variable rejects: NaN, infinities,
    negatives, too large, not integral (real variables accept the finite ones)."""
    x = x.copy()
    bad = [math.nan, math.inf, -math.inf, -1.0, 7.0, 0.5, 1e30]
    for i in range(n):
        r, c = rng.integers(0, x.shape[0]), rng.integers(0, x.shape[1])
        x[r, c] = bad[i % len(bad)]
    return x


@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("B", [1, 37, 70])
@pytest.mark.parametrize("name", sorted(CASES))
def test_check_data_agrees_with_the_elementwise_check(name, B, layout, triton_device):
    c = CASES[name]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    rng = np.random.default_rng(B)
    x, _ = data_for(c, B, seed=B)
    x = _spoil(x, rng, 0 if B == 1 else 9)
    xf = torch.as_tensor(x, dtype=torch.float32, device=triton_device)
    if layout == "columns":  # a transposed view: the kernel reads through the strides
        xf = xf.t().contiguous().t()
    t = m._tab()
    xT, bad = m._engine().check_data(xf, t.value_lo.reshape(-1), t.value_hi.reshape(-1), t.real_i8)
    ok = m._values_ok(xf)
    want = torch.where(ok, xf, torch.zeros((), device=xf.device)).t()
    assert xT.shape == want.shape and xT.is_contiguous()
    torch.testing.assert_close(xT, want, rtol=0, atol=0)
    assert int(bad[0]) == int((~ok).sum())
    if B > 1:
        assert int(bad[0]) > 0  # the spoiled entries were seen (real columns accept some of them)


@pytest.mark.parametrize("name", sorted(CASES))
def test_checked_calls_on_good_data_equal_the_unchecked_path(name, triton_device):
    """forward (the checked core, as a graphed call runs it) and train_step against the path that
    checks in torch (a missing mask of all False takes it): the log-likelihoods bit for bit, the
    parameters up to float rounding (tied tables are updated through atomic adds, which a GPU
    orders freely)."""
    c = CASES[name]()
    x, _ = data_for(c, 21, seed=4)
    none = np.zeros(x.shape, dtype=bool)
    a = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    b = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    b.load_state_dict(a.state_dict())
    xf = torch.as_tensor(x, dtype=torch.float32, device=triton_device)
    with torch.no_grad():
        a._normalised_cached()
        got, good = a._checked_forward_core(xf)
        assert bool(good)
        torch.testing.assert_close(got, a(x, none), rtol=0, atol=0)
    la = a.train_step(x, 0.5, 0.1)
    lb = b.train_step(x, 0.5, 0.1, missing=none)
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-6, msg=na)


def test_bad_data_is_named_and_changes_nothing(triton_device):
    c = CASES["mixed"]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, _ = data_for(c, 12, seed=1)
    m.train_step(x, 0.5, 0.1)  # a good step first (the tables' logits are log-probabilities after it)
    x[5, 1] = 3.0  # categorical(3): values 0, 1, 2
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with pytest.raises(DataError, match=r"value 3 at row 5, column 1"):
        m.train_step(x, 0.5, 0.1)
    with pytest.raises(DataError, match=r"row 5, column 1"):
        m(x)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0, msg=n)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool]
)
def test_check_data_reads_any_dtype_and_through_an_address(dtype, triton_device):
    """The kernel converts the data to float32 itself (as ``Tensor.to`` does) and, from
    ``check_data_at``, reads it through the address held in a one-word tensor (what a graph
    replayed on the caller's tensor does): both give the float32 path's result bit for bit."""
    c = CASES["tied_bernoulli" if dtype == torch.bool else "zero_probs"]()
    m = pc_compile(c, engine="triton", device=triton_device, precision="fp32")
    x, _ = data_for(c, 45, seed=3)
    if dtype != torch.bool:  # out-of-domain values the dtype can hold
        x[4, 0] = 9
        x[11, 1] = 255 if dtype == torch.uint8 else -1
        if dtype.is_floating_point:
            x[20, 0] = 0.5 if dtype != torch.float16 else math.nan
    xd = torch.as_tensor(x).to(dtype).to(triton_device)
    t = m._tab()
    lo, hi, real = t.value_lo.reshape(-1), t.value_hi.reshape(-1), t.real_i8
    eng = m._engine()
    want, want_bad = eng.check_data(xd.to(torch.float32), lo, hi, real)
    raw, raw_bad = eng.check_data(xd, lo, hi, real)
    word = torch.tensor([xd.data_ptr()], dtype=torch.int64)  # the CPU interpreter reads it there
    if triton_device == "cuda":
        word = word.pin_memory()
    at, at_bad = eng.check_data_at(word, tuple(xd.shape), dtype, lo, hi, real)
    for got, bad in ((raw, raw_bad), (at, at_bad)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert int(bad[0]) == int(want_bad[0])
    assert int(want_bad[0]) == (0 if dtype == torch.bool else 3 if dtype.is_floating_point else 2)
