"""Importers on real and hand-written files: the probabilities they must give, grouping, gzip,
format detection, vtrees and the exporters' refusals."""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from pcir.frontend.formats import (
    FormatError,
    detect_format,
    export_circuit,
    export_file,
    import_file,
    import_text,
)
from pcir.ir import CircuitBuilder, Dist, Domain, InputGroup, SumGroup, log_likelihood, verify
from pcir.ir.evaluator import enumerate_assignments

DATA = Path(__file__).parent / "data" / "circuits"


def prob(c, x, missing=None):
    return np.exp(log_likelihood(c, np.asarray(x, dtype=float), missing))


def npdf(x, mean, std):
    return math.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


# ---- little_4var.psdd (numbers from the Juice.jl documentation) -----------------------------------


@pytest.mark.parametrize("with_vtree", [True, False])
def test_little_4var_probabilities(tmp_path, with_vtree):
    src = DATA / "little_4var.psdd"
    if not with_vtree:  # alone in a folder: no vtree next to it
        src = Path(shutil.copy(src, tmp_path / "little_4var.psdd"))
    c = import_file(src)
    verify(c)
    assert ("psdd.vtree" in dict(c.attrs)) == with_vtree
    np.testing.assert_allclose(prob(c, [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]), [0.07, 0.03, 0.14], rtol=1e-12)
    # marginal with x4 missing
    missing = np.array([[False, False, False, True]])
    np.testing.assert_allclose(prob(c, [[0, 0, 0, 0]], missing), [0.35], rtol=1e-12)
    # a distribution: the probabilities of all 16 assignments sum to 1
    assert prob(c, enumerate_assignments(c)).sum() == pytest.approx(1.0, abs=1e-12)


def test_little_4var_groups_by_vtree_node():
    c = import_file(DATA / "little_4var.psdd")
    # 4 indicator groups (one per variable), and per internal vtree node one product + one sum
    assert len(c) == 10
    sums = [g for g in c if isinstance(g, SumGroup)]
    assert sorted(g.attr("vtree") for g in sums) == [4, 5, 6]
    inputs = [g for g in c if isinstance(g, InputGroup)]
    assert all(g.dist.kind == "indicator" and g.units == 2 for g in inputs)


@pytest.mark.parametrize("name", ["simple2.1.psdd", "simple2.2.psdd"])
def test_simple2_psdds_are_normalised(name):
    c = import_file(DATA / name)
    verify(c)
    p = prob(c, enumerate_assignments(c))
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(p >= 0)


def test_simple2_1_by_hand():
    # D 5: 0.5 [!x1] T(x2; 0.2) + 0.25 [x1][x2] + 0.25 [x1][!x2]
    c = import_file(DATA / "simple2.1.psdd")
    np.testing.assert_allclose(
        prob(c, [[0, 0], [0, 1], [1, 0], [1, 1]]), [0.5 * 0.8, 0.5 * 0.2, 0.25, 0.25], rtol=1e-12
    )


def test_nonsmooth_psdd_is_imported_as_is_with_a_waiver():
    c = import_file(DATA / "nonsmooth.psdd")
    verify(c)  # passes thanks to the waiver on the one non-smooth sum group
    waived = [g.name for g in c if g.attr("waive") == "smooth"]
    assert len(waived) == 1 and waived == list(c.roots)
    x = enumerate_assignments(c)
    x1, x2, x3 = x[:, 0], x[:, 1], x[:, 2]
    inner = 0.7 * x2 * x3 + 0.3 * (1 - x2) * np.where(x3 == 1, 0.4, 0.6)
    want = 0.6 * x1 * inner + 0.4 * (1 - x1) * x2  # the second element ignores x3
    np.testing.assert_allclose(prob(c, x), want, rtol=1e-12)


# ---- hand-written files of the other formats --------------------------------------------------------


def test_hand_jpc():
    c = import_file(DATA / "hand.jpc")
    verify(c)
    assert [str(v.domain) for v in c.variables] == ["binary", "categorical(3)", "real", "categorical(3)"]
    binom = [0.25, 0.5, 0.25]  # B 11: binomial(2, 0.5)
    cat = [0.2, 0.3, 0.5]
    rows = [[1, 0, 0.5, 1], [0, 2, -1.0, 0], [0, 1, 2.0, 2], [1, 2, 0.0, 0]]
    want = []
    for x1, x2, x3, x4 in rows:
        x2 = int(x2)
        s = 0.5 * x1 * cat[x2] * npdf(x3, 0, 1)
        s += 0.3 * (1 - x1) * (x2 == 2) * npdf(x3, 1, 2)
        s += 0.2 * (0.25 if x1 else 0.75) * cat[x2] * npdf(x3, 1, 2)
        want.append(s * binom[int(x4)])
    np.testing.assert_allclose(prob(c, rows), want, rtol=1e-12)
    # x3 (real) marginalised
    missing = np.array([[False, False, True, False]])
    x1, x2, x4 = 1, 0, 1
    want_m = (0.5 * x1 * cat[x2] + 0.2 * 0.25 * cat[x2]) * binom[x4]
    np.testing.assert_allclose(prob(c, [[x1, x2, 0.0, x4]], missing), [want_m], rtol=1e-12)


def test_hand_jpc_gz_gives_the_same_circuit(tmp_path):
    gz = tmp_path / "hand.jpc.gz"
    gz.write_bytes(gzip.compress((DATA / "hand.jpc").read_bytes()))
    assert import_file(gz) == import_file(DATA / "hand.jpc")


def test_hand_spn():
    c = import_file(DATA / "hand.spn")
    verify(c)
    x = enumerate_assignments(c)
    a, b = x[:, 0].astype(int), x[:, 1].astype(int)
    want = np.where(a == 0, 0.4 * np.array([0.5, 0.25, 0.25])[b], 0.6 * np.array([0.1, 0.1, 0.8])[b])
    np.testing.assert_allclose(prob(c, x), want, rtol=1e-12)


def test_hand_spflow():
    c = import_file(DATA / "hand.spflow")
    verify(c)
    assert [v.name for v in c.variables] == ["x0", "x1", "x2"]
    rows = [[0, 1, 0.3], [1, 0, -2.0], [1, 1, 1.0]]
    want = []
    for a, b, z in rows:
        a, b = int(a), int(b)
        c0, c1 = [0.2, 0.8][a], [0.3, 0.7][b]
        left = c0 * (0.3 * c1 * npdf(z, 0, 1) + 0.7 * 0.5 * npdf(z, 1, 0.5))
        right = c0 * c1 * npdf(z, -1, 2)
        want.append(0.4 * left + 0.6 * right)
    np.testing.assert_allclose(prob(c, rows), want, rtol=1e-12)


def test_spflow_named_features_and_numpy_floats():
    text = "(0.5*((Bernoulli(age|p=np.float64(0.25)) * Gaussian(height|mean=1.5;stdev=0.5))) + 0.5*((Bernoulli(age|p=0.75) * Gaussian(height|mean=2;stdev=1))))"
    c = import_text(text, "spflow", "named.spflow")
    assert [v.name for v in c.variables] == ["age", "height"]
    want = 0.5 * 0.25 * npdf(1.0, 1.5, 0.5) + 0.5 * 0.75 * npdf(1.0, 2, 1)
    np.testing.assert_allclose(prob(c, [[1, 1.0]]), [want], rtol=1e-12)


# ---- detection, vtrees, exports ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt", [("hand.jpc", "jpc"), ("little_4var.psdd", "psdd"), ("hand.spn", "spn"), ("hand.spflow", "spflow")]
)
def test_format_detected_from_content_without_a_suffix(tmp_path, name, fmt):
    p = tmp_path / "model"
    p.write_text((DATA / name).read_text())
    assert detect_format(p, p.read_text()) == fmt
    assert import_file(p).stats() == import_file(DATA / name).stats()


def test_vtree_given_explicitly_and_checked(tmp_path):
    p = Path(shutil.copy(DATA / "little_4var.psdd", tmp_path / "m.psdd"))
    v = Path(shutil.copy(DATA / "little_4var.vtree", tmp_path / "other.vtree"))
    assert import_file(p, vtree=v) == import_file(DATA / "little_4var.psdd")
    # swap the leaves of variables 1 and 2: literal 1 is then at the wrong vtree node
    v.write_text(v.read_text().replace("L 0 1", "L 0 9").replace("L 1 2", "L 1 1").replace("L 0 9", "L 0 2"))
    with pytest.raises(FormatError) as e:
        import_file(p, vtree=v)
    assert "variable 1 is not at vtree node 0 (its vtree leaf is 1)" in e.value.render()


def test_vtree_adds_variables_the_psdd_never_mentions():
    vtree = "vtree 3\nL 0 1\nL 1 2\nI 2 0 1\n"
    psdd = "psdd 1\nT 0 0 1 -0.5\n"
    c = import_text(psdd, "psdd", "one.psdd", vtree=vtree)
    assert c.num_vars == 2
    np.testing.assert_allclose(prob(c, [[1, 0], [1, 1]]), [math.exp(-0.5)] * 2, rtol=1e-12)


def test_psdd_export_writes_the_vtree_too(tmp_path):
    c = import_file(DATA / "little_4var.psdd")
    written = export_file(c, "psdd", tmp_path / "out.psdd")
    assert [p.name for p in written] == ["out.psdd", "out.vtree"]

    def node_lines(p):
        return [s for s in p.read_text().splitlines() if s and not s.startswith("c")]

    assert node_lines(tmp_path / "out.vtree") == node_lines(DATA / "little_4var.vtree")
    assert import_file(tmp_path / "out.psdd") == c


def test_export_gz_and_back(tmp_path):
    c = import_file(DATA / "hand.jpc")
    export_file(c, None, tmp_path / "x.jpc.gz")
    assert gzip.decompress((tmp_path / "x.jpc.gz").read_bytes()).startswith(b"c this file was written by pcir")
    assert import_file(tmp_path / "x.jpc.gz") == c


def _gaussian_circuit():
    b = CircuitBuilder()
    (x,) = b.variables(1, Domain.real())
    g = b.input(x, units=2, dist=Dist.make("gaussian"), params=[[0.0, 1.0], [1.0, 2.0]])
    b.root(b.sum([g], units=1, weights=[[0.5, 0.5]]))
    return b.build()


@pytest.mark.parametrize(
    "fmt, message",
    [
        ("psdd", "psdd cannot express variable 'x0' of domain real: psdd variables are binary"),
        ("spn", "spn cannot express variable 'x0' of domain real: spn variables are discrete"),
    ],
)
def test_export_refuses_what_the_format_cannot_express(fmt, message):
    with pytest.raises(FormatError) as e:
        export_circuit(_gaussian_circuit(), fmt)
    assert e.value.render() == f"error: {message}"


def test_export_refuses_gaussian_leaves_in_a_psdd_and_categoricals_in_an_spn():
    b = CircuitBuilder()
    x = b.variables(2, Domain.binary())
    cat = b.input(x[0], units=1, dist=Dist.make("categorical", k=2), params=[[0.3, 0.7]])
    ind = b.input(x[1], units=1, dist=Dist.make("indicator"), params=[1])
    b.root(b.sum([b.product([cat, ind])], units=1, weights=[[1.0]]))
    c = b.build()
    with pytest.raises(FormatError, match="psdd cannot express group 'in0': categorical leaves"):
        export_circuit(c, "psdd")
    with pytest.raises(FormatError, match="spn cannot express group 'in0': categorical leaves"):
        export_circuit(c, "spn")
    # jpc and spflow can: and the function survives
    for fmt in ("jpc", "spflow"):
        back = import_text(export_circuit(c, fmt), fmt)
        x = enumerate_assignments(back)
        np.testing.assert_allclose(prob(back, x), prob(c, x), rtol=1e-12)


def test_export_refuses_several_roots():
    b = CircuitBuilder()
    (x,) = b.variables(1, Domain.binary())
    g = b.input(x, units=2, dist=Dist.make("bernoulli"), params=[0.2, 0.6])
    b.root(b.sum([g], units=1, weights=[[0.5, 0.5]]), b.sum([g], units=1, weights=[[0.1, 0.9]]))
    with pytest.raises(FormatError, match="jpc files have one root node; this circuit has 2 roots"):
        export_circuit(b.build(), "jpc")


def test_psdd_export_of_general_products_and_a_true_node():
    # a 3-way product under a sum and a sum over the two literals of x0 (a T node)
    b = CircuitBuilder()
    x = b.variables(3, Domain.binary())
    lits = [b.input(v, units=2, dist=Dist.make("indicator"), params=[1, 0]) for v in x]
    t = b.sum([lits[0]], units=1, weights=[[0.3, 0.7]])
    p = b.product([t, lits[1], lits[2]], pattern="explicit", edges=[[0, 0, 1], [0, 1, 0]])
    b.root(b.sum([p], units=1, weights=[[0.4, 0.6]]))
    c = b.build()
    text = export_circuit(c, "psdd")
    assert any(line.startswith("T ") for line in text.splitlines())
    back = import_text(text, "psdd")
    x_ = enumerate_assignments(c)
    np.testing.assert_allclose(prob(back, x_), prob(c, x_), rtol=1e-12)


def test_nothing_half_written_when_an_export_fails(tmp_path):
    target = tmp_path / "keep.psdd"
    target.write_text("old contents\n")
    with pytest.raises(FormatError):
        export_file(_gaussian_circuit(), "psdd", target)
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.psdd"]  # no temporary left behind


def test_nothing_half_written_when_writing_fails(tmp_path, monkeypatch):
    import os

    target = tmp_path / "keep.jpc"
    target.write_text("old contents\n")

    def broken_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(FormatError, match="cannot write: No space left on device"):
        export_file(import_file(DATA / "hand.jpc"), "jpc", target)
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jpc"]


def test_other_leaf_families_export_exactly():
    """binomial -> jpc B lines; literal -> indicators; any other discrete family (here
    discrete_logistic) -> the categorical of its probabilities: the function is unchanged."""
    b = CircuitBuilder()
    x = b.variables(3, Domain.categorical(4))
    binom = b.input(x[0], units=2, dist=Dist.make("binomial", n=3), params=[0.2, 0.7])
    lit = b.input(x[1], units=1, dist=Dist.make("literal", value=2))
    cat = b.input(x[1], units=1, dist=Dist.make("categorical", k=4), params=[[0.1, 0.2, 0.3, 0.4]])
    logi = b.input(x[2], units=1, dist=Dist.make("discrete_logistic", n=4), params=[[1.5, -0.5]])
    left = b.sum([binom], units=1, weights=[[0.4, 0.6]])
    mid = b.sum([lit, cat], units=1, weights=[[0.5, 0.5]])
    b.root(b.sum([b.product([left, mid, logi], pattern="aligned")], units=1, weights=[[1.0]]))
    c = b.build()
    verify(c)
    xs = enumerate_assignments(c)
    for fmt in ("jpc", "spflow"):
        text = export_circuit(c, fmt)
        if fmt == "jpc":
            assert sum(1 for line in text.splitlines() if line.startswith("B ") and line.split()[4] == "3") == 2
        back = import_text(text, fmt)
        verify(back)
        np.testing.assert_allclose(prob(back, xs), prob(c, xs), rtol=1e-12, atol=1e-300)
        if fmt == "jpc":
            assert {g.dist.kind for g in back if isinstance(g, InputGroup)} == {"binomial", "indicator", "categorical"}
