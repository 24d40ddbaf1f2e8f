"""The imported-PSDD benchmark configurations (bench/sparse_configs.py) on the CPU.

The harness runs them on a GPU; here the tiny configuration is built, checked against the
reference evaluator after compilation through the default pipeline, counted against PyJuice's
node graph (when PyJuice can be imported: its wheel in ``.whl/`` with numba and matplotlib
stubbed, in a subprocess so the stubs stay out of this process), and run end to end through
``bench/run.py --smoke --device cpu``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import sparse_configs as sc  # noqa: E402

from pcir.ir import log_likelihood, verify  # noqa: E402

SMOKE = sc.SPARSE_SMOKE[0]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # keep the caller's PYTHONPATH (e.g. wheels installed with --target on a GPU machine)
    parts = [
        str(ROOT / "src"),
        *extra.pop("prepend", "").split(os.pathsep),
        *env.get("PYTHONPATH", "").split(os.pathsep),
    ]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    env["TRITON_INTERPRET"] = "1"
    env.update(extra)
    return env


def test_smoke_config_builds_with_padding_stats():
    c = sc.build_pcir(SMOKE)
    verify(c)
    assert c.num_vars == SMOKE.vars
    d = sc.describe(SMOKE, c)
    pad = d["padding"]
    assert 0.0 <= pad["reordered"] <= pad["naive"] <= 1.0
    assert pad["sums_blocked"] >= 1
    assert "before reordering" in sc.note(d)


def test_smoke_data_is_in_the_support():
    """Random binary rows must have finite log-likelihoods (else EM flows are NaN on both sides)."""
    import itertools

    c = sc.build_pcir(SMOKE)
    x = np.array(list(itertools.product([0, 1], repeat=c.num_vars)))
    ll = log_likelihood(c, x)
    assert np.isfinite(ll).all()
    assert abs(np.logaddexp.reduce(ll)) < 1e-9


def test_compiled_through_default_pipeline_matches_reference():
    import pcir

    c = sc.build_pcir(SMOKE)
    x = np.random.default_rng(0).integers(0, 2, size=(SMOKE.batch, c.num_vars))
    model = pcir.compile(c, pipeline="default", device="cpu", precision="fp32")
    import torch

    with torch.no_grad():
        got = model(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(got, log_likelihood(c, x), rtol=1e-4, atol=1e-4)


def _pyjuice_path(tmp_path_factory) -> str | None:
    """A directory from which ``import pyjuice`` works, or None."""
    try:
        import pyjuice  # noqa: F401

        return ""
    except Exception:  # noqa: BLE001  (optional: any import failure means try the wheel)
        pass
    wheels = sorted((ROOT / ".whl").glob("pyjuice-2.6.3-*.whl"))
    if not wheels:
        wheels = sorted(Path("/work/main/.whl").glob("pyjuice-2.6.3-*.whl"))
    if not wheels:
        return None
    d = tmp_path_factory.mktemp("pyjuice")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(d)
    return str(d)


def test_pyjuice_graph_counts_equal_pcir(tmp_path_factory):
    path = _pyjuice_path(tmp_path_factory)
    if path is None:
        pytest.skip("PyJuice 2.6.3 is neither importable nor available as .whl/pyjuice-2.6.3-*.whl")
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sparse_configs.py"), "--smoke", "--pyjuice-counts"],
        env=_env(prepend=path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0 and any(e in r.stderr for e in ("ModuleNotFoundError", "ImportError")):
        pytest.skip(f"PyJuice does not import here: {r.stderr.splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["config"] for row in rows] == [SMOKE.name]
    c = sc.build_pcir(SMOKE)
    s = c.stats()
    for row in rows:
        assert row["pcir"] == row["pyjuice"]
        # every sum here reads products only, so no one-child wrapper products are added
        assert row["pcir"] == [s["nodes"], s["edges"]]


def test_harness_smoke_runs_psdd_end_to_end(tmp_path, device):
    # on the device the suite runs on (--device cuda: the compiled kernels, not the interpreter)
    out = tmp_path / "run.json"
    env = _env()
    if device != "cpu":
        env.pop("TRITON_INTERPRET")
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--device",
            device,
            "--no-pyjuice",
            "--only",
            "psdd",
            "--target-s",
            "0.01",
            "--max-iters",
            "3",
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["config"] == SMOKE.name and row["family"] == "psdd"
    assert "error" not in row and "error" not in row["pcir"], row
    c = sc.build_pcir(SMOKE)
    assert row["pcir_counts"]["nodes"] == c.stats()["nodes"]
    assert row["pcir_counts"]["edges"] == c.stats()["edges"]
    assert row["pcir"]["fwd_ms"] > 0 and row["pcir"]["train_ms"] > 0
    assert np.isfinite(row["pcir"]["ll_mean"])
    assert row["padding"]["reordered"] <= row["padding"]["naive"]
    assert "padding" in row["note"]
    assert "padding" in (out.with_suffix(".md")).read_text()
