"""Datasets: train/valid/test splits resolved from a name or a path, checked against a circuit.

``load_dataset(spec)`` understands:

* a name shipped with pcir: ``nltcs``;
* ``fashion-mnist`` / ``mnist``: the idx files that Debian's ``dataset-fashion-mnist`` (``-mnist``)
  installs under ``/usr/share/datasets/``;
* a name found under ``$PCIR_DATA_DIR`` (``NAME/NAME.{train,valid,test}.data`` or ``NAME.npz``);
* ``path/to/dir/NAME`` or ``path/to/dir`` with ``NAME.{train,valid,test}.data`` inside (the binary
  density-estimation layout; ``valid`` and ``test`` may be absent);
* a folder with MNIST-style idx files (``train-images-idx3-ubyte[.gz]``, ``t10k-images-...``);
  valid is the last 5000 training images, train the rest;
* ``file.npz`` with arrays ``train`` (and optionally ``valid``, ``test``);
* one file (``.npy``, ``.csv``, ``.data``, idx): the training split only;
* ``train.csv,valid.csv,test.csv``: one file per split, in that order.

Values are kept as read, in the smallest integer type that holds them when they are all whole
numbers (so text and binary copies of the same data have the same :meth:`Dataset.fingerprint`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .. import knobs
from ..ir.circuit import Circuit
from ..ir.diagnostics import DataError, suggest
from .readers import ROWS_FROM_1, Origin, Table, npz_keys, read_file, read_idx, read_npz, read_text

SPLITS = ("train", "valid", "test")
SHIPPED = {"nltcs": "nltcs.npz"}
SYSTEM_IDX = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
IDX_VALID_SIZE = 5000


@dataclass(frozen=True)
class Dataset:
    """Named splits (``train`` always; ``valid``/``test`` when available) of one dataset."""

    name: str
    splits: Mapping[str, Table]
    source: str
    image_shape: tuple[int, ...] | None = None
    notes: tuple[str, ...] = field(default=())

    def __getitem__(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise DataError(f"dataset '{self.name}' has no {split} split (it has: {', '.join(self.splits)})")
        return self.splits[split].x

    def has(self, split: str) -> bool:
        return split in self.splits

    @property
    def num_vars(self) -> int:
        return self.splits["train"].num_cols

    def sizes(self) -> dict[str, int]:
        return {k: t.num_rows for k, t in self.splits.items()}

    def fingerprint(self) -> str:
        """SHA-256 over every split's name, dtype, shape and values (a checkpoint records it)."""
        h = hashlib.sha256()
        for k in SPLITS:
            if k in self.splits:
                x = np.ascontiguousarray(self.splits[k].x)
                h.update(f"{k}:{x.dtype.str}:{x.shape};".encode())
                h.update(memoryview(x).cast("B"))
        return h.hexdigest()

    def check(self, circuit: Circuit, allow_missing: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Check every split against the circuit's variables: ``{split: (x, missing or None)}``."""
        return {k: check_table(t, circuit, allow_missing) for k, t in self.splits.items()}

    def describe(self) -> str:
        parts = ", ".join(f"{k} {n}" for k, n in self.sizes().items())
        return f"{self.name}: {self.num_vars} variables; {parts} samples ({self.source})"


# ---- checking against a circuit -----------------------------------------------------------------
def _domain_text(domain) -> str:
    if domain.k == 2:
        return "binary (0 or 1)"
    return f"categorical({domain.k}) (an integer 0..{domain.k - 1})"


def check_table(table: Table, circuit: Circuit, allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Check a table against ``circuit.variables``; returns ``(x, missing)`` (missing is None when
    nothing is missing). Errors name the file, the 1-based row and column, and the variable."""
    x, origin = table.x, table.origin
    nv = circuit.num_vars
    if x.ndim != 2 or x.shape[1] != nv:
        cols = x.shape[1] if x.ndim == 2 else "?"
        names = ", ".join(v.name for v in circuit.variables[:4]) + (", ..." if nv > 4 else "")
        raise origin.error(
            f"the data has {cols} columns but the circuit has {nv} variables ({names})",
            1,
            hint="one column per variable, in the circuit's variable order",
        )
    missing = None
    if x.dtype.kind == "f":
        nan = np.isnan(x)
        if nan.any():
            if not allow_missing:
                r, c = (int(i) for i in np.argwhere(nan)[0])
                raise origin.error(
                    f"row {r + 1}, column {c + 1} (variable '{circuit.variables[c].name}'): missing value (NaN)",
                    r + 1,
                    c + 1,
                    hint=f"{ROWS_FROM_1}; pass allow_missing (--allow-missing) to marginalise missing values",
                )
            missing = nan
        inf = np.isinf(x)
        if inf.any():
            r, c = (int(i) for i in np.argwhere(inf)[0])
            raise origin.error(
                f"row {r + 1}, column {c + 1} (variable '{circuit.variables[c].name}'): value {x[r, c]} is not finite",
                r + 1,
                c + 1,
            )
    discrete = np.array([v.domain.is_discrete for v in circuit.variables])
    if discrete.any():
        ks = np.array([v.domain.k if v.domain.is_discrete else 0 for v in circuit.variables])
        cols = np.nonzero(discrete)[0]
        sub = x[:, cols]
        if sub.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                bad = (sub < 0) | (sub >= ks[cols]) | (sub != np.floor(sub))
            if missing is not None:
                bad &= ~missing[:, cols]
        elif sub.dtype.kind == "u":
            bad = sub >= ks[cols]
        else:
            bad = (sub < 0) | (sub >= ks[cols])
        if bad.any():
            r, j = (int(i) for i in np.argwhere(bad)[0])
            c = int(cols[j])
            var = circuit.variables[c]
            raise origin.error(
                f"row {r + 1}, column {c + 1} (variable '{var.name}'): value {x[r, c]:g} is outside the domain {_domain_text(var.domain)}",
                r + 1,
                c + 1,
            )
    return x, missing


# ---- canonical dtype ----------------------------------------------------------------------------
def _canonical(t: Table) -> Table:
    """Whole numbers in the smallest integer dtype that holds them; anything else float64."""
    x = t.x
    if x.dtype.kind == "f":
        finite = np.isfinite(x).all()
        if not (finite and np.array_equal(x, np.floor(x))):
            return Table(x.astype(np.float64, copy=False), t.origin, t.header, t.image_shape)
    lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
    for dt in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return Table(x.astype(dt, copy=False), t.origin, t.header, t.image_shape)
    return t  # pragma: no cover


def _make(name: str, splits: dict[str, Table], source: str, notes: tuple[str, ...] = ()) -> Dataset:
    splits = {k: _canonical(splits[k]) for k in SPLITS if k in splits}
    train = splits["train"]
    for k, t in splits.items():
        if t.num_cols != train.num_cols:
            raise t.origin.error(
                f"the {k} split has {t.num_cols} columns but the train split has {train.num_cols}", 1, hint=None
            )
    return Dataset(name, splits, source, train.image_shape, notes)


# ---- resolving a spec ---------------------------------------------------------------------------
def _debd_prefix(prefix: Path) -> Dataset | None:
    """``dir/NAME`` with ``dir/NAME.train.data`` (and optionally valid/test)."""
    train = prefix.parent / f"{prefix.name}.train.data"
    if not train.is_file():
        return None
    splits = {"train": read_text(train)}
    for k in ("valid", "test"):
        f = prefix.parent / f"{prefix.name}.{k}.data"
        if f.is_file():
            splits[k] = read_text(f)
    return _make(prefix.name, splits, str(prefix))


def _idx_file(d: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem, stem.replace("-idx3-", ".idx3-") + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def _idx_dir(d: Path, name: str) -> Dataset | None:
    train = _idx_file(d, "train-images-idx3-ubyte")
    if train is None:
        return None
    full = read_idx(train)
    if full.num_rows <= IDX_VALID_SIZE:
        raise DataError(
            f"{train}: only {full.num_rows} images; need more than {IDX_VALID_SIZE} to hold out a validation split"
        )
    cut = full.num_rows - IDX_VALID_SIZE
    splits = {
        "train": Table(full.x[:cut], full.origin, image_shape=full.image_shape),
        # rows of the valid split are rows cut+1.. of the file: say so in its origin label
        "valid": Table(
            full.x[cut:],
            Origin(full.origin.path, "array", f"rows {cut + 1}-{full.num_rows}"),
            image_shape=full.image_shape,
        ),
    }
    test = _idx_file(d, "t10k-images-idx3-ubyte")
    if test is not None:
        splits["test"] = read_idx(test)
    note = f"valid = the last {IDX_VALID_SIZE} images of {train.name}; train = the first {cut}"
    return _make(name, splits, str(d), (note,))


def _npz_dataset(p: Path) -> Dataset:
    keys = npz_keys(p)
    if "train" not in keys:
        if len(keys) == 1:
            return _make(p.stem, {"train": read_npz(p, keys[0])}, str(p))
        raise DataError(
            f"{p}: no array named 'train' (it has: {', '.join(keys) or 'nothing'})",
            hint="save the splits as np.savez(path, train=..., valid=..., test=...)",
        )
    return _make(p.stem, {k: read_npz(p, k) for k in SPLITS if k in keys}, str(p))


def _shipped(name: str) -> Dataset:
    ref = resources.files("pcir.data").joinpath("shipped", SHIPPED[name])
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        splits = {}
        for k in SPLITS:
            shape = tuple(int(s) for s in z[f"{k}_shape"])
            x = np.unpackbits(z[k], axis=1, count=shape[1])
            splits[k] = Table(x, Origin(f"<pcir>/{name}.{k}", "array"))
    return _make(name, splits, f"shipped with pcir ({SHIPPED[name]})")


def _from_path(p: Path) -> Dataset | None:
    if p.is_dir():
        ds = _debd_prefix(p / p.name) or _idx_dir(p, p.name)
        if ds is not None:
            return ds
        found = {k: f for k in SPLITS for f in sorted(p.glob(f"{k}.*")) if f.is_file()}
        if "train" in found:
            return _make(p.name, {k: read_file(f) for k, f in found.items()}, str(p))
        raise DataError(
            f"{p}: no dataset found in this folder",
            hint=f"expected {p.name}.train.data (and .valid/.test), MNIST idx files, or train.csv/train.npy/...",
        )
    if p.is_file():
        if p.suffix == ".npz":
            return _npz_dataset(p)
        t = read_file(p)
        stem = p.name.split(".")[0]
        return _make(stem, {"train": t}, str(p), ("single file: training split only",))
    return _debd_prefix(p)


def known_names() -> list[str]:
    """Dataset names :func:`load_dataset` resolves without a path."""
    names = set(SHIPPED) | {k for k, d in SYSTEM_IDX.items() if d.is_dir()}
    dd = knobs.get().data_dir
    if dd is not None and dd.is_dir():
        names |= {c.name for c in dd.iterdir() if c.is_dir() and (c / f"{c.name}.train.data").is_file()}
        names |= {c.stem for c in dd.glob("*.npz")}
    return sorted(names)


def load_dataset(spec: str | Path) -> Dataset:
    """Resolve ``spec`` (a name, a folder, a path prefix, a file, or ``a,b,c`` files) to a Dataset."""
    s = str(spec)
    if "," in s and not Path(s).exists():
        files = [Path(f.strip()) for f in s.split(",")]
        if len(files) > 3:
            raise DataError(f"--data '{s}': at most 3 files (train, valid, test), got {len(files)}")
        return _make(files[0].name.split(".")[0], {k: read_file(f) for k, f in zip(SPLITS, files, strict=False)}, s)
    if s in SHIPPED:
        return _shipped(s)
    if s in SYSTEM_IDX and not Path(s).exists():
        d = SYSTEM_IDX[s]
        ds = _idx_dir(d, s) if d.is_dir() else None
        if ds is None:
            raise DataError(
                f"dataset '{s}' is not installed (looked in {d})",
                hint=f"on Debian/Ubuntu: apt-get install dataset-{s}; or pass the folder with its idx files",
            )
        return ds
    ds = _from_path(Path(s))
    if ds is not None:
        return ds
    dd = knobs.get().data_dir
    if dd is not None and "/" not in s:
        ds = _debd_prefix(dd / s / s) or (_npz_dataset(dd / f"{s}.npz") if (dd / f"{s}.npz").is_file() else None)
        if ds is not None:
            return ds
    names = known_names()
    hint = suggest(s, names)
    more = f"known names: {', '.join(names)}; or a folder, a path prefix dir/NAME, or a file (.npz, .npy, .csv, .data, idx)"
    raise DataError(f"unknown dataset '{s}' (no such name, file or folder)", hint=f"{hint} {more}" if hint else more)
