"""`pcir gen` and `pcir query` end to end (in process), against the Python API."""

from __future__ import annotations

import numpy as np
import pytest

from pcir import structures as st
from pcir.api import load
from pcir.cli import main
from pcir.commands.query import load_data
from pcir.ir import print_ir, verify
from pcir.ir import queries as q


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def binary_data(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((300, 6)) < 0.3).astype(int)
    x[:, 3] = x[:, 1] ^ (rng.random(300) < 0.1)
    f = tmp_path / "train.data"
    f.write_text("\n".join(",".join(map(str, r)) for r in x) + "\n")
    return f, x


def test_gen_hclt_writes_the_api_circuit(capsys, tmp_path, binary_data):
    f, x = binary_data
    out = tmp_path / "m.pcir"
    rc, _, err = run_cli(capsys, "gen", "hclt", "--data", str(f), "--latents", "3", "--device", "cpu", "-o", str(out))
    assert rc == 0 and "hclt: 6 variables" in err
    c = load(out)
    verify(c)
    assert print_ir(c) == print_ir(st.hclt(x, 3, device="cpu"))


@pytest.mark.parametrize(
    "argv, make",
    [
        (
            ["pd", "--height", "4", "--width", "6", "--latents", "2", "--split-intervals", "2,3", "--categories", "4"],
            lambda: st.pd(4, 6, 2, split_intervals=(2, 3), input_dist="categorical(k=4)"),
        ),
        (
            [
                "rat-spn",
                "--vars",
                "9",
                "--latents",
                "2",
                "--depth",
                "2",
                "--repetitions",
                "2",
                "--input-dist",
                "bernoulli",
                "--seed",
                "3",
            ],
            lambda: st.rat_spn(9, 2, 2, 2, input_dist="bernoulli", seed=3),
        ),
        (
            ["hmm", "--length", "5", "--states", "3", "--vocab", "7", "--inhomogeneous"],
            lambda: st.hmm(5, 3, 7, homogeneous=False),
        ),
    ],
)
def test_gen_other_kinds(capsys, tmp_path, argv, make):
    out = tmp_path / "m.pcir"
    rc, _, _ = run_cli(capsys, "gen", *argv, "-o", str(out))
    assert rc == 0
    assert out.read_text() == print_ir(make())
    rc, text, _ = run_cli(capsys, "gen", *argv)  # no -o: the IR text on stdout
    assert rc == 0 and text == print_ir(make())


def test_gen_pc_output(capsys, tmp_path):
    out = tmp_path / "m.pc"
    rc, _, err = run_cli(capsys, "gen", "hmm", "--length", "3", "--states", "2", "--vocab", "3", "-o", str(out))
    try:
        from pcir.frontend import emit  # noqa: F401
    except ImportError:
        assert rc == 1 and "writing .pc needs pcir.frontend.save_pc" in err
        return
    assert rc == 0
    c = load(out)
    ref = st.hmm(3, 2, 3)
    x = np.array([[0, 1, 2], [2, 2, 0]])
    np.testing.assert_allclose(q.log_likelihood(c, x), q.log_likelihood(ref, x))


def test_gen_errors(capsys, tmp_path):
    rc, _, err = run_cli(
        capsys, "gen", "pd", "--height", "8", "--width", "8", "--latents", "2", "--split-points", "4;x"
    )
    assert rc == 1 and "--split-points must be comma-separated integers, got 'x'" in err
    rc, _, err = run_cli(capsys, "gen", "hclt", "--data", str(tmp_path / "nope.data"), "--latents", "2")
    assert rc == 1 and "nope.data: no such file" in err
    rc, _, err = run_cli(
        capsys, "gen", "hmm", "--length", "3", "--states", "2", "--vocab", "3", "-o", str(tmp_path / "m.txt")
    )
    assert rc == 1 and "unknown output format '.txt'" in err
    rc, _, err = run_cli(
        capsys,
        "gen",
        "rat-spn",
        "--vars",
        "4",
        "--latents",
        "2",
        "--depth",
        "1",
        "--repetitions",
        "1",
        "--input-dist",
        "poison",
    )
    assert rc == 1 and "unknown distribution 'poison'" in err


@pytest.fixture
def model(tmp_path):
    c = st.hclt(tree=[(0, 1), (1, 2), (1, 3), (3, 4)], num_latents=2, input_dist="categorical(k=3)", seed=4)
    path = tmp_path / "m.pcir"
    path.write_text(print_ir(c))
    return c, path


def test_query_ll_marginal_map(capsys, tmp_path, model):
    c, path = model
    data = tmp_path / "d.csv"
    data.write_text("0,1,2,0,1\n2,?,1,,0\n")
    x, miss = load_data(str(data))
    assert miss.tolist() == [[False] * 5, [False, True, False, True, False]]
    rc, out, err = run_cli(capsys, "query", "ll", str(path), "--data", str(data))
    assert rc == 1 and "missing value at row 1, column 1" in err and "pcir query marginal" in err
    rc, out, _ = run_cli(capsys, "query", "marginal", str(path), "--data", str(data))
    np.testing.assert_allclose([float(v) for v in out.split()], q.marginal(c, x, miss))
    rc, out, _ = run_cli(capsys, "query", "map", str(path), "--data", str(data))
    got = np.array([[float(v) for v in line.split(",")] for line in out.split()])
    np.testing.assert_array_equal(got, q.map_assignment(c, x, miss))
    rc, out, _ = run_cli(capsys, "query", "map", str(path))
    assert out.count(",") == 4


def test_query_conditional_text_and_npy(capsys, tmp_path, model):
    c, path = model
    data = tmp_path / "d.csv"
    data.write_text("0,?,2,0,1\n2,1,?,1,0\n")
    x, miss = load_data(str(data))
    rc, out, _ = run_cli(capsys, "query", "conditional", str(path), "--data", str(data), "--targets", "x1,4")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "row,var,P(x=0),P(x=1),P(x=2)"
    ref = q.conditional(c, x, miss, [1, 4])
    row0_x4 = [float(v) for v in lines[2].split(",")[2:]]
    assert lines[2].startswith("0,x4,")
    np.testing.assert_allclose(row0_x4, ref[4][0])
    npy = tmp_path / "c.npy"
    run_cli(capsys, "query", "conditional", str(path), "--data", str(data), "-o", str(npy))
    arr = np.load(npy)
    ref_all = q.conditional(c, x, miss)  # targets: every variable missing somewhere (1 and 2)
    assert arr.shape == (2, 2, 3)
    np.testing.assert_allclose(arr[:, 0], ref_all[1])
    rc, _, err = run_cli(capsys, "query", "conditional", str(path), "--data", str(data), "--targets", "x9")
    assert rc == 1 and "unknown target variable 'x9'" in err


def test_query_sample(capsys, tmp_path, model):
    c, path = model
    rc, out, _ = run_cli(capsys, "query", "sample", str(path), "-n", "4", "--seed", "2")
    got = np.array([[float(v) for v in line.split(",")] for line in out.split()])
    np.testing.assert_array_equal(got, q.sample(c, 4, seed=2))
    ev = tmp_path / "e.csv"
    ev.write_text("?,1,?,0,2\n")
    rc, out, _ = run_cli(
        capsys, "query", "sample", str(path), "--evidence", str(ev), "-n", "3", "-o", str(tmp_path / "s.npy")
    )
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (3, 5) and (s[:, [1, 3, 4]] == [1, 0, 2]).all() and not np.isnan(s).any()


def test_query_data_errors(capsys, tmp_path, model):
    _, path = model
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1,2,0,1\n0,1\n")
    rc, _, err = run_cli(capsys, "query", "marginal", str(path), "--data", str(bad))
    assert rc == 1 and "bad.csv:2: 2 values, expected 5" in err
    bad.write_text("0,1,2,zero,1\n")
    rc, _, err = run_cli(capsys, "query", "marginal", str(path), "--data", str(bad))
    assert rc == 1 and "bad.csv:1: column 3: 'zero' is not a number" in err
    bad.write_text("0,1,2,0\n")
    rc, _, err = run_cli(capsys, "query", "marginal", str(path), "--data", str(bad))
    assert rc == 1 and "data has shape (1, 4), expected (N, 5)" in err
    bad.write_text("0,1,7,0,1\n")
    rc, _, err = run_cli(capsys, "query", "marginal", str(path), "--data", str(bad))
    assert rc == 1 and "value 7 at row 0, column 2 (x2) is outside the domain categorical(3)" in err
    rc, _, err = run_cli(capsys, "query", "conditional", str(path))
    assert rc == 1 and "needs --data FILE" in err
