"""The EM training loop on CPU: EM improves the likelihood, resume after a kill replays the same
run, early stopping, the report.

Each test runs on two runtimes: ``standin`` (tests/_fake_runtime.py: the runtime contract on the
float64 reference evaluator, exact) and ``compiled`` (pcir.backend.compile on CPU, float32).
``tol`` is the float32 slack of the compiled runtime."""

from __future__ import annotations

import json
import os

import _fake_runtime as fake
import numpy as np
import pytest
from _train_helpers import make_dataset, mixture_circuit

from pcir import checkpoint as ck
from pcir.ir import CheckpointError, evaluator
from pcir.train import TrainConfig, plot_curves, train


def _compiled(circuit, device):
    from pcir.backend import compile as backend_compile

    return backend_compile(circuit, device=device)


@pytest.fixture(params=["standin", "compiled"])
def rt(request):
    """(compile function, tolerance) of one runtime."""
    if request.param == "compiled":
        return _compiled, 2e-5
    return fake.compile, 0.0


STANDIN = (fake.compile, 0.0)


def run(rt, circuit, ds, out=None, **cfg):
    kw = {k: cfg.pop(k) for k in ("resume", "on_batch") if k in cfg}
    config = TrainConfig(**{"patience": 0, **cfg})
    return train(circuit, ds, config, out=out, device="cpu", progress=False, log=lambda s: None, compile_fn=rt[0], **kw)


def params(model):
    return ck.param_arrays(model.to_circuit())


def test_full_batch_em_never_decreases_the_training_likelihood(rt, tmp_path):
    ds = make_dataset(tmp_path)
    res = run(rt, mixture_circuit(), ds, em="full", epochs=6, pseudocount=0.0, batch_size=50)
    lls = [h.train_ll for h in res.history]  # each is the likelihood before that epoch's update
    tol = max(rt[1], 1e-9)
    assert all(b >= a - tol for a, b in zip(lls, lls[1:], strict=False)), lls
    assert res.report["train_ll"] >= lls[-1] - tol
    assert res.report["train_ll"] > lls[0] + 0.05


def test_one_full_batch_epoch_is_one_reference_em_step(rt, tmp_path):
    ds = make_dataset(tmp_path)
    c = mixture_circuit()
    res = run(rt, c, ds, em="full", epochs=1, pseudocount=0.3, step_size=0.7, batch_size=32)
    want = evaluator.em_step(c, ds["train"], step_size=0.7, pseudocount=0.3)
    for k, v in params(res.model).items():
        np.testing.assert_allclose(v, want.param_value(k), rtol=max(rt[1], 1e-10), atol=max(rt[1], 1e-12))


def test_mini_batch_em_improves_and_anneals_the_step(rt, tmp_path):
    ds = make_dataset(tmp_path)
    res = run(rt, mixture_circuit(), ds, em="mini", epochs=4, batch_size=16, step_size=0.5, step_size_final=0.1)
    assert [h.step_size for h in res.history] == pytest.approx([0.5, 0.5 - 0.4 / 3, 0.5 - 0.8 / 3, 0.1])
    before = float(evaluator.log_likelihood(mixture_circuit(), ds["train"]).mean())
    assert res.report["train_ll"] > before + 0.05
    assert res.report["valid_ll"] is not None and res.report["test_ll"] is not None


@pytest.mark.parametrize("em", ["full", "mini"])
def test_resume_after_a_kill_replays_the_uninterrupted_run(rt, tmp_path, em):
    ds = make_dataset(tmp_path)
    settings = dict(em=em, epochs=5, batch_size=32, seed=3)
    whole = run(rt, mixture_circuit(), ds, tmp_path / "whole", **settings)

    class Killed(KeyboardInterrupt):
        pass

    def kill(epoch, batch):
        if epoch == 3 and batch == 1:
            raise Killed

    with pytest.raises(Killed):
        run(rt, mixture_circuit(), ds, tmp_path / "cut", on_batch=kill, **settings)
    assert ck.load_checkpoint(tmp_path / "cut", "last").epoch == 2  # only the current epoch is lost
    resumed = run(rt, mixture_circuit(), ds, tmp_path / "cut", resume=True, **settings)
    a, b = ck.load_checkpoint(tmp_path / "whole", "last"), ck.load_checkpoint(tmp_path / "cut", "last")
    assert a.epoch == b.epoch == 5
    for k in a.params:  # exact on the stand-in; float32 round trips through log space on the compiled
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=rt[1], atol=rt[1])
    strip = lambda hs: np.array([(h.epoch, h.train_ll, h.valid_ll, h.step_size) for h in hs])  # noqa: E731
    np.testing.assert_allclose(strip(resumed.history), strip(whole.history), rtol=rt[1], atol=rt[1])
    assert resumed.report["test_ll"] == pytest.approx(whole.report["test_ll"], abs=rt[1])


def test_ctrl_c_during_a_checkpoint_waits_for_it(tmp_path, monkeypatch):
    """A SIGINT that lands while epoch 2's checkpoint is written is held until the checkpoint is
    complete (last and best both point at epoch 2), then interrupts the run; the message says
    what the run folder holds."""
    import signal

    ds = make_dataset(tmp_path)
    real = ck.save_run_checkpoint
    calls = []

    def save_and_get_interrupted(out, circuit, state, **kw):
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the save
        return real(out, circuit, state, **kw)

    monkeypatch.setattr(ck, "save_run_checkpoint", save_and_get_interrupted)
    lines: list[str] = []
    config = TrainConfig(em="full", epochs=5, patience=0, batch_size=50)
    with pytest.raises(KeyboardInterrupt):
        train(
            mixture_circuit(), ds, config, out=tmp_path / "run", device="cpu", progress=False,
            log=lines.append, compile_fn=STANDIN[0],
        )  # fmt: skip
    assert calls == [1, 2]
    assert ck.load_checkpoint(tmp_path / "run", "last").epoch == 2
    assert ck.load_checkpoint(tmp_path / "run", "best").epoch == 2
    assert lines[-1] == f"interrupted after epoch 2; {tmp_path / 'run' / 'last'} holds epoch 2; continue with --resume"
    assert any(ln.startswith("epoch   2/5") for ln in lines)  # the epoch's own line came first


def test_ctrl_c_inside_an_epoch_names_the_epoch_and_the_checkpoint(tmp_path):
    ds = make_dataset(tmp_path)
    lines: list[str] = []

    def kill(epoch, batch):
        if epoch == 3:
            raise KeyboardInterrupt

    config = TrainConfig(em="mini", epochs=5, patience=0, batch_size=32)
    with pytest.raises(KeyboardInterrupt):
        train(
            mixture_circuit(), ds, config, out=tmp_path / "run", device="cpu", progress=False,
            log=lines.append, compile_fn=STANDIN[0], on_batch=kill,
        )  # fmt: skip
    assert lines[-1] == f"interrupted in epoch 3; {tmp_path / 'run' / 'last'} holds epoch 2; continue with --resume"
    lines.clear()
    kill_first = lambda epoch, batch: (_ for _ in ()).throw(KeyboardInterrupt())  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        train(
            mixture_circuit(), ds, config, out=tmp_path / "run2", device="cpu", progress=False,
            log=lines.append, compile_fn=STANDIN[0], on_batch=kill_first,
        )  # fmt: skip
    assert lines[-1] == "interrupted in epoch 1, before the first checkpoint; start again (without --resume)"


def test_early_stopping_keeps_the_best_parameters(rt, tmp_path):
    # validation data are the complement of the training distribution: fitting train hurts valid
    ds = make_dataset(tmp_path, valid_flip=True)
    res = run(rt, mixture_circuit(seed=2), ds, tmp_path / "run", em="full", epochs=30, patience=2, batch_size=64)
    assert res.stopped_early and len(res.history) < 30
    assert res.best_epoch == len(res.history) - 2
    best = ck.load_checkpoint(tmp_path / "run", "best")
    assert best.epoch == res.best_epoch
    for k, v in params(res.model).items():
        np.testing.assert_allclose(v, best.params[k], rtol=rt[1], atol=rt[1])
    valid = [h.valid_ll for h in res.history]
    assert res.report["valid_ll"] == pytest.approx(max(valid), abs=max(rt[1], 1e-9))


def test_should_stop_ends_the_run_and_keeps_the_best_in_memory(rt, tmp_path):
    ds = make_dataset(tmp_path, valid_flip=True)  # valid gets worse as train is fitted
    asked = []

    def should_stop():
        asked.append(len(asked) + 1)
        return len(asked) == 7  # after epoch 7 (valid peaked at epoch 5)

    config = TrainConfig(em="full", epochs=30, patience=0, batch_size=64)
    res = train(
        mixture_circuit(seed=2), ds, config, device="cpu", progress=False, log=lambda s: None,
        compile_fn=rt[0], should_stop=should_stop,
    )  # fmt: skip
    assert len(res.history) == 7 and res.stopped_early and asked == list(range(1, 8))
    valid = [h.valid_ll for h in res.history]
    assert res.best_epoch == 1 + int(np.argmax(valid)) and res.best_epoch < 7
    assert res.report["valid_ll"] == pytest.approx(max(valid), abs=max(rt[1], 1e-9))


def test_report_and_run_folder(tmp_path):
    ds = make_dataset(tmp_path)
    res = run(STANDIN, mixture_circuit(), ds, tmp_path / "run", em="mini", epochs=2, batch_size=40)
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep == json.loads(json.dumps(res.report))
    for key in ("train_ll", "valid_ll", "test_ll", "time_per_epoch_s", "device", "device_name", "settings", "history"):
        assert rep[key] is not None, key
    assert rep["bpd"] is None  # not image data
    assert rep["epochs_run"] == 2 and len(rep["history"]) == 2
    assert rep["data"]["fingerprint"] == ds.fingerprint()
    names = sorted(os.listdir(tmp_path / "run"))
    assert {"last", "best", "report.json"} <= set(names)
    with pytest.raises(CheckpointError, match="already holds a run"):
        run(STANDIN, mixture_circuit(), ds, tmp_path / "run", epochs=2)


def test_bits_per_dimension_for_image_data(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", train=rng.integers(0, 2, (30, 2, 2)), valid=rng.integers(0, 2, (10, 2, 2)))
    from pcir.data import load_dataset

    ds = load_dataset(tmp_path / "img.npz")
    assert ds.image_shape == (2, 2)
    res = run(STANDIN, mixture_circuit(), ds, em="full", epochs=1)
    assert res.report["bpd"]["train"] == pytest.approx(-res.report["train_ll"] / (4 * np.log(2)))
    assert res.report["test_ll"] is None


def test_resume_refuses_other_data_and_missing_runs(tmp_path):
    ds = make_dataset(tmp_path)
    run(STANDIN, mixture_circuit(), ds, tmp_path / "run", epochs=1)
    other = make_dataset(tmp_path, n_train=60, name="other")
    with pytest.raises(CheckpointError, match="trained on different data"):
        run(STANDIN, mixture_circuit(), other, tmp_path / "run", epochs=2, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        run(STANDIN, mixture_circuit(), ds, tmp_path / "fresh", epochs=2, resume=True)


def test_learning_curves_png_or_a_note(tmp_path):
    ds = make_dataset(tmp_path)
    res = run(STANDIN, mixture_circuit(), ds, em="full", epochs=2)
    note = plot_curves(res.history, tmp_path / "c.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert note is not None and "matplotlib" in note and not (tmp_path / "c.png").exists()
    else:
        assert note is None and (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mini_batch_then_full_batch_phase(tmp_path):
    ds = make_dataset(tmp_path)
    res = run(STANDIN, mixture_circuit(), ds, em="mini", epochs=2, full_epochs=2, batch_size=30, step_size=0.3)
    assert [h.step_size for h in res.history] == [0.3, 0.3, 1.0, 1.0]
    # a full-batch epoch of the stand-in runs exactly one EM step; mini-batch epochs one per batch
    assert res.model.em_steps == 2 * 4 + 2


def test_drop_last_leaves_out_the_short_mini_batch(tmp_path):
    ds = make_dataset(tmp_path)  # 120 training rows: batches of 50, 50 and 20
    seen = []
    cfg = {"em": "mini", "epochs": 2, "full_epochs": 1, "batch_size": 50}
    res = run(STANDIN, mixture_circuit(), ds, **cfg, drop_last=False, on_batch=lambda e, b: seen.append(e))
    assert res.model.em_steps == 2 * 3 + 1 and seen == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    seen.clear()
    assert TrainConfig().drop_last  # the default
    res = run(STANDIN, mixture_circuit(), ds, **cfg, on_batch=lambda e, b: seen.append(e))
    # the full-batch epoch still reads every row
    assert res.model.em_steps == 2 * 2 + 1 and seen == [1, 1, 2, 2, 3, 3, 3]
    # fewer rows than a batch: the one batch stays
    res = run(STANDIN, mixture_circuit(), ds, em="mini", epochs=2, batch_size=500, drop_last=True)
    assert res.model.em_steps == 2


def test_training_without_a_validation_split(tmp_path):
    from _train_helpers import mixture_data

    from pcir.data import load_dataset

    np.save(tmp_path / "x.npy", mixture_data(50))
    ds = load_dataset(tmp_path / "x.npy")
    res = run(STANDIN, mixture_circuit(), ds, tmp_path / "run", em="full", epochs=3, patience=1)
    assert not res.stopped_early and res.best_epoch == 3  # nothing to stop on: the latest is kept
    assert res.report["valid_ll"] is None and res.report["test_ll"] is None
    assert [h.valid_ll for h in res.history] == [None, None, None]
