"""bench/debd.py and bench/debd_sweep.py on CPU, on tiny made-up data in the debd layout.

The sweep must choose each dataset's grid point by validation log-likelihood alone, train the
chosen point again with the other seeds, report their mean and standard deviation, reuse the runs of
an earlier sweep (--resume) and skip what the wall-clock budget leaves no time for.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import debd  # noqa: E402
import debd_sweep  # noqa: E402


def _write_split(path: Path, x: np.ndarray) -> None:
    path.write_text("".join(",".join(str(int(v)) for v in row) + "\n" for row in x))


@pytest.fixture
def root(tmp_path):
    """A data folder with a 6-variable 'nltcs' (made-up rows: a 2-component mixture)."""
    rng = np.random.default_rng(0)
    protos = np.array([[0.9, 0.8, 0.9, 0.1, 0.2, 0.7], [0.1, 0.3, 0.2, 0.8, 0.9, 0.2]])
    d = tmp_path / "data" / "nltcs"
    d.mkdir(parents=True)
    for split, n in (("train", 160), ("valid", 48), ("test", 48)):
        z = rng.integers(0, 2, size=n)
        _write_split(d / f"nltcs.{split}.data", (rng.random((n, 6)) < protos[z]).astype(int))
    return tmp_path / "data"


SMALL = ["--datasets", "nltcs", "--epochs", "2", "--full-epochs", "1", "--batch-size", "64", "--device", "cpu"]


def test_debd_cli_writes_its_table(root, tmp_path):
    out = tmp_path / "debd.json"
    argv = [*SMALL, "--latents", "2", "--root", str(root), "--runs", str(tmp_path / "runs"), "--out", str(out)]
    assert debd.main([*argv, "--no-progress"]) == 0
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert row["dataset"] == "nltcs" and row["vars"] == 6 and row["epochs_run"] == 3
    assert row["delta"] == pytest.approx(row["test_ll"] - debd.PUBLISHED["nltcs"])
    assert "| nltcs | 6 |" in out.with_suffix(".md").read_text()


def test_sweep_selects_by_validation_and_trains_seeds(root, tmp_path):
    out = tmp_path / "sweep.json"
    argv = [*SMALL, "--latents", "2,3", "--pseudocount", "0.1,1", "--seeds", "2", "--root", str(root)]
    assert debd_sweep.main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    grid = [r for r in res["runs"] if r["phase"] == "grid"]
    assert len(grid) == 4 and all(r["status"] == "ok" and r["seed"] == 0 for r in grid)
    assert {(r["point"]["latents"], r["point"]["pseudocount"]) for r in grid} == {
        (2, 0.1),
        (2, 1.0),
        (3, 0.1),
        (3, 1.0),
    }
    # the best parameters kept in memory are the ones put back: same validation score
    assert all(abs(r["restore_gap"]) < 1e-4 for r in res["runs"])
    (sel,) = res["selected"]
    best = max(grid, key=lambda r: r["valid_ll"])
    assert sel["selected"] == best["point"] and sel["valid_ll"] == best["valid_ll"]
    seeds = [r for r in res["runs"] if r["phase"] == "seed"]
    assert [r["seed"] for r in seeds] == [1] and seeds[0]["point"] == best["point"]
    tests = [best["test_ll"], seeds[0]["test_ll"]]
    assert sel["seeds"] == [0, 1]
    assert sel["test_ll_mean"] == pytest.approx(statistics.fmean(tests))
    assert sel["test_ll_std"] == pytest.approx(statistics.stdev(tests))
    assert sel["delta"] == pytest.approx(sel["test_ll_mean"] - debd.PUBLISHED["nltcs"])
    md = out.with_suffix(".md").read_text()
    assert "| nltcs | 6 |" in md and f"{sel['test_ll_mean']:.3f} ± {sel['test_ll_std']:.3f} (2)" in md
    assert md.count(" * |") == 1  # one grid run marked as selected

    # a larger grid resumed from this sweep: the 4 runs are reused, the new point finds no budget
    out2 = tmp_path / "sweep2.json"
    argv2 = [*SMALL, "--latents", "2,3,4", "--pseudocount", "0.1,1", "--seeds", "2", "--root", str(root)]
    assert debd_sweep.main([*argv2, "--resume", str(out), "--budget-s", "0", "--out", str(out2)]) == 0
    res2 = json.loads(out2.read_text())
    status = {(r["point"]["latents"], r["point"]["pseudocount"], r["seed"]): r["status"] for r in res2["runs"]}
    assert status[(4, 0.1, 0)] == status[(4, 1.0, 0)] == "skipped"
    assert sum("reused_from" in r for r in res2["runs"]) == 5  # 4 grid runs and the seed-1 run
    (sel2,) = res2["selected"]
    assert sel2["grid_points"] == 6 and sel2["grid_points_done"] == 4
    assert sel2["test_ll_mean"] == pytest.approx(sel["test_ll_mean"])


def test_sweep_in_worker_processes_and_drop_last(root, tmp_path):
    out = tmp_path / "jobs.json"
    argv = [*SMALL, "--latents", "2", "--drop-last", "0,1", "--jobs", "2", "--root", str(root)]
    assert debd_sweep.main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    runs = {r["point"]["drop_last"]: r for r in res["runs"]}
    assert sorted(runs) == [0, 1] and all(r["status"] == "ok" and r["epochs_run"] == 3 for r in runs.values())
    # 160 rows in batches of 64: leaving out the short batch of 32 changes the training
    assert runs[0]["curve"]["train"] != runs[1]["curve"]["train"]
    # drop_last=0 (the default, added later) stays out of names and keys: older sweeps' runs match
    assert runs[0]["name"] == "h2-pc0.1-b64-s0.5-to0.05-e2-f1" and runs[1]["name"].endswith("-dl1")
    assert '"drop_last"' not in runs[0]["key"] and '"drop_last": 1' in runs[1]["key"]


def test_sweep_near_uniform_init_and_stepwise_em(root, tmp_path):
    out = tmp_path / "sw.json"
    argv = [*SMALL, "--latents", "2", "--init", "0,0.4", "--stepwise", "0,1", "--root", str(root)]
    assert debd_sweep.main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    runs = {(r["point"]["init"], r["point"]["stepwise"]): r for r in res["runs"]}
    assert len(runs) == 4 and all(r["status"] == "ok" and r["epochs_run"] == 3 for r in runs.values())
    assert all(abs(r["restore_gap"]) < 1e-4 for r in runs.values())
    curves = {k: r["curve"]["train"] for k, r in runs.items()}
    assert len({tuple(c) for c in curves.values()}) == 4  # each option changes the training
    # the defaults (added later) stay out of names and keys: older sweeps' runs match
    plain = runs[(0.0, 0)]
    assert plain["name"] == "h2-pc0.1-b64-s0.5-to0.05-e2-f1-dl1" and '"init"' not in plain["key"]
    assert runs[(0.4, 1)]["name"].endswith("-dl1-in0.4-sw1") and '"stepwise": 1' in runs[(0.4, 1)]["key"]
    md = out.with_suffix(".md").read_text()
    assert "| nltcs | h2-pc0.1-b64-s0.5-to0.05-e2-f1-dl1-in0.4-sw1 | ok |" in md
    sel = res["selected"][0]["selected"]
    mark = (", init 0.4" if sel["init"] else "") + (", stepwise EM" if sel["stepwise"] else "")
    assert f"drop-last{mark} (grid 4/4)" in md

    # a pseudocount of its own for the full-batch epoch (the third): the mini-batch epochs are the same
    outp = tmp_path / "fpc.json"
    assert (
        debd_sweep.main([*SMALL, "--latents", "2", "--full-pseudocount=-1,5", "--root", str(root), "--out", str(outp)])
        == 0
    )
    same, other = (r["curve"]["valid"] for r in json.loads(outp.read_text())["runs"])
    assert same[:2] == other[:2] and same[2] != other[2]

    # one batch per epoch and step 1: stepwise EM (statistics of that batch) is plain EM
    one = [*SMALL, "--latents", "2", "--batch-size", "160", "--step-size", "1", "--step-size-final", "1"]
    out1 = tmp_path / "one.json"
    assert debd_sweep.main([*one, "--stepwise", "0,1", "--root", str(root), "--out", str(out1)]) == 0
    a, b = (r["curve"]["train"] for r in json.loads(out1.read_text())["runs"])
    assert a == pytest.approx(b, abs=1e-4)


def test_sweep_parameter_average(root, tmp_path):
    """--average D validates (and keeps) an average of the iterates while training goes on from
    the iterates themselves: the training curve is that of plain EM, the first epoch's validation
    too (the average of one iterate); with D = 1 the average never moves from the first epoch's."""
    out = tmp_path / "avg.json"
    argv = [*SMALL, "--latents", "2", "--epochs", "4", "--average", "0,0.5,1", "--root", str(root)]
    assert debd_sweep.main([*argv, "--out", str(out)]) == 0
    runs = {r["point"]["average"]: r for r in json.loads(out.read_text())["runs"]}
    assert all(r["status"] == "ok" and r["epochs_run"] == 5 for r in runs.values())
    assert all(abs(r["restore_gap"]) < 1e-4 for r in runs.values())
    plain, half, first = runs[0.0], runs[0.5], runs[1.0]
    assert plain["curve"]["train"] == half["curve"]["train"] == first["curve"]["train"]
    assert plain["curve"]["valid"][0] == half["curve"]["valid"][0] == first["curve"]["valid"][0]
    assert half["curve"]["valid"][1:] != plain["curve"]["valid"][1:]
    assert len(set(first["curve"]["valid"])) == 1
    assert first["valid_ll"] == pytest.approx(first["curve"]["valid"][0], abs=1e-4)
    assert half["name"].endswith("-av0.5") and '"average"' not in plain["key"]


def test_combine_selects_by_validation_across_files(tmp_path):
    def run(ds, latents, valid, test, status="ok", seed=0, phase="grid"):
        point = {"latents": latents, "pseudocount": 0.1, "batch_size": 512, "step_size": 0.5}
        point |= {"step_size_final": 0.05, "epochs": 9, "full_epochs": 1}
        return {
            "dataset": ds, "seed": seed, "point": point, "name": debd_sweep.point_name(point), "phase": phase,
            "key": debd_sweep.run_key(ds, point, seed, {}), "status": status, "vars": 3, "params": 10,
            "train_ll": valid, "valid_ll": valid, "test_ll": test, "epochs_run": 10, "best_epoch": 10,
            "s_per_epoch": 0.1, "setup_s": 1.0, "card": "card A",
        }  # fmt: skip

    sweep = {
        "runs": [
            run("dna", 8, -80.0, -79.0, status="cut"),
            run("dna", 16, -81.0, -78.0),  # better test, worse valid: not chosen
            run("dna", 8, -80.0, -79.5, seed=1, phase="seed"),
            run("nltcs", 8, -6.2, -6.3),
            {"dataset": "nltcs", "seed": 0, "phase": "grid", "status": "skipped", "key": "x"},
        ]
    }
    later = {"runs": [run("dna", 8, -80.0, -79.0), run("dna", 32, -80.5, -77.0)]}  # the cut run again, whole
    debd_rows = {
        "card": "card B",
        "settings": {"latents": 4, "pseudocount": 0.1, "batch_size": 512, "step_size": 0.5, "step_size_final": 0.05,
                     "epochs": 60, "full_epochs": 10, "seed": 0, "patience": 8},
        "rows": [{"dataset": "nltcs", "vars": 3, "test_ll": -6.1, "valid_ll": -6.0, "train_ll": -6.0,
                  "epochs_run": 70, "best_epoch": 70, "time_per_epoch_s": 0.2, "params": 5}],
    }  # fmt: skip
    files = []
    for name, obj in (("sweep.json", sweep), ("later.json", later), ("debd.json", debd_rows)):
        (tmp_path / name).write_text(json.dumps(obj))
        files.append(str(tmp_path / name))
    out = tmp_path / "combined.json"
    assert debd_sweep.main(["--datasets", "nltcs,dna,bbc", "--combine", *files, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    nltcs, dna, bbc = res["selected"]
    assert bbc is None
    assert nltcs["source"] == "debd.json" and nltcs["test_ll_mean"] == -6.1 and nltcs["selected"]["latents"] == 4
    assert dna["source"] == "later.json" and dna["status"] == "ok"  # the uncut copy replaced the cut one
    assert dna["selected"]["latents"] == 8 and dna["seeds"] == [0, 1]
    assert dna["test_ll_mean"] == pytest.approx(-79.25) and dna["test_ll_std"] == pytest.approx(0.3535534)
    assert dna["delta"] == pytest.approx(-79.25 - debd.PUBLISHED["dna"])
    md = out.with_suffix(".md").read_text()
    assert "| debd.json |" in md and "card A, card B" in md


def test_sweep_per_dataset_grid_and_bad_arguments():
    axes = {name: debd_sweep.parse_list(name, default) for name, _, default in debd_sweep.AXES}
    over = debd_sweep.parse_set(["dna:latents=32,64", "dna:pseudocount=1"], ["dna", "nltcs"])
    assert over == {"dna": {"latents": [32, 64], "pseudocount": [1.0]}}
    dna = debd_sweep.grid_for("dna", axes, over)
    assert [(p["latents"], p["pseudocount"]) for p in dna] == [(32, 1.0), (64, 1.0)]
    assert len(debd_sweep.grid_for("nltcs", axes, over)) == 1
    with pytest.raises(SystemExit):
        debd_sweep.parse_set(["bbc:latents=8"], ["dna"])
    with pytest.raises(SystemExit):
        debd_sweep.parse_set(["dna:width=8"], ["dna"])
    with pytest.raises(SystemExit):
        debd_sweep.parse_list("latents", "1.5")
