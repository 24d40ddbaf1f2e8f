"""Data readers and dataset resolution: every format, every spec form, the shipped NLTCS."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

from pcir import knobs
from pcir.data import SPLITS, check_table, known_names, load_dataset, read_file, read_idx, read_text
from pcir.data.dataset import IDX_VALID_SIZE
from pcir.ir import CircuitBuilder, Dist, Domain

# SHA-256 of the original debd/nltcs text files (src/pcir/data/shipped/README.md)
NLTCS_SHA = {
    "train": "e547a7aedad1dd2f7177030881ab1b92c7e24ae5464c71a0f1f89daecaf52b30",
    "valid": "93bbbf5c6febdc9bc6e5b5bfab636f4dc0685ab2896d24b23dd267794c3bfcf6",
    "test": "f9ffa6b74b27dc03bee3203d157ee31079e80b13be40d0c0093d635c25aed523",
}


def write_debd(path, x):
    path.write_text("".join(",".join(str(int(v)) for v in row) + "\n" for row in x))


def write_idx(path, a: np.ndarray, code: int = 0x08):
    dt = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(dt).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def binary_circuit(n: int, k: int = 2):
    b = CircuitBuilder()
    xs = b.variables(n, Domain.categorical(k))
    b.root(b.sum([b.product([b.input(v, 2, Dist.make("categorical", k=k)) for v in xs])], 1))
    return b.build()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_shipped_nltcs_reproduces_the_original_files():
    ds = load_dataset("nltcs")
    assert ds.sizes() == {"train": 16181, "valid": 2157, "test": 3236}
    assert ds.num_vars == 16 and ds.image_shape is None
    for split in SPLITS:
        x = ds[split]
        assert x.dtype == np.uint8 and set(np.unique(x)) <= {0, 1}
        text = "".join(",".join(map(str, row)) + "\n" for row in x.tolist())
        assert hashlib.sha256(text.encode()).hexdigest() == NLTCS_SHA[split]
    assert "nltcs" in known_names()


def test_debd_text_dir_and_prefix_and_fingerprint(tmp_path, rng):
    d = tmp_path / "toy"
    d.mkdir()
    splits = {s: rng.integers(0, 2, size=(n, 5)) for s, n in zip(SPLITS, (20, 7, 9), strict=True)}
    for s, x in splits.items():
        write_debd(d / f"toy.{s}.data", x)
    by_dir, by_prefix = load_dataset(d), load_dataset(d / "toy")
    for ds in (by_dir, by_prefix):
        assert ds.name == "toy" and ds.sizes() == {"train": 20, "valid": 7, "test": 9}
        for s in SPLITS:
            np.testing.assert_array_equal(ds[s], splits[s])
            assert ds[s].dtype == np.uint8
    # the same values from an .npz (any integer dtype) give the same fingerprint
    np.savez(tmp_path / "toy.npz", **{s: x.astype(np.int64) for s, x in splits.items()})
    assert load_dataset(tmp_path / "toy.npz").fingerprint() == by_dir.fingerprint()
    splits["test"][0, 0] ^= 1
    np.savez(tmp_path / "other.npz", **splits)
    assert load_dataset(tmp_path / "other.npz").fingerprint() != by_dir.fingerprint()


def test_valid_and_test_splits_are_optional(tmp_path, rng):
    write_debd(tmp_path / "a.train.data", rng.integers(0, 2, size=(4, 3)))
    ds = load_dataset(tmp_path / "a")
    assert list(ds.splits) == ["train"] and not ds.has("valid")


def test_csv_header_detection_missing_values_and_tsv(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,c\n0,1,2\n1,0,1\n")
    t = read_file(tmp_path / "h.csv")
    assert t.header == ("a", "b", "c") and t.x.tolist() == [[0, 1, 2], [1, 0, 1]]
    assert t.origin.header_lines == 1
    (tmp_path / "n.csv").write_text("0,1,2\n1,0,1\n")
    assert read_file(tmp_path / "n.csv").header is None
    (tmp_path / "m.csv").write_text("x,y\n0.5,?\n,2.25\n")
    m = read_file(tmp_path / "m.csv").x
    assert m[0, 0] == 0.5 and m[1, 1] == 2.25 and np.isnan(m[0, 1]) and np.isnan(m[1, 0])
    (tmp_path / "t.tsv").write_text("1\t2\n3\t4\n")
    assert read_file(tmp_path / "t.tsv").x.tolist() == [[1, 2], [3, 4]]
    # a file without a trailing newline and with CRLF line ends
    (tmp_path / "crlf.data").write_bytes(b"0,1\r\n1,1")
    assert read_text(tmp_path / "crlf.data").x.tolist() == [[0, 1], [1, 1]]


def test_missing_values_are_marginalised_only_when_allowed(tmp_path):
    (tmp_path / "m.csv").write_text("1,?\n0,1\n")
    t = read_file(tmp_path / "m.csv")
    x, miss = check_table(t, binary_circuit(2), allow_missing=True)
    assert miss.tolist() == [[False, True], [False, False]]
    x, miss = check_table(read_file(tmp_path / "m.csv").__class__(np.array([[1, 0]]), t.origin), binary_circuit(2))
    assert miss is None


def test_npy_and_npz(tmp_path, rng):
    x = rng.integers(0, 3, size=(6, 4))
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(read_file(tmp_path / "x.npy").x, x)
    np.save(tmp_path / "one.npy", x[0])
    assert read_file(tmp_path / "one.npy").x.shape == (1, 4)
    np.save(tmp_path / "b.npy", x > 0)
    assert read_file(tmp_path / "b.npy").x.dtype == np.uint8
    np.save(tmp_path / "img.npy", rng.integers(0, 256, size=(3, 2, 5)))
    t = read_file(tmp_path / "img.npy")
    assert t.x.shape == (3, 10) and t.image_shape == (2, 5)
    np.savez(tmp_path / "s.npz", train=x, test=x[:2])
    ds = load_dataset(tmp_path / "s.npz")
    assert ds.sizes() == {"train": 6, "test": 2}
    ds = load_dataset(tmp_path / "x.npy")
    assert list(ds.splits) == ["train"] and ds.notes


def test_idx_plain_and_gz_and_image_dataset(tmp_path, rng):
    imgs = rng.integers(0, 256, size=(IDX_VALID_SIZE + 7, 4, 3)).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs[:5])
    t = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert t.image_shape == (4, 3) and t.x.shape == (IDX_VALID_SIZE + 7, 12)
    np.testing.assert_array_equal(t.x, imgs.reshape(len(imgs), -1))
    ds = load_dataset(tmp_path)
    assert ds.sizes() == {"train": 7, "valid": IDX_VALID_SIZE, "test": 5} and ds.image_shape == (4, 3)
    np.testing.assert_array_equal(ds["valid"], imgs[7:].reshape(IDX_VALID_SIZE, -1))
    labels = np.arange(10) % 3
    write_idx(tmp_path / "labels-idx1-ubyte", labels)
    assert read_file(tmp_path / "labels-idx1-ubyte").x.tolist() == [labels.tolist()]
    f = rng.normal(size=(3, 2)).astype(np.float32)
    write_idx(tmp_path / "f-idx2-float", f, 0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "f-idx2-float").x, f)


def test_comma_separated_files_and_data_dir_knob(tmp_path, rng, monkeypatch):
    for s in SPLITS:
        np.save(tmp_path / f"{s}.npy", rng.integers(0, 2, size=(3, 2)))
    spec = ",".join(str(tmp_path / f"{s}.npy") for s in SPLITS)
    assert load_dataset(spec).sizes() == {"train": 3, "valid": 3, "test": 3}
    assert load_dataset(tmp_path).sizes() == {"train": 3, "valid": 3, "test": 3}  # train.npy etc. in a folder
    root = tmp_path / "root"
    (root / "zz").mkdir(parents=True)
    write_debd(root / "zz" / "zz.train.data", rng.integers(0, 2, size=(5, 3)))
    monkeypatch.setenv("PCIR_DATA_DIR", str(root))
    assert knobs.get().data_dir == root
    assert load_dataset("zz").sizes() == {"train": 5}
    assert "zz" in known_names()


def test_check_table_accepts_valid_values_and_keeps_dtype(rng):
    x = rng.integers(0, 3, size=(10, 4)).astype(np.uint8)
    from pcir.data import Origin, Table

    got, miss = check_table(Table(x, Origin("mem", "array")), binary_circuit(4, k=3))
    assert got is x and miss is None
