"""Checkpoints: a circuit's structure, its parameter values and the training state, on disk.

One checkpoint is a directory of three files:

``model.pcir``
    The circuit in the canonical IR text (:func:`pcir.ir.print_ir`) with every parameter written as
    a placeholder (``init(uniform, seed=0)``): the structure, readable and diffable.
``params.safetensors``
    Every parameter's value, keyed by parameter name (safetensors: no pickle, no code).
``state.json``
    Training state: epoch, best validation score, settings, the seed that drives the per-epoch
    shuffles, the data fingerprint, the structure hash and the SHA-256 of the two files above.

A training run keeps its checkpoints under ``OUT/``: ``OUT/epoch-0007/`` directories and two
symbolic links, ``OUT/last`` and ``OUT/best``, to the latest and the best. Writing is atomic: the
directory is written under a temporary name, each file and the directory are fsync'ed, the
directory is renamed into place, and only then is the link swapped (``os.replace`` of a new link),
so a kill at any moment leaves ``last`` and ``best`` pointing at complete checkpoints. Old epoch
directories are removed only once no link points at them.

Loading checks everything it reads (missing files, invalid JSON, checksum, safetensors header,
parameter names and shapes, structure) and raises :class:`CheckpointError` naming the file and the
problem. Pickle is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .ir.circuit import NP_DTYPES, Circuit, Param
from .ir.diagnostics import CheckpointError
from .ir.printer import print_ir

FORMAT = 1
MODEL_FILE = "model.pcir"
PARAMS_FILE = "params.safetensors"
STATE_FILE = "state.json"
FILES = (MODEL_FILE, PARAMS_FILE, STATE_FILE)


# ---- structure ----------------------------------------------------------------------------------
def _placeholders(circuit: Circuit) -> Circuit:
    return circuit.replace(params={k: Param(p.shape, p.dtype, None, "uniform", 0) for k, p in circuit.params.items()})


def structure_text(circuit: Circuit) -> str:
    """The circuit's IR text with parameter values replaced by placeholders."""
    return print_ir(_placeholders(circuit))


def structure_hash(circuit: Circuit) -> str:
    """SHA-256 of the structure alone: no parameter values and no annotations (attributes), so a
    checkpoint trained with one pass pipeline or device loads into the same circuit compiled for
    another."""
    bare = _placeholders(circuit)
    bare = bare.replace(groups=[g.with_attrs(**{k: None for k, _ in g.attrs}) for g in bare], attrs=())
    return hashlib.sha256(print_ir(bare).encode()).hexdigest()


def param_arrays(circuit: Circuit) -> dict[str, np.ndarray]:
    """Every parameter's concrete value, by name."""
    return {k: np.ascontiguousarray(circuit.param_value(k)) for k in circuit.params}


# ---- atomic file system helpers -----------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_file_atomic(path: str | Path, data: bytes | str) -> None:
    """Write a file so that a reader sees the old or the new content, never a mix."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    _write_bytes(tmp, data.encode() if isinstance(data, str) else data)
    os.replace(tmp, p)
    _fsync_dir(p.parent)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- saving -------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, circuit: Circuit, state: dict[str, Any] | None = None) -> Path:
    """Write one checkpoint directory atomically (replacing any directory already at ``path``)."""
    from safetensors.numpy import save as st_save

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model_text = structure_text(circuit).encode()
    params_bytes = st_save(param_arrays(circuit), metadata={"format": "pcir-params", "version": str(FORMAT)})
    st = dict(state or {})
    st["format"] = FORMAT
    st["structure_sha256"] = structure_hash(circuit)
    st["files"] = {MODEL_FILE: _sha256(model_text), PARAMS_FILE: _sha256(params_bytes)}
    _write_bytes(tmp / MODEL_FILE, model_text)
    _write_bytes(tmp / PARAMS_FILE, params_bytes)
    _write_bytes(tmp / STATE_FILE, (json.dumps(st, indent=1, sort_keys=True) + "\n").encode())
    _fsync_dir(tmp)
    if final.exists() or final.is_symlink():
        # only an orphan (a directory no link points at) is ever replaced; move it aside first
        # because a directory cannot be renamed over a non-empty one
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _point(link: Path, target_name: str) -> None:
    """Atomically make ``link`` a relative symlink to ``target_name`` (a sibling)."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def save_run_checkpoint(out: str | Path, circuit: Circuit, state: dict[str, Any], *, best: bool) -> Path:
    """Save epoch ``state['epoch']`` under ``out/epoch-NNNN``, point ``out/last`` (and ``out/best``
    when ``best``) at it, then remove epoch directories no link points at."""
    out = Path(out)
    name = f"epoch-{int(state['epoch']):04d}"
    path = save_checkpoint(out / name, circuit, state)
    _point(out / "last", name)
    if best:
        _point(out / "best", name)
    keep = {os.readlink(out / k) for k in ("last", "best") if (out / k).is_symlink()}
    for d in out.iterdir():
        stale_tmp = d.name.startswith((".tmp-epoch-", ".old-epoch-"))
        if (d.name.startswith("epoch-") and d.name not in keep) or stale_tmp:
            shutil.rmtree(d, ignore_errors=True)
    return path


# ---- loading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """A loaded, checked checkpoint."""

    path: Path
    params: dict[str, np.ndarray]
    state: dict[str, Any]
    model_text: str

    @property
    def epoch(self) -> int:
        return int(self.state.get("epoch", 0))

    def apply(self, circuit: Circuit) -> Circuit:
        """``circuit`` with this checkpoint's parameter values (checks that the structure matches)."""
        check_matches(self, circuit)
        return circuit.with_params(**{k: v for k, v in self.params.items()})

    def circuit(self) -> Circuit:
        """The checkpoint as a circuit, from ``model.pcir`` alone (needs the IR parser)."""
        try:
            from .ir.parser import parse_ir
        except ImportError:  # pragma: no cover - the parser lands separately
            raise CheckpointError(
                f"{self.path / MODEL_FILE}: reading it needs pcir.ir.parser, which is not installed"
            ) from None
        c = parse_ir(self.model_text, filename=str(self.path / MODEL_FILE))
        return self.apply(c)


def resolve(path: str | Path, which: str = "best") -> Path:
    """A checkpoint directory from ``path``: itself if it holds ``state.json``, else ``path/which``
    (``best`` falls back to ``last`` when a run has no best yet)."""
    p = Path(path)
    if (p / STATE_FILE).exists() or (p / PARAMS_FILE).exists():
        return p
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint directory")
    for name in (which, "last") if which == "best" else (which,):
        cand = p / name
        if cand.is_symlink() and not cand.exists():
            raise CheckpointError(f"{cand}: link to a missing checkpoint ({os.readlink(cand)})")
        if cand.exists():
            return cand
    raise CheckpointError(f"{p}: not a checkpoint (no {STATE_FILE}) and no '{which}' checkpoint inside")


def load_checkpoint(path: str | Path, which: str = "best", circuit: Circuit | None = None) -> Checkpoint:
    """Load and check a checkpoint (``path`` is a checkpoint directory or a run's ``OUT``).

    With ``circuit``, also check that the checkpoint was written for that circuit's structure.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    d = resolve(path, which)
    data: dict[str, bytes] = {}
    for name in FILES:
        f = d / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (incomplete checkpoint)")
        data[name] = f.read_bytes()
    state_path = d / STATE_FILE
    try:
        state = json.loads(data[STATE_FILE].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f"line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise CheckpointError(f"{state_path}: not valid JSON ({where}): the file is truncated or corrupt") from None
    if not isinstance(state, dict) or "format" not in state or "files" not in state:
        raise CheckpointError(f"{state_path}: not a pcir checkpoint state (no 'format'/'files' keys)")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{state_path}: checkpoint format {state['format']}, this pcir reads format {FORMAT}")
    for name in (MODEL_FILE, PARAMS_FILE):
        want = state["files"].get(name)
        got = _sha256(data[name])
        if want != got:
            raise CheckpointError(
                f"{d / name}: checksum mismatch (its SHA-256 differs from the one in {STATE_FILE}): the file is truncated or corrupt"
            )
    try:
        params = st_load(data[PARAMS_FILE])
    except SafetensorError:
        raise CheckpointError(f"{d / PARAMS_FILE}: not a valid safetensors file (unreadable header)") from None
    ck = Checkpoint(d, params, state, data[MODEL_FILE].decode())
    if circuit is not None:
        check_matches(ck, circuit)
    return ck


_MISMATCH_HINT = "use the model file (and --pipeline) the checkpoint was trained with"


def check_matches(ck: Checkpoint, circuit: Circuit) -> None:
    """Raise CheckpointError unless ``ck`` holds parameters for ``circuit``'s structure."""
    where = ck.path / PARAMS_FILE
    names, want = set(ck.params), set(circuit.params)
    if names != want:
        extra, missing = sorted(names - want), sorted(want - names)
        detail = "; ".join(
            s
            for s in (
                f"missing {', '.join(missing[:5])}" if missing else "",
                f"unexpected {', '.join(extra[:5])}" if extra else "",
            )
            if s
        )
        raise CheckpointError(f"{where}: parameters do not match the circuit ({detail})", hint=_MISMATCH_HINT)
    for k, p in circuit.params.items():
        v = ck.params[k]
        if tuple(v.shape) != p.shape:
            raise CheckpointError(
                f"{where}: parameter '{k}' has shape {tuple(v.shape)}, the circuit needs {p.shape}", hint=_MISMATCH_HINT
            )
        # f32 and f64 convert into each other (a runtime may hold f32); integers must stay integers
        if (v.dtype.kind == "f") != (np.dtype(NP_DTYPES[p.dtype]).kind == "f"):
            raise CheckpointError(
                f"{where}: parameter '{k}' has dtype {v.dtype}, the circuit needs {p.dtype}", hint=_MISMATCH_HINT
            )
    want_hash = ck.state.get("structure_sha256")
    if want_hash is not None and want_hash != structure_hash(circuit):
        raise CheckpointError(
            f"{ck.path / STATE_FILE}: the checkpoint was written for a different circuit structure",
            hint=_MISMATCH_HINT,
        )
