"""Checkpoints: round trip, run layout (last/best), atomic writes under crashes, corruption goldens.

Regenerate the golden file after an intended change with PCIR_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pcir import checkpoint as ck
from pcir.ir import CheckpointError, CircuitBuilder, Dist, Domain

GOLDEN = Path(__file__).parent / "golden" / "checkpoint_errors.txt"


def small_circuit(seed: int = 0, units: int = 2):
    b = CircuitBuilder(seed=seed)
    x0, x1 = b.variables(2, Domain.binary())
    x2 = b.variable(Domain.categorical(3), "c")
    a = b.input(x0, units, Dist.make("bernoulli"))
    c = (
        b.input(x1, units, Dist.make("indicator"), params=np.arange(units) % 2)
        if units == 2
        else b.input(x1, units, Dist.make("bernoulli"))
    )
    d = b.input(x2, units, Dist.make("categorical", k=3))
    p = b.product([a, c, d])
    s = b.sum([p], units=2, mask=[[True]], block=(2, units))
    b.root(b.sum([s], 1))
    return b.build()


def state(epoch: int, **kw):
    return {"epoch": epoch, "best_valid": -1.0 * epoch, **kw}


def test_round_trip_keeps_every_parameter_exactly(tmp_path):
    c = small_circuit().materialized()
    path = ck.save_checkpoint(tmp_path / "one", c, state(3, note="hi"))
    assert sorted(os.listdir(path)) == sorted(ck.FILES)
    got = ck.load_checkpoint(path, circuit=c)
    assert got.epoch == 3 and got.state["note"] == "hi"
    assert set(got.params) == set(c.params)
    for k in c.params:
        np.testing.assert_array_equal(got.params[k], c.param_value(k))
        assert got.params[k].dtype == c.param_value(k).dtype
    assert got.apply(small_circuit()) == c
    assert got.model_text == ck.structure_text(c)
    assert "init(uniform, seed=0)" in got.model_text  # the structure file holds no values
    # the tensors are a plain safetensors file, readable without pcir
    from safetensors.numpy import load_file

    assert set(load_file(str(path / ck.PARAMS_FILE))) == set(c.params)


def test_checkpoint_parses_back_to_the_circuit(tmp_path):
    c = small_circuit().materialized()
    ck.save_checkpoint(tmp_path / "one", c, state(1))
    assert ck.load_checkpoint(tmp_path / "one").circuit() == c


def test_structure_hash_ignores_values_and_annotations():
    c = small_circuit().materialized()
    other_values = small_circuit(seed=5).materialized()
    annotated = c.replace(groups=[g.with_attrs(layer=1) for g in c], attrs=(("pipeline", "x"),))
    assert ck.structure_hash(c) == ck.structure_hash(other_values) == ck.structure_hash(annotated)
    assert ck.structure_hash(c) != ck.structure_hash(small_circuit(units=3))


def test_run_layout_keeps_last_and_best_only(tmp_path):
    c = small_circuit().materialized()
    for epoch, best in ((1, True), (2, True), (3, False), (4, False)):
        ck.save_run_checkpoint(tmp_path, c, state(epoch), best=best)
    assert os.readlink(tmp_path / "last") == "epoch-0004"
    assert os.readlink(tmp_path / "best") == "epoch-0002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "epoch-0002", "epoch-0004", "last"]
    assert ck.load_checkpoint(tmp_path).epoch == 2  # a run folder resolves to best
    assert ck.load_checkpoint(tmp_path, "last").epoch == 4


@pytest.mark.parametrize("fail_at", ["dir-rename", "link-swap", "file-write"])
def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch, fail_at):
    c = small_circuit().materialized()
    ck.save_run_checkpoint(tmp_path, c, state(1), best=True)
    c2 = small_circuit(seed=9).materialized()

    class Killed(Exception):
        pass

    real_replace, real_write = os.replace, ck._write_bytes

    def replace(src, dst):
        is_dir = Path(src).is_dir() and not Path(src).is_symlink()
        if (fail_at == "dir-rename" and is_dir) or (fail_at == "link-swap" and Path(src).is_symlink()):
            raise Killed
        return real_replace(src, dst)

    def write(path, data):
        if path.name == ck.PARAMS_FILE:
            path.write_bytes(data[: len(data) // 2])  # half written, then killed
            raise Killed
        return real_write(path, data)

    monkeypatch.setattr(ck.os, "replace", replace)
    monkeypatch.setattr(ck, "_write_bytes", write if fail_at == "file-write" else real_write)
    with pytest.raises(Killed):
        ck.save_run_checkpoint(tmp_path, c2, state(2), best=True)
    monkeypatch.undo()
    for which in ("last", "best"):
        got = ck.load_checkpoint(tmp_path, which, c)
        assert got.epoch == 1
        for k in c.params:
            np.testing.assert_array_equal(got.params[k], c.param_value(k))
    # the next save goes through and cleans up what the crash left behind
    ck.save_run_checkpoint(tmp_path, c2, state(2), best=True)
    assert ck.load_checkpoint(tmp_path, "last").epoch == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def corruptions(tmp: Path):
    """(name, thunk) pairs; each must raise CheckpointError."""
    c = small_circuit().materialized()

    def fresh(name):
        return ck.save_checkpoint(tmp / name, c, state(1))

    def truncate(name, file, keep=0.5):
        d = fresh(name)
        data = (d / file).read_bytes()
        (d / file).write_bytes(data[: int(len(data) * keep)])
        return lambda: ck.load_checkpoint(d, circuit=c)

    def flip_byte():
        d = fresh("flip")
        data = bytearray((d / ck.PARAMS_FILE).read_bytes())
        data[-3] ^= 0xFF
        (d / ck.PARAMS_FILE).write_bytes(bytes(data))
        return lambda: ck.load_checkpoint(d)

    def missing(file):
        d = fresh("missing")
        (d / file).unlink()
        return lambda: ck.load_checkpoint(d)

    def edit_state(name, fn):
        d = fresh(name)
        st = json.loads((d / ck.STATE_FILE).read_text())
        fn(d, st)
        (d / ck.STATE_FILE).write_text(json.dumps(st))
        return lambda: ck.load_checkpoint(d, circuit=c)

    def bad_safetensors(d, st):
        (d / ck.PARAMS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
        st["files"][ck.PARAMS_FILE] = ck._sha256((d / ck.PARAMS_FILE).read_bytes())

    def dangling():
        run = tmp / "run"
        ck.save_run_checkpoint(run, c, state(1), best=True)
        import shutil

        shutil.rmtree(run / "epoch-0001")
        return lambda: ck.load_checkpoint(run)

    def other_circuit():
        d = fresh("other")
        return lambda: ck.load_checkpoint(d, circuit=small_circuit(units=3))

    def same_names_other_structure():
        d = fresh("struct")
        b = small_circuit()
        b = b.replace(
            roots=b.roots,
            attrs=b.attrs,
            variables=[v if i != 0 else type(v)("renamed", v.domain) for i, v in enumerate(b.variables)],
        )
        return lambda: ck.load_checkpoint(d, circuit=b)

    def shape_mismatch():
        d = fresh("shape")
        from safetensors.numpy import save

        params = ck.param_arrays(c)
        name = sorted(params)[0]
        params[name] = np.zeros(params[name].shape + (2,))
        blob = save(params)
        (d / ck.PARAMS_FILE).write_bytes(blob)
        st = json.loads((d / ck.STATE_FILE).read_text())
        st["files"][ck.PARAMS_FILE] = ck._sha256(blob)
        (d / ck.STATE_FILE).write_text(json.dumps(st))
        return lambda: ck.load_checkpoint(d, circuit=c)

    return [
        ("params-truncated", truncate("trunc", ck.PARAMS_FILE)),
        ("params-byte-flipped", flip_byte()),
        ("model-truncated", truncate("mtrunc", ck.MODEL_FILE, 0.8)),
        ("state-truncated", truncate("strunc", ck.STATE_FILE, 0.4)),
        ("state-empty", truncate("sempty", ck.STATE_FILE, 0.0)),
        ("params-missing", missing(ck.PARAMS_FILE)),
        ("not-a-pcir-state", edit_state("foreign", lambda d, st: st.pop("files"))),
        ("future-format", edit_state("future", lambda d, st: st.update(format=99))),
        ("invalid-safetensors", edit_state("badst", bad_safetensors)),
        ("dangling-link", dangling()),
        ("no-such-directory", lambda: ck.load_checkpoint(tmp / "nothing")),
        ("not-a-checkpoint", lambda: ck.load_checkpoint(tmp)),
        ("different-parameters", other_circuit()),
        ("different-structure", same_names_other_structure()),
        ("parameter-shape", shape_mismatch()),
    ]


def test_corrupt_or_mismatched_checkpoints_give_clear_errors(tmp_path):
    out = []
    for name, thunk in corruptions(tmp_path):
        with pytest.raises(CheckpointError) as ei:
            thunk()
        out.append(f"== {name}\n{ei.value.render().replace(str(tmp_path), '<tmp>')}\n")
    got = "\n".join(out)
    if os.environ.get("PCIR_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()


def test_atomic_file_write_replaces_whole_file(tmp_path):
    p = tmp_path / "r.json"
    ck.write_file_atomic(p, "old")
    ck.write_file_atomic(p, b"new")
    assert p.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["r.json"]
