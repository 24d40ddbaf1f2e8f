"""`pcir query --checkpoint`: answers with the trained parameters, consistent with `pcir eval`."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

from pcir.cli import main
from pcir.data import load_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nltcs_hclt.pc"


def _cli(*argv: str) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


def test_query_with_checkpoint_uses_trained_parameters(tmp_path):
    run = tmp_path / "run"
    _cli(
        "train", str(EXAMPLE), "--data", "nltcs", "--epochs", "1", "--device", "cpu", "--out", str(run), "--no-progress"
    )
    test = load_dataset("nltcs").splits["test"].x
    np.save(tmp_path / "test.npy", test)
    trained = np.loadtxt(
        io.StringIO(_cli("query", "ll", str(EXAMPLE), "--data", str(tmp_path / "test.npy"), "--checkpoint", str(run)))
    )
    untrained = np.loadtxt(io.StringIO(_cli("query", "ll", str(EXAMPLE), "--data", str(tmp_path / "test.npy"))))
    assert trained.shape == untrained.shape == (len(test),)
    assert not np.allclose(trained, untrained)
    report = json.loads((run / "report.json").read_text())
    # the report's test mean comes from the compiled float32 model, the query from float64
    assert abs(trained.mean() - report["test_ll"]) < 1e-3, (trained.mean(), report["test_ll"])
