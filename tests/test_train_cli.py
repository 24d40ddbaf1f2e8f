"""pcir train / eval / info / sample end to end on CPU: the compiled runtime, tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _train_helpers import make_dataset, mixture_circuit

from pcir.cli import main
from pcir.ir import print_ir


@pytest.fixture
def env(tmp_path):
    """A model file and a dataset file."""
    circuit = mixture_circuit()
    model = tmp_path / "mix.pcir"
    model.write_text(print_ir(circuit))
    make_dataset(tmp_path)
    return {
        "model": str(model),
        "data": str(tmp_path / "toy.npz"),
        "out": str(tmp_path / "run"),
        "tmp": tmp_path,
        "circuit": circuit,
    }


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_then_eval_info_and_resume(env, capsys):
    m, d, out = env["model"], env["data"], env["out"]
    rc, stdout, err = cli(
        capsys,
        "train",
        m,
        "--data",
        d,
        "--epochs",
        3,
        "--batch-size",
        40,
        "--device",
        "cpu",
        "--out",
        out,
        "--no-progress",
    )
    assert rc == 0, err
    assert "epoch   3/3" in stdout and "test    mean log-likelihood" in stdout
    report = json.loads((env["tmp"] / "run" / "report.json").read_text())
    assert report["epochs_run"] == 3 and report["settings"]["em"] == "mini"

    rc, stdout, err = cli(capsys, "eval", m, "--data", d, "--checkpoint", out, "--device", "cpu", "--json")
    assert rc == 0, err
    got = json.loads(stdout)["splits"]
    for split in ("train", "valid", "test"):
        assert got[split]["mean_ll"] == pytest.approx(report[f"{split}_ll"], abs=1e-6)
    # the reference evaluator agrees with the compiled model on the checkpoint's parameters
    rc, stdout, err = cli(
        capsys, "eval", m, "--data", d, "--checkpoint", out, "--reference", "--split", "test", "--json"
    )
    assert json.loads(stdout)["splits"]["test"]["mean_ll"] == pytest.approx(report["test_ll"], abs=1e-5)

    rc, stdout, err = cli(capsys, "info", m, "--checkpoint", out)
    assert rc == 0, err
    assert "variables   4 (4 binary)" in stdout and "epoch       3" in stdout

    # the trained circuit as one .pcir file: the reference log-likelihood of the test split
    trained = env["tmp"] / "trained.pcir"
    rc, stdout, err = cli(capsys, "info", m, "--checkpoint", out, "--save-pcir", trained)
    assert rc == 0, err
    from pcir.api import load
    from pcir.data import load_dataset
    from pcir.ir import log_likelihood

    test_ll = log_likelihood(load(trained), load_dataset(d)["test"]).mean()
    assert test_ll == pytest.approx(report["test_ll"], abs=1e-5)

    # a second run into the same folder must say how to continue; --resume continues
    rc, stdout, err = cli(
        capsys, "train", m, "--data", d, "--epochs", 5, "--out", out, "--device", "cpu", "--no-progress"
    )
    assert rc == 1 and "already holds a run" in err and "--resume" in err and "Traceback" not in err
    rc, stdout, err = cli(
        capsys,
        "train",
        m,
        "--data",
        d,
        "--epochs",
        5,
        "--batch-size",
        40,
        "--out",
        out,
        "--device",
        "cpu",
        "--no-progress",
        "--resume",
    )
    assert rc == 0, err
    assert "resumed from" in stdout and "epoch   4/5" in stdout and "epoch   1/" not in stdout
    rc, stdout, err = cli(
        capsys, "train", m, "--data", d, "--epochs", 1, "--out", out, "--device", "cpu", "--no-progress", "--overwrite"
    )
    assert rc == 0, err
    assert "epoch   1/1" in stdout


def test_train_drop_last(env, capsys):
    m, d, out = env["model"], env["data"], env["out"]
    argv = ["train", m, "--data", d, "--epochs", 1, "--batch-size", 50, "--device", "cpu", "--out", out]
    rc, stdout, err = cli(capsys, *argv, "--drop-last", "--no-progress")
    assert rc == 0, err
    report = json.loads((env["tmp"] / "run" / "report.json").read_text())
    assert report["settings"]["drop_last"] is True


def test_train_soften(env, capsys):
    m, d, out = env["model"], env["data"], env["out"]
    argv = ["train", m, "--data", d, "--epochs", 2, "--batch-size", 50, "--device", "cpu", "--out", out]
    rc, stdout, err = cli(capsys, *argv, "--soften", "0.9", "--no-progress")
    assert rc == 0, err
    assert "pseudocount 0.1, soften 0.9, batch 50" in stdout
    report = json.loads((env["tmp"] / "run" / "report.json").read_text())
    assert report["settings"]["soften"] == 0.9
    # validation and test are the model's own likelihood (hard data): eval reproduces them
    rc, ev_out, err = cli(capsys, "eval", m, "--data", d, "--checkpoint", out, "--device", "cpu", "--json")
    assert rc == 0, err
    assert abs(json.loads(ev_out)["splits"]["valid"]["mean_ll"] - report["valid_ll"]) < 1e-5
    rc, info_out, err = cli(capsys, "info", m, "--checkpoint", out)
    assert rc == 0 and "pseudocount 0.1, seed 0, soften 0.9" in info_out, err
    rc, _, err = cli(capsys, *argv, "--soften", "1.5", "--overwrite")
    assert rc == 1 and "soften 1.5 is not a probability in (0, 1]" in err and "Traceback" not in err


def test_train_entropy(env, capsys):
    m, d, out = env["model"], env["data"], env["out"]
    argv = ["train", m, "--data", d, "--epochs", 2, "--batch-size", 50, "--device", "cpu", "--out", out]
    rc, stdout, err = cli(capsys, *argv, "--entropy", "0.05", "--no-progress")
    assert rc == 0, err
    assert "pseudocount 0.1, entropy 0.05, batch 50" in stdout
    report = json.loads((env["tmp"] / "run" / "report.json").read_text())
    assert report["settings"]["entropy"] == 0.05
    rc, info_out, err = cli(capsys, "info", m, "--checkpoint", out)
    assert rc == 0 and "pseudocount 0.1, seed 0, entropy 0.05" in info_out, err
    # the regulariser changes the training: the same run without it ends elsewhere
    rc, _, err = cli(capsys, *argv, "--overwrite", "--no-progress")
    assert rc == 0, err
    plain = json.loads((env["tmp"] / "run" / "report.json").read_text())
    assert abs(plain["train_ll"] - report["train_ll"]) > 1e-6
    rc, _, err = cli(capsys, *argv, "--entropy", "-1", "--overwrite")
    assert rc == 1 and "entropy -1.0 is not a finite weight >= 0" in err and "Traceback" not in err


def test_user_mistakes_are_diagnostics_not_tracebacks(env, capsys):
    m, out = env["model"], env["out"]
    bad = env["tmp"] / "bad.data"
    bad.write_text("0,1,0,1\n0,1,2,1\n")
    rc, _, err = cli(capsys, "train", m, "--data", bad, "--device", "cpu", "--out", out)
    assert rc == 1 and "bad.data:2:5: error: row 2, column 3" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "train", m, "--data", "nltcs", "--device", "cpu", "--out", out)
    assert rc == 1 and "16 variables but the circuit has 4" in err
    rc, _, err = cli(capsys, "eval", m, "--data", env["data"], "--checkpoint", env["tmp"] / "nowhere")
    assert rc == 1 and "no such checkpoint directory" in err
    rc, _, err = cli(capsys, "train", m, "--data", env["data"], "--step-size", "2", "--out", out)
    assert rc == 1 and "step size 2.0 is not in (0, 1]" in err


def test_sample_writes_rows_or_says_sampling_is_missing(env, capsys):
    from pcir.commands.sample import find_sampler

    m, d, out = env["model"], env["data"], env["out"]
    assert cli(capsys, "train", m, "--data", d, "--epochs", 1, "--device", "cpu", "--out", out, "--no-progress")[0] == 0
    rc, stdout, err = cli(capsys, "sample", m, "--checkpoint", out, "-n", 5, "--seed", 1)
    if find_sampler() is None:
        assert rc == 1 and "sampling is not available" in err
        return
    assert rc == 0, err
    rows = stdout.strip().splitlines()
    assert rows[0] == "x0,x1,x2,x3" and len(rows) == 6
    x = np.array([[int(v) for v in r.split(",")] for r in rows[1:]])
    assert set(np.unique(x)) <= {0, 1}
    png = env["tmp"] / "grid.png"
    rc, stdout, err = cli(capsys, "sample", m, "--checkpoint", out, "-n", 4, "-o", png)
    assert rc == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_checkpoints_of_a_pipeline_run_need_that_pipeline(tmp_path, capsys):
    from pcir.ir import CircuitBuilder, Dist, Domain

    b = CircuitBuilder()
    xs = b.variables(4, Domain.binary())
    inner = b.sum([b.product([b.input(v, 3, Dist.make("bernoulli")) for v in xs])], 3)
    b.root(b.sum([inner], 1))  # collapse-nodes merges the two sums: the structure changes
    model = tmp_path / "nested.pcir"
    model.write_text(print_ir(b.build()))
    make_dataset(tmp_path)
    data, out = tmp_path / "toy.npz", tmp_path / "run"
    rc, _, err = cli(
        capsys,
        "train",
        model,
        "--data",
        data,
        "--epochs",
        1,
        "--device",
        "cpu",
        "--out",
        out,
        "--pipeline",
        "default",
        "--no-progress",
    )
    assert rc == 0, err
    rc, _, err = cli(capsys, "eval", model, "--data", data, "--checkpoint", out, "--reference")
    assert rc == 1 and "parameters do not match the circuit" in err and "--pipeline" in err
    rc, stdout, err = cli(
        capsys, "eval", model, "--data", data, "--checkpoint", out, "--reference", "--pipeline", "default", "--json"
    )
    assert rc == 0, err
    ref = json.loads(stdout)["splits"]["test"]["mean_ll"]
    rc, stdout, err = cli(
        capsys, "eval", model, "--data", data, "--checkpoint", out, "--pipeline", "default", "--json", "--device", "cpu"
    )
    assert rc == 0, err
    assert json.loads(stdout)["splits"]["test"]["mean_ll"] == pytest.approx(ref, abs=1e-5)


def test_info_lists_a_training_steps_memory(capsys):
    """``pcir info --plan --batch B``: the model's tensors and the training step's buffers on the
    Triton engine, and their total (the sizes are TritonEngine.step_buffers, which a backend test
    checks against the tensors the step really allocates)."""
    import re
    from pathlib import Path

    hclt = Path(__file__).resolve().parents[1] / "examples" / "hclt.pc"
    rc, out, err = cli(capsys, "info", hclt, "--plan", "--batch", 512)
    assert rc == 0, err
    lines = [ln.strip() for ln in out.splitlines()]
    head = next(ln for ln in lines if ln.startswith("memory"))
    assert "a training step at batch 512 on the Triton engine" in head, head
    model = next(ln for ln in lines if ln.startswith("model tensors"))
    step = next(ln for ln in lines if ln.startswith("step buffers"))
    assert "sum logits" in model and "kernel weights" in model, model
    # the step (train_step) keeps no flow buffer of the parameters' size: the sums' flows go to the
    # logits' storage, the tables are updated from the leaves' flows (only their row totals)
    assert "flows" not in model and "counts" not in model, model
    assert "values and flows (flows in the value rows where the plan allows)" in step and "column factors E" in step, (
        step
    )
    assert "table row flows" in step, step

    def kib(text: str) -> float:
        n, unit = re.match(r"([\d.]+) (B|KiB|MiB)", text).groups()
        return float(n) * {"B": 1 / 1024, "KiB": 1, "MiB": 1024}[unit]

    total = kib(head.split("about ")[1])
    parts = kib(model.split("model tensors ")[1]) + kib(step.split("step buffers ")[1])
    assert abs(total - parts) <= 0.1 + 1e-3 * total, (total, parts)


def test_info_batch_implies_the_plan_and_a_bad_batch_is_a_diagnostic(capsys):
    from pathlib import Path

    hclt = Path(__file__).resolve().parents[1] / "examples" / "hclt.pc"
    rc, out, err = cli(capsys, "info", hclt, "--batch", 8)
    assert rc == 0, err
    assert "plan        rows" in out and "a training step at batch 8 on the Triton engine" in out
    rc, out, err = cli(capsys, "info", hclt, "--batch", 0)
    assert rc != 0
    assert "batch 0: a training step's batch size is an integer of at least 1" in err
    assert "Traceback" not in err
