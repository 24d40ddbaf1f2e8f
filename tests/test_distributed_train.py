"""``pcir train`` under torchrun: sharded batches, one report, rank-0 checkpoints, and a resume on
another number of ranks, all equal to the one-process run up to float32 summation order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _train_helpers import make_dataset, mixture_circuit

from pcir import checkpoint as ckpt
from pcir.ir import print_ir

RTOL = 1e-5


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "mix.pcir"
    model.write_text(print_ir(mixture_circuit(num_vars=4, components=3)))
    make_dataset(tmp_path, n_train=120)
    return tmp_path


def common(tmp: Path, out: str, *extra) -> list[str]:
    args = ["train", tmp / "mix.pcir", "--data", tmp / "toy.npz", "--batch-size", 40, "--device", "cpu"]
    return [str(a) for a in [*args, "--out", tmp / out, "--no-progress", "--seed", 3, *extra]]


def pcir(argv: list[str], nproc: int | None = None) -> str:
    """``python -m pcir ARGV`` in a fresh process, or under torchrun with ``nproc`` ranks.

    Every run uses the torch engine (TRITON_INTERPRET=0), so that all do the same arithmetic; in
    separate processes, because the generated kernel modules are cached per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env.update(TRITON_INTERPRET="0", OMP_NUM_THREADS="1", PCIR_DIST_TIMEOUT="60")
    cmd = [sys.executable]
    if nproc is not None:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    r = subprocess.run([*cmd, "-m", "pcir", *argv], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def report(tmp: Path, out: str) -> dict:
    return json.loads((tmp / out / "report.json").read_text())


def assert_history_close(got: list[dict], want: list[dict]) -> None:
    assert [h["epoch"] for h in got] == [h["epoch"] for h in want]
    for g, w in zip(got, want, strict=True):
        assert g["step_size"] == w["step_size"]
        np.testing.assert_allclose([g["train_ll"], g["valid_ll"]], [w["train_ll"], w["valid_ll"]], rtol=RTOL)


def test_train_on_2_ranks_then_resume_on_3_equals_one_process(files):
    tmp = files
    # one process, uninterrupted: 2 epochs of mini-batch EM (shuffled batches), 1 of full-batch EM
    pcir(common(tmp, "one", "--epochs", 2, "--full-epochs", 1))
    ref = report(tmp, "one")

    # 2 ranks, the first 2 epochs
    stdout = pcir(common(tmp, "dist", "--epochs", 2), nproc=2)
    assert "2 ranks (gloo)" in stdout
    for e in (1, 2):  # rank 0 speaks for everyone: every line once
        assert stdout.count(f"epoch   {e}/2") == 1
    assert stdout.count("test    mean log-likelihood") == 1
    two = report(tmp, "dist")
    assert two["ranks"] == 2
    assert_history_close(two["history"], ref["history"][:2])

    # resumed on 3 ranks (uneven parts: 40 = 13 + 13 + 14) through the full-batch epoch
    stdout = pcir(common(tmp, "dist", "--epochs", 2, "--full-epochs", 1, "--resume"), nproc=3)
    assert "resumed from" in stdout and stdout.count("epoch   3/3") == 1
    three = report(tmp, "dist")
    assert three["ranks"] == 3
    assert_history_close(three["history"], ref["history"])
    for split in ("train", "valid", "test"):
        np.testing.assert_allclose(three[f"{split}_ll"], ref[f"{split}_ll"], rtol=RTOL)

    # one checkpoint per epoch, written once (by rank 0), complete and equal to the 1-process one
    out = tmp / "dist"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("epoch-", ".tmp", ".old"))) == ["epoch-0003"]
    got = ckpt.load_checkpoint(out, "last").params
    want = ckpt.load_checkpoint(tmp / "one", "last").params
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=1e-7, err_msg=k)
