"""Every data error names the file, the 1-based row and column and the variable: golden messages.

Regenerate the golden file after an intended change with PCIR_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from pcir.data import check_table, load_dataset, read_file
from pcir.data import dataset as dataset_mod
from pcir.ir import CircuitBuilder, DataError, Dist, Domain

GOLDEN = Path(__file__).parent / "golden" / "data_errors.txt"


def circuit(domains):
    b = CircuitBuilder()
    vs = [b.variable(d, f"v{i}") for i, d in enumerate(domains)]
    leaves = []
    for v, d in zip(vs, domains, strict=True):
        dist = Dist.make("gaussian") if not d.is_discrete else Dist.make("categorical", k=d.k)
        leaves.append(b.input(v, 1, dist))
    b.root(b.sum([b.product(leaves)], 1))
    return b.build()


BIN4 = circuit([Domain.binary()] * 4)
MIXED = circuit([Domain.binary(), Domain.categorical(3), Domain.real()])


def idx_bytes(a, code=0x08):
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(">u1").tobytes()


def cases(tmp: Path):
    """(name, thunk) pairs; each thunk must raise DataError."""

    def text(name, content, check=None, **kw):
        p = tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())

        def go():
            t = read_file(p, **kw)
            if check is not None:
                check_table(t, check)

        return go

    def npy(name, a, check=BIN4):
        p = tmp / name
        np.save(p, a)
        return lambda: check_table(read_file(p), check)

    def raw(name, data, reader=read_file):
        p = tmp / name
        p.write_bytes(data)
        return lambda: reader(p)

    np.save(tmp / "full.npy", np.zeros((50, 4)))
    good_npy = (tmp / "full.npy").read_bytes()
    np.savez(tmp / "nokey.npz", a=np.zeros((2, 2)), b=np.ones((2, 2)))
    np.savez(tmp / "trainonly.npz", train=np.zeros((2, 4), int))
    (tmp / "emptydir").mkdir()
    np.save(tmp / "cols3.npy", np.zeros((2, 3)))
    np.save(tmp / "cols4.npy", np.zeros((2, 4)))
    with gzip.open(tmp / "good-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.arange(5)))
    gz = (tmp / "good-idx1-ubyte.gz").read_bytes()
    return [
        ("empty-file", text("empty.data", "")),
        ("blank-lines-only", text("blank.data", "\n\n  \n")),
        ("header-without-rows", text("head.csv", "a,b,c\n")),
        ("truncated-last-row", text("trunc.data", "0,1,0,1\n1,1,0,0\n1,0")),
        ("ragged-row", text("ragged.data", "0,1,0,1\n1,1,0\n1,0,0,1\n")),
        ("empty-line-inside", text("gap.data", "0,1,0,1\n\n1,0,0,1\n")),
        ("not-a-number", text("word.data", "0,1,0,1\n1,yes,0,0\n")),
        ("not-utf8", text("bin.data", b"\xff\xfe\x00\x01")),
        ("wrong-column-count-text", text("cols.data", "0,1,0\n1,1,0\n", BIN4)),
        ("wrong-column-count-array", npy("cols.npy", np.zeros((3, 5), int))),
        ("outside-binary-text", text("dom.data", "0,1,0,1\n1,1,0,0\n0,0,0,2\n", BIN4)),
        ("outside-binary-csv-with-header", text("dom.csv", "v0,v1,v2,v3\n0,1,0,1\n1,-1,0,0\n", BIN4)),
        ("outside-categorical-npy", npy("cat.npy", np.array([[0, 2, 0.5], [1, 3, 0.1]]), MIXED)),
        ("not-an-integer", text("frac.data", "0,1.5,0.25\n", MIXED)),
        ("missing-value-text", text("miss.data", "0,1,0,1\n1,?,0,0\n", BIN4)),
        ("nan-in-npy", npy("nan.npy", np.array([[0, 1, 0, 1], [0, 0, np.nan, 1.0]]))),
        ("infinite-real-value", text("inf.data", "0,1,0.5\n1,2,inf\n", MIXED)),
        ("truncated-npy", raw("cut.npy", good_npy[: len(good_npy) // 2])),
        ("garbage-npy", raw("junk.npy", b"this is not numpy")),
        ("empty-npy", raw("zero.npy", b"")),
        ("string-npy", npy("str.npy", np.array([["a", "b"]]))),
        ("npz-key-needed", lambda: read_file(tmp / "nokey.npz")),
        ("npz-without-train", lambda: load_dataset(tmp / "nokey.npz")),
        ("idx-bad-magic", raw("bad-idx3-ubyte", b"\x08\x03\x00\x00abc")),
        ("idx-truncated", raw("short-idx3-ubyte", idx_bytes(np.zeros((4, 3, 3)))[:-7])),
        ("gzip-truncated", raw("cut-idx1-ubyte.gz", gz[:-12])),
        ("no-such-file", lambda: read_file(tmp / "nope.csv")),
        ("folder-without-data", lambda: load_dataset(tmp / "emptydir")),
        ("splits-disagree", lambda: load_dataset(f"{tmp / 'cols4.npy'},{tmp / 'cols3.npy'}")),
        ("unknown-name", lambda: load_dataset("nltc")),
    ]


def render_all(tmp: Path) -> str:
    out = []
    for name, thunk in cases(tmp):
        with pytest.raises(DataError) as ei:
            thunk()
        out.append(f"== {name}\n{ei.value.render().replace(str(tmp), '<tmp>')}\n")
    return "\n".join(out)


def test_data_error_messages_match_golden(tmp_path, monkeypatch):
    # the list of known names must not depend on what this machine has installed
    monkeypatch.setattr(dataset_mod, "SYSTEM_IDX", {})
    monkeypatch.delenv("PCIR_DATA_DIR", raising=False)
    got = render_all(tmp_path)
    if os.environ.get("PCIR_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()


def test_text_errors_point_at_the_field(tmp_path):
    p = tmp_path / "d.data"
    p.write_text("0,1,0,1\n1,1,0,0\n0,0,0,12\n")
    with pytest.raises(DataError) as ei:
        check_table(read_file(p), BIN4)
    e = ei.value
    assert (e.span.file, e.span.line, e.span.col, e.span.end_col) == (str(p), 3, 7, 9)
    assert "row 3, column 4 (variable 'v3')" in e.message
