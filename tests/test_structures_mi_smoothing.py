"""The exact mutual-information estimator with a Laplace pseudocount (hclt's mi_pseudocount)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcir.ir.diagnostics import PcirError
from pcir.ir.distributions import Domain
from pcir.ir.printer import print_ir
from pcir.structures import chow_liu, hclt


def _smoothed_mi(x: np.ndarray, alpha: float) -> np.ndarray:
    """Pair by pair, straight from the definition: counts + alpha/k^2 per cell."""
    n, v = x.shape
    k = int(x.max()) + 1
    out = np.zeros((v, v))
    for i in range(v):
        for j in range(v):
            joint = np.full((k, k), alpha / k**2)
            for a, b in zip(x[:, i], x[:, j], strict=True):
                joint[a, b] += 1.0
            joint /= n + alpha
            pi, pj = joint.sum(axis=1), joint.sum(axis=0)
            if i == j:
                p = pi[pi > 0]
                out[i, j] = -(p * np.log(p)).sum()
                continue
            nz = joint > 0
            out[i, j] = (joint[nz] * np.log(joint[nz] / np.outer(pi, pj)[nz])).sum()
    return out


@given(
    st.integers(2, 40),
    st.integers(2, 5),
    st.integers(2, 3),
    st.sampled_from([0.0, 0.1, 1.0, 7.5]),
    st.integers(0, 2**16),
)
def test_smoothed_mi_matches_the_definition(n, v, k, alpha, seed):
    x = np.random.default_rng(seed).integers(0, k, size=(n, v))
    x[0, :] = k - 1  # every variable takes its top value somewhere: k is the data's
    got = chow_liu.mutual_information(x, estimator="exact", device="cpu", pseudocount=alpha, chunk_size=2, row_chunk=7)
    want = _smoothed_mi(x, alpha)
    off = ~np.eye(v, dtype=bool)
    np.testing.assert_allclose(got[off], want[off], rtol=1e-9, atol=1e-12)


def test_smoothing_shrinks_dependence_seen_in_few_rows():
    # two copies of one variable over 6 rows: plug-in MI is log 2; the pseudocount pulls it down,
    # and a huge one makes the pair look independent
    x = np.array([[0, 0], [1, 1], [0, 0], [1, 1], [0, 0], [1, 1]])
    mi = [chow_liu.mutual_information(x, estimator="exact", device="cpu", pseudocount=a)[0, 1] for a in (0, 1, 10, 1e6)]
    assert mi[0] == pytest.approx(np.log(2))
    assert mi[0] > mi[1] > mi[2] > mi[3] >= 0
    assert mi[3] < 1e-6


def test_smoothing_never_raises_mi_of_a_strong_pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=400)
    b = np.where(rng.random(400) < 0.9, a, 1 - a)  # tied to a
    c = rng.integers(0, 2, size=400)
    x = np.stack([a, b, c], axis=1)
    plain = chow_liu.mutual_information(x, estimator="exact", device="cpu")
    smooth = chow_liu.mutual_information(x, estimator="exact", device="cpu", pseudocount=50.0)
    assert plain[0, 1] > smooth[0, 1] > 0.1


def _small_data_whose_tree_smoothing_changes():
    for seed in range(200):
        x = np.random.default_rng(seed).integers(0, 2, size=(12, 6))
        plain = chow_liu.chow_liu_tree(x, estimator="exact", device="cpu")
        smooth = chow_liu.chow_liu_tree(x, estimator="exact", device="cpu", pseudocount=5.0)
        if {frozenset(e) for e in plain} != {frozenset(e) for e in smooth}:
            return x, smooth
    raise AssertionError("no small data set whose Chow-Liu tree smoothing changes")


def test_hclt_builds_on_the_smoothed_tree():
    x, smooth = _small_data_whose_tree_smoothing_changes()
    got = print_ir(hclt(x, 2, device="cpu", mi_pseudocount=5.0))
    want = print_ir(hclt(tree=smooth, num_vars=6, num_latents=2, domain=Domain.binary()))
    plain = print_ir(hclt(x, 2, device="cpu"))
    assert got == want
    assert got != plain
    assert plain == print_ir(hclt(x, 2, device="cpu", mi_pseudocount=0.0))
    with pytest.raises(PcirError, match="MI pseudocount"):
        hclt(x, 2, device="cpu", mi_pseudocount=-1.0)


def test_torch_path_smooths_the_same():
    pytest.importorskip("torch")
    x = np.random.default_rng(1).integers(0, 3, size=(50, 6))
    a = chow_liu.mutual_information(x, estimator="exact", device="cpu", pseudocount=0.5, chunk_size=4)
    b = chow_liu.mutual_information(x, estimator="exact", device="torch-cpu", pseudocount=0.5, chunk_size=4)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_pseudocount_is_refused(bad):
    x = np.zeros((4, 2), dtype=np.int64)
    with pytest.raises(PcirError, match="MI pseudocount must be a finite number >= 0"):
        chow_liu.mutual_information(x, estimator="exact", device="cpu", pseudocount=bad)


def test_pseudocount_needs_the_exact_estimator():
    x = np.random.default_rng(0).random((10, 3))
    with pytest.raises(PcirError, match="exact estimator"):
        chow_liu.mutual_information(x, estimator="soft", device="cpu", pseudocount=1.0)
