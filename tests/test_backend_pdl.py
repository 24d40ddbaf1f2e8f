"""The sum forward's programmatic-dependent-launch form (triton_engine.PDL, docs/backend.md).

PDL 1 is the loop PDL 2 runs: each program reads its first column tile's indices and weights
before any value of the layer below, and each next tile's weights before that tile's gather.
Its arithmetic is the plain loop's, in the same order, so on the CPU interpreter every value
and group maximum the forward stores must be PDL 0's bit for bit, over every gather form
(contiguous and table-driven columns, dense and listed column tiles, feature- and batch-major
layouts); the flows and an EM step after it agree up to the order of the backward's atomic adds,
which the shuffled program order of the test runs changes between two runs.
PDL 2 adds CUDA's launch attribute and ``griddepcontrol`` (Hopper only): elsewhere it runs as 0,
and it compiles for sm_90 with both instructions and the attribute (a subprocess without the
interpreter, as tests/test_backend_ptx.py). On by default for the feature-major kernel only
(measured: bench/RESULTS.md, thirteenth session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_backend_gathers import CIRCUITS, block_sparse
from test_backend_helpers import data_for

from pcir import knobs
from pcir.backend import compile as pc_compile
from pcir.backend import triton_engine as te

HERE = Path(__file__).resolve().parent


@pytest.fixture
def interpreted(device):
    if device != "cpu" or not knobs.get().triton_interpret:
        pytest.skip("the bit-for-bit comparison runs on the CPU interpreter")


def _run(c, pdl, x, miss, monkeypatch):
    """(every stored value and group max of the forward, the flows, the log-likelihoods after an
    EM step) with ``triton_engine.PDL = pdl``."""
    monkeypatch.setattr(te, "PDL", pdl)
    monkeypatch.setattr(te, "PDL_FWDT", True)  # the batch-major kernel too
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")
    eng = m._engine()
    seen = {}
    real = eng.forward

    def spy(*a, **kw):
        V, M = real(*a, **kw)
        seen.setdefault("VM", (V.clone(), M.clone()))
        return V, M

    monkeypatch.setattr(eng, "forward", spy)
    with torch.no_grad():
        m(x, miss)
    m.zero_flows()
    m.forward_backward(x, miss)
    flows = [f.clone() for f in m.flow_tensors()]
    m.em_step(0.5, 0.1)
    with torch.no_grad():
        after = m(x, miss).clone()
    return seen["VM"], flows, after


@pytest.mark.parametrize(
    "contig, dense, small",
    [(True, False, 0), (False, False, 0), (True, True, 0), (False, True, 1e9)],
)
@pytest.mark.parametrize("batch", [1, 70])
@pytest.mark.parametrize("name", ["hclt", "hmm", "pd", "block_sparse", "mixed"])
def test_prefetching_loop_is_the_plain_loop_bit_for_bit(name, batch, contig, dense, small, interpreted, monkeypatch):
    monkeypatch.setattr(te, "CONTIG_GATHER", contig)
    monkeypatch.setattr(te, "DENSE_LOOP", dense)
    monkeypatch.setattr(te, "SMALL_LAYER", small)
    monkeypatch.setattr(te, "TRANS_FWD_MIN_BB", 64 if batch == 1 else 1)  # both layouts (sum_fwd, sum_fwdt)
    c = CIRCUITS[name]() if name != "block_sparse" else block_sparse()
    x, miss = data_for(c, batch, seed=batch + 3, p_missing=0.2)
    plain = _run(c, 0, x, miss, monkeypatch)
    pre = _run(c, 1, x, miss, monkeypatch)
    (v0, m0), (v1, m1) = plain[0], pre[0]
    assert torch.isfinite(v0[1:]).any()
    # the forward, every stored row and every group's max: bit for bit
    torch.testing.assert_close(v1, v0, rtol=0, atol=0)
    torch.testing.assert_close(m1, m0, rtol=0, atol=0)
    # what follows from it, up to the order of the backward's atomic adds (shuffled programs)
    for a, b in zip(pre[1], plain[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pre[2], plain[2], rtol=1e-6, atol=1e-6)


def test_pdl_2_runs_as_0_off_hopper(interpreted, monkeypatch):
    """Off a Hopper GPU, the default PDL 2 falls back to the plain loop (the loop alone was
    slower than it on an H200): the interpreter would fail on griddepcontrol."""
    c = CIRCUITS["hclt"]()
    x, miss = data_for(c, 9, seed=1)
    (v2, _), (v0, _) = _run(c, 2, x, miss, monkeypatch)[0], _run(c, 0, x, miss, monkeypatch)[0]
    torch.testing.assert_close(v2, v0, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("pdl", "fwdt", "hopper", "want"),
    [
        (2, False, True, {"sum_fwd": 2, "sum_fwdt": 0}),
        (2, True, True, {"sum_fwd": 2, "sum_fwdt": 2}),
        (2, True, False, {"sum_fwd": 0, "sum_fwdt": 0}),
        (1, False, False, {"sum_fwd": 1, "sum_fwdt": 0}),
        (1, True, False, {"sum_fwd": 1, "sum_fwdt": 1}),
        (0, True, True, {"sum_fwd": 0, "sum_fwdt": 0}),
        (3, False, True, {"sum_fwd": 3, "sum_fwdt": 0}),
        (3, True, False, {"sum_fwd": 0, "sum_fwdt": 0}),
    ],
)
def test_which_forward_kernel_gets_pdl(pdl, fwdt, hopper, want, monkeypatch):
    """The default (PDL 2, not PDL_FWDT) is the measured one: the feature-major kernel of small
    batch tiles only, and only where griddepcontrol exists."""
    monkeypatch.setattr(te, "PDL", pdl)
    monkeypatch.setattr(te, "PDL_FWDT", fwdt)
    eng = pc_compile(CIRCUITS["hclt"](), engine="triton", device="cpu")._engine()
    monkeypatch.setattr(eng, "pdl_ok", hopper)
    assert {n: eng._fwd_pdl(n) for n in want} == want


def test_the_loop_really_prefetches(interpreted, monkeypatch):
    """A wrong next-tile index (the prefetch reading tile j instead of j + 1) must show: with the
    generated text's next-tile line broken, PDL 1 no longer matches."""
    from pcir.backend import codegen

    good = "kt = tl.load(LIST + l0 + j + 1, mask=more, other=0)"
    assert codegen.SUM_KERNELS.count(good) == 2
    monkeypatch.setattr(te, "DENSE_LOOP", False)
    c = block_sparse()
    x, miss = data_for(c, 7, seed=2)
    plain = _run(c, 0, x, miss, monkeypatch)[0][0]
    monkeypatch.setattr(codegen, "SUM_KERNELS", codegen.SUM_KERNELS.replace(good, good.replace("j + 1", "j")))
    monkeypatch.setenv("PCIR_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"pcir-pdl-mut-{os.getpid()}"))
    broken = _run(c, 1, x, miss, monkeypatch)[0][0]
    assert not torch.equal(broken, plain)


@pytest.mark.parametrize("pdl", [2, 3])
def test_pdl_kernels_compile_for_sm90_with_the_attribute(pdl, tmp_path):
    """Both PDL forms (2: the prefetching loop; 3: the plain loop after the wait), both loops of
    every sum forward (dense and listed tiles: the dense one's index type failed only here)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    env["PCIR_CACHE_DIR"] = str(tmp_path / "pcir")
    r = subprocess.run(
        [sys.executable, str(HERE.parent / "bench" / "kernel_resources.py"), "pd-32", "--pdl", str(pdl)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if r.returncode != 0 and "ptxas" in (r.stdout + r.stderr).lower() and "not found" in (r.stdout + r.stderr).lower():
        pytest.skip("no ptxas for sm_90 on this machine")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    fwd = [ln for ln in r.stdout.splitlines() if " sum_fwd" in ln]
    assert len(fwd) >= 16  # every variant, both layouts, the unrolled ones too, both loops
    assert sum(" dense " in ln for ln in fwd) * 2 == len(fwd), fwd
    assert all(ln.endswith(" pdl") for ln in fwd), fwd


@pytest.fixture
def cuda(device):
    if device != "cuda":
        pytest.skip("PDL 2 runs on a CUDA device only (pytest --device cuda)")


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("pdl", [2, 3])
@pytest.mark.parametrize("batch", [1, 512])
@pytest.mark.parametrize("name", ["hclt", "pd", "block_sparse"])
def test_pdl_on_the_gpu_is_the_plain_forward(name, batch, pdl, dense, cuda, monkeypatch):
    """With the launch attribute and griddepcontrol, eagerly and replayed from the runtime's own
    CUDA graphs: the same log-likelihoods as PDL 0 bit for bit (the forward adds nothing
    atomically; its only atomic is a max), and the same up to rounding after a training step.
    ``dense``: dense layers on the loop over every tile (DENSE_LOOP), whose PDL form once did
    not compile."""
    monkeypatch.setattr(te, "DENSE_LOOP", dense)
    c = CIRCUITS[name]() if name != "block_sparse" else block_sparse()
    x, miss = data_for(c, batch, seed=5, p_missing=0.1)
    x, miss = torch.as_tensor(x).cuda(), torch.as_tensor(miss).cuda()
    out = {}
    monkeypatch.setattr(te, "PDL_FWDT", True)  # batch 512's batch-major kernel too
    for p in (0, pdl):
        monkeypatch.setattr(te, "PDL", p)
        m = pc_compile(c, engine="triton", device="cuda", precision="fp32")
        with torch.no_grad():
            lls = [m(x, miss).clone() for _ in range(3)]  # eager, capture, replay
        m.train_step(x, 0.5, 0.1)
        with torch.no_grad():
            after = [m(x, miss).clone() for _ in range(2)]
        out[p] = (lls, after)
    for a, b in zip(out[pdl][0], out[0][0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(out[pdl][1], out[0][1], strict=True):  # the step's atomic adds: any order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out[0][0][0]).all()
    assert not torch.equal(out[0][1][0], out[0][0][0])  # the step changed the model
