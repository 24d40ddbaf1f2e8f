"""Engine knobs set for a whole run: ``triton_engine.set_knobs`` (``bench/run.py --knob``,
``pytest --engine-knob``), so a candidate default can run the GPU suite before it becomes the
default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcir.backend import triton_engine as te

HERE = Path(__file__).resolve().parent


def test_set_knobs_sets_all_or_nothing(monkeypatch):
    monkeypatch.setattr(te, "PDL", te.PDL)
    monkeypatch.setattr(te, "FLOW_SKIP_MIN", te.FLOW_SKIP_MIN)
    before = te.PDL
    with pytest.raises(ValueError, match="NOPE=1: expected NAME=VALUE"):
        te.set_knobs([f"PDL={before + 1}", "NOPE=1"])
    assert te.PDL == before  # the good item before the bad one was not applied either
    assert te.set_knobs(["PDL=1", "FLOW_SKIP_MIN=1"]) == {"PDL": 1, "FLOW_SKIP_MIN": 1}
    assert te.PDL == 1 and te.FLOW_SKIP_MIN == 1  # an int for a float knob
    for bad, why in [("pdl=1", "NAME=VALUE"), ("PDL=[", "not a Python literal"), ("LEAF_ALIAS=0", "is a bool")]:
        with pytest.raises(ValueError, match=why):
            te.set_knobs([bad])


def test_the_knobs_the_option_set(request):
    """Run by the test below with ``--engine-knob``: every test of such a run sees the knobs.
    Skipped elsewhere, a whole suite under other knobs (``gpu_check.sh KNOBS=``) included: it
    runs where the test below says which knobs to expect (PCIR_EXPECT_KNOBS)."""
    if "PCIR_EXPECT_KNOBS" not in os.environ:
        pytest.skip("only run by test_engine_knob_option (a subprocess with --engine-knob)")
    given = getattr(request.config, "_pcir_engine_knobs", None)
    assert given == {"PDL": 1, "SUM_ALIAS": False}
    assert te.PDL == 1 and te.SUM_ALIAS is False


def _pytest(*args, **extra_env):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), **extra_env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_engine_knob_option():
    node = "tests/test_engine_knobs.py::test_the_knobs_the_option_set"
    expect = {"PCIR_EXPECT_KNOBS": "1"}
    r = _pytest(node, "-v", "--engine-knob", "PDL=1", "--engine-knob", "SUM_ALIAS=False", **expect)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "engine knobs: PDL=1, SUM_ALIAS=False" in r.stdout
    assert "1 passed" in r.stdout
    bad = _pytest(node, "--engine-knob", "SUM_ALIAS=yes", **expect)
    assert bad.returncode == 4  # a usage error, before any test
    assert "--engine-knob SUM_ALIAS=yes: 'yes' is not a Python literal" in bad.stderr
