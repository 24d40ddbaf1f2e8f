"""Training loop: EM on a compiled circuit, validation, early stopping, checkpoints, report.

The loop drives the runtime contract of :func:`pcir.compile` (``forward_backward``, ``em_step``,
``get_param``/``set_param``, ``to_circuit``):

* **mini-batch EM** (``em="mini"``): every batch runs forward + PC flows and one EM step with the
  epoch's step size (linearly annealed from ``step_size`` to ``step_size_final`` over the run);
* **full-batch EM** (``em="full"``): the flows of all batches are accumulated and one EM step with
  ``step_size`` (default 1: classic EM) ends the epoch.

Every epoch: the mean validation log-likelihood, a checkpoint (``OUT/last``, and ``OUT/best`` when
validation improved), early stopping after ``patience`` epochs without improvement. Shuffling uses
``numpy.random.default_rng([seed, epoch])``, so a resumed run replays the same batches as an
uninterrupted one. At the end the best parameters are loaded back and the train/valid/test mean
log-likelihoods (and bits per dimension for image data) are written to ``OUT/report.json``, the
learning curves to ``OUT/curves.png`` (when matplotlib is installed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from . import knobs
from .data.dataset import Dataset, check_table
from .ir.circuit import Circuit
from .ir.diagnostics import BackendError, CheckpointError, DataError, PcirError

EM_MODES = ("mini", "full")


def log_line(msg: str) -> None:
    """Print a line now (flushed: a run logged to a file shows each epoch as it ends)."""
    print(msg, flush=True)


# ---- runtime plumbing ---------------------------------------------------------------------------
def default_device() -> str:
    """``$PCIR_DEVICE``, else ``cuda`` when a GPU is visible, else ``cpu``."""
    dev = knobs.get().device
    if dev:
        return dev
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PcirError(f"device '{device}' requested but no CUDA device is available", hint="use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise PcirError(f"unknown device '{device}' (use cpu or cuda[:N])")
    return device


def device_name(device: str) -> str:
    """A human name for the device: the GPU's name, or the CPU's."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:  # Linux: the CPU's model name; platform.processor() there is only "x86_64"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def apply_pipeline(circuit: Circuit, pipeline: str | None) -> Circuit:
    """The circuit after the pass pipeline ``pipeline`` (``"default"``: the default one), as
    :func:`compile_model` sees it; ``None``: unchanged. Reference paths (sampling, ``--reference``)
    use it so that checkpoints of a run with ``--pipeline`` fit."""
    if not pipeline:
        return circuit
    from .passes import DEFAULT_PIPELINE, run_pipeline

    out, _report = run_pipeline(circuit, DEFAULT_PIPELINE if pipeline == "default" else pipeline, timings=False)
    return out


def compile_model(circuit: Circuit, device: str, **kw: Any):
    """``pcir.compile(circuit, device=...)``; a clear error while the backend is not installed."""
    try:
        from .backend import compile as backend_compile  # type: ignore[attr-defined]
    except ImportError:
        try:
            from . import compile as backend_compile  # type: ignore[attr-defined,no-redef]
        except ImportError:
            raise BackendError(
                "training needs the compiled runtime (pcir.compile), which this install does not have"
            ) from None
    return backend_compile(circuit, device=device, **kw)


# ---- configuration and records ------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Settings of a training run (all recorded in checkpoints and the report)."""

    epochs: int = 20
    full_epochs: int = 0  # mini-batch EM: then this many epochs of full-batch EM (step size 1)
    batch_size: int = 512
    em: str = "mini"
    step_size: float | None = None  # default: 0.1 for mini-batch EM, 1.0 for full-batch EM
    step_size_final: float | None = None  # mini-batch EM: anneal linearly to this (default: constant)
    pseudocount: float = 0.1
    patience: int = 5  # epochs without validation improvement before stopping; 0: never stop early
    seed: int = 0
    eval_batch_size: int | None = None  # default: batch_size (known to fit in memory)
    allow_missing: bool = False
    # mini-batch EM: leave out each epoch's last, short batch (its rows change with the shuffle).
    # A short batch gets the full step size: 4 rows (plants: 17412 = 34 x 512 + 4) can pull every
    # parameter half-way to a 4-sample estimate right before the epoch's validation.
    drop_last: bool = True  # mini-batch EM: leave out the short last batch (it would get a full step)
    # data softening (Liu & Van den Broeck, NeurIPS 2021): EM sees each observed discrete value as
    # soft evidence, this probability on the value seen, the rest spread over the others; 1: off
    soften: float = 1.0
    # entropy regularisation (same paper): each EM step maximises sum p log theta + entropy * H(theta)
    # per sum node and categorical/bernoulli table (pcir.backend.entropy); 0: off
    entropy: float = 0.0

    def __post_init__(self) -> None:
        if self.em not in EM_MODES:
            raise PcirError(f"unknown EM mode '{self.em}' (use one of: {', '.join(EM_MODES)})")
        if self.epochs < 0 or self.full_epochs < 0 or self.batch_size < 1 or (self.eval_batch_size or 1) < 1:
            raise PcirError("epochs must be >= 0 and batch sizes >= 1")
        if self.full_epochs and self.em != "mini":
            raise PcirError("full_epochs (--full-epochs) follows mini-batch EM; with --em full use --epochs")
        if self.step_size is not None and not 0 < self.step_size <= 1:
            raise PcirError(f"step size {self.step_size} is not in (0, 1]")
        if not 0.0 < self.soften <= 1.0:
            raise PcirError(f"soften {self.soften} is not a probability in (0, 1]")
        if not (self.entropy >= 0 and math.isfinite(self.entropy)):
            raise PcirError(f"entropy {self.entropy} is not a finite weight >= 0")
        if self.pseudocount < 0:
            raise PcirError(f"pseudocount {self.pseudocount} is negative")

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.full_epochs

    def mode_for_epoch(self, epoch: int) -> str:
        """``mini`` or ``full``: the EM variant of ``epoch`` (1-based)."""
        return "full" if self.em == "full" or epoch > self.epochs else "mini"

    def step_for_epoch(self, epoch: int) -> float:
        """The EM step size of ``epoch`` (1-based)."""
        if self.em == "mini" and epoch > self.epochs:
            return 1.0  # the full-batch phase after mini-batch EM: classic EM
        start = self.step_size if self.step_size is not None else (0.1 if self.em == "mini" else 1.0)
        if self.em == "full" or self.step_size_final is None or self.epochs <= 1:
            return start
        t = min(max(epoch - 1, 0) / (self.epochs - 1), 1.0)
        return start + (self.step_size_final - start) * t


@dataclass
class EpochRecord:
    epoch: int
    train_ll: float  # mean over the epoch's batches (mini: before each update; full: the old parameters)
    valid_ll: float | None
    step_size: float
    train_time_s: float
    eval_time_s: float
    samples_per_s: float


@dataclass
class TrainResult:
    report: dict[str, Any]
    history: list[EpochRecord]
    best_epoch: int | None
    model: Any
    out: Path | None = None
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)


# ---- data on the device -------------------------------------------------------------------------
class DeviceSplit:
    """One split as tensors on the model's device; ``batch`` gives model-ready slices."""

    def __init__(self, x: np.ndarray, missing: np.ndarray | None, discrete: bool, device):
        self.n = int(x.shape[0])
        if discrete and x.dtype.kind == "f":
            x = np.where(np.isnan(x), 0, x).astype(np.int64)
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        self.missing = None if missing is None else torch.from_numpy(missing).to(device)
        self.dtype = torch.int64 if discrete else torch.float32

    def batch(self, idx: torch.Tensor | slice):
        xb = self.x[idx].to(self.dtype)
        mb = None if self.missing is None else self.missing[idx]
        return xb, mb


def _splits_on_device(circuit: Circuit, dataset: Dataset, device, allow_missing: bool) -> dict[str, DeviceSplit]:
    discrete = all(v.domain.is_discrete for v in circuit.variables)
    out = {}
    for name, table in dataset.splits.items():
        x, miss = check_table(table, circuit, allow_missing)
        out[name] = DeviceSplit(x, miss, discrete, device)
    return out


@torch.no_grad()
def evaluate(model, split: DeviceSplit, batch_size: int = 4096, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Per-sample log-likelihoods of a split's rows ``[start, stop)`` (default all; float64 numpy)."""
    outs = []
    stop = split.n if stop is None else stop
    for s in range(start, stop, batch_size):
        xb, mb = split.batch(slice(s, min(s + batch_size, stop)))
        ll = model(xb, mb) if mb is not None else model(xb)
        outs.append(ll.detach().double().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros(0)


def _params_of(model) -> dict[str, np.ndarray]:
    return ckpt.param_arrays(model.to_circuit())


def load_params(model, params: dict[str, np.ndarray]) -> None:
    """Set a compiled model's parameters from arrays (e.g. a checkpoint's)."""
    for k, v in params.items():
        if v.dtype.kind == "f":  # integer parameters (indicator values) never change in training
            model.set_param(k, torch.from_numpy(np.array(v, copy=True)))


def bits_per_dim(mean_ll: float | None, num_vars: int) -> float | None:
    return None if mean_ll is None else -mean_ll / (num_vars * math.log(2))


# ---- the loop -----------------------------------------------------------------------------------
class Trainer:
    """Runs EM epochs on ``model`` (a compiled circuit) over ``dataset``; see the module docstring.

    ``log`` receives one line per epoch and notes; ``on_batch(epoch, batch_index)`` is called
    after every batch (tests use it to simulate a kill mid-epoch); ``should_stop()`` is asked after
    every epoch and ends the run (like early stopping: the best parameters are kept) when it returns
    true, e.g. at a wall-clock deadline.

    Without ``out`` the best parameters are kept in memory: :meth:`snapshot_params` takes them and
    :meth:`restore_params` puts them back (a subclass may keep them on the device instead).
    """

    def __init__(
        self,
        model,
        circuit: Circuit,
        dataset: Dataset,
        config: TrainConfig,
        *,
        out: str | Path | None = None,
        device: str = "cpu",
        progress: bool = True,
        log: Callable[[str], None] = log_line,
        on_batch: Callable[[int, int], None] | None = None,
        meta: dict[str, Any] | None = None,
        comm=None,
        should_stop: Callable[[], bool] | None = None,
    ):
        from .distributed import LocalComm

        # every collective goes through the communicator: the identity in one process, the
        # torch.distributed group under torchrun (see pcir.distributed)
        self.comm = comm if comm is not None else LocalComm()
        self.model = model
        if config.soften < 1.0:
            if not hasattr(model, "soften"):
                raise PcirError("data softening (soften < 1) needs a compiled pcir model")
            model.soften = config.soften
        self.circuit = circuit
        self.dataset = dataset
        self.config = config
        self.out = Path(out) if out is not None else None
        self.device = device
        self.progress = progress
        self.log = log
        self.on_batch = on_batch
        self.should_stop = should_stop
        self.meta = dict(meta or {})
        dev = getattr(model, "device", None) or torch.device(device)
        self.data = _splits_on_device(circuit, dataset, dev, config.allow_missing)
        self.fingerprint = dataset.fingerprint()
        self.history: list[EpochRecord] = []
        self.best_valid: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.start_epoch = 1
        self.elapsed = 0.0
        self._best_params: Any = None  # OUT/best's arrays, or snapshot_params()'s value without OUT
        self.notes: list[str] = []
        self._structure: ckpt.Structure | None = None

    # -- state ----------------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "best_valid": self.best_valid,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": [asdict(h) for h in self.history],
            "settings": asdict(self.config),
            "rng": {"seed": self.config.seed, "scheme": "numpy default_rng([seed, epoch]) permutation per epoch"},
            "data": {"name": self.dataset.name, "fingerprint": self.fingerprint, "sizes": self.dataset.sizes()},
            "elapsed_s": self.elapsed,
            **self.meta,
        }

    def resume(self) -> None:
        """Continue from ``OUT/last``: parameters, history, best score and patience counter.

        Distributed: rank 0 reads the checkpoint and sends the state and parameters to the others
        (no shared file system needed), whatever the number of ranks that wrote it."""
        if self.comm.world_size == 1:
            return self._resume_from_files()
        st = self.comm.on_main(lambda: (self._resume_from_files(), self._resume_state())[1], share=True)
        if not self.comm.is_main:
            self.history = [EpochRecord(**h) for h in st["history"]]
            self.best_valid, self.best_epoch = st["best_valid"], st["best_epoch"]
            self.bad_epochs, self.elapsed, self.start_epoch = st["bad_epochs"], st["elapsed"], st["start_epoch"]
        self.comm.broadcast_params(self.model)

    def _resume_state(self) -> dict[str, Any]:
        return {
            "history": [asdict(h) for h in self.history],
            "best_valid": self.best_valid,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "elapsed": self.elapsed,
            "start_epoch": self.start_epoch,
        }

    def _resume_from_files(self) -> None:
        if self.out is None:
            raise CheckpointError("--resume needs --out DIR (the run to continue)")
        last = self.out / "last"
        if not (last.exists() or last.is_symlink()):
            raise CheckpointError(f"{last}: no checkpoint to resume from", hint="start without --resume")
        try:
            ck = ckpt.load_checkpoint(self.out, "last", self.model.to_circuit())
        except CheckpointError as e:
            best = self.out / "best"
            if best.exists():
                e.hint = f"{best} ({os.readlink(best) if best.is_symlink() else best.name}) may still be intact"
            raise
        st = ck.state
        fp = st.get("data", {}).get("fingerprint")
        if fp is not None and fp != self.fingerprint:
            raise CheckpointError(
                f"{ck.path / ckpt.STATE_FILE}: the checkpoint was trained on different data (fingerprint {fp[:12]}..., this data {self.fingerprint[:12]}...)"
            )
        load_params(self.model, ck.params)
        old = st.get("settings", {})
        diff = [
            f"{k} {old[k]} -> {v}" for k, v in asdict(self.config).items() if k in old and old[k] != v and k != "epochs"
        ]
        if diff:
            self._note("resuming with changed settings: " + ", ".join(diff))
        self.history = [EpochRecord(**h) for h in st.get("history", [])]
        self.best_valid = st.get("best_valid")
        self.best_epoch = st.get("best_epoch")
        self.bad_epochs = int(st.get("bad_epochs", 0))
        self.elapsed = float(st.get("elapsed_s", 0.0))
        self.start_epoch = ck.epoch + 1
        if self.best_epoch is not None:
            best = ckpt.load_checkpoint(self.out, "best", self.model.to_circuit())
            self._best_params = best.params
        self._note(f"resumed from {ck.path} (epoch {ck.epoch})")

    def snapshot_params(self) -> Any:
        """The model's current parameters, to keep in memory (see :meth:`restore_params`)."""
        return _params_of(self.model)

    def restore_params(self, snapshot: Any) -> None:
        """Set the model's parameters from a :meth:`snapshot_params` result."""
        load_params(self.model, snapshot)

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        self.log(msg)

    # -- epochs ---------------------------------------------------------------------------------
    def _run_epoch(self, epoch: int) -> EpochRecord:
        cfg, train = self.config, self.data["train"]
        step = cfg.step_for_epoch(epoch)
        mode = cfg.mode_for_epoch(epoch)
        if mode == "mini":
            perm = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(train.n)).to(train.x.device)
        else:
            perm = None  # full-batch EM: order does not matter
        bar = _progress(train.n, f"epoch {epoch}/{cfg.total_epochs}", self.progress)
        t0 = time.perf_counter()
        # the running sum stays on the device: reading it forces a sync, done only for the bar
        total = torch.zeros((), dtype=torch.float64, device=train.x.device)
        count, shown = 0, 0.0
        comm = self.comm
        self.model.zero_flows()
        # mini-batch EM in one process: forward_backward + em_step as one call (train_step)
        fused = mode == "mini" and comm.world_size == 1 and hasattr(self.model, "train_step")
        n_rows = train.n
        if mode == "mini" and cfg.drop_last and train.n > cfg.batch_size:
            n_rows = train.n - train.n % cfg.batch_size
        for b, s in enumerate(range(0, n_rows, cfg.batch_size)):
            idx = perm[s : s + cfg.batch_size] if perm is not None else slice(s, s + cfg.batch_size)
            # distributed: this rank's part of the global batch (the union is the 1-process batch)
            xb, mb = train.batch(comm.shard(idx, train.n))
            if xb.shape[0]:
                if fused:  # (no flow buffers: docs/backend.md)
                    ent = {"entropy": cfg.entropy} if cfg.entropy else {}
                    ll = self.model.train_step(xb, step, cfg.pseudocount, mb, **ent)
                elif mb is not None:
                    ll = self.model.forward_backward(xb, mb)
                else:
                    ll = self.model.forward_backward(xb)
                total += ll.detach().double().sum()
                count += int(xb.shape[0])
            if mode == "mini" and not (fused and xb.shape[0]):
                comm.em_step(self.model, step_size=step, pseudocount=cfg.pseudocount, entropy=cfg.entropy)
            if bar is not None:
                bar.update(min(cfg.batch_size, train.n - s))
                now = time.perf_counter()
                if now - shown > 0.5:
                    bar.set_postfix_str(f"ll={float(total) / max(count, 1):.4f}", refresh=False)
                    shown = now
            if self.on_batch is not None:
                self.on_batch(epoch, b)
        if mode == "full":
            comm.em_step(self.model, step_size=step, pseudocount=cfg.pseudocount, entropy=cfg.entropy)
        train_total = float(total)  # synchronises with the device: the epoch's work is done
        if comm.world_size > 1:
            train_total, count = comm.sum_floats([train_total, count])
            if comm.sync_params(self.model):  # a non-deterministic kernel made ranks drift: rank 0 wins
                self._note(f"epoch {epoch}: parameters differed between ranks; rank 0's were broadcast")
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        t1 = time.perf_counter()
        valid = None
        if "valid" in self.data:
            valid = self._mean_ll(self.data["valid"])
        eval_time = time.perf_counter() - t1
        return EpochRecord(
            epoch, train_total / max(count, 1), valid, step, train_time, eval_time, count / max(train_time, 1e-9)
        )

    def _mean_ll(self, split: DeviceSplit) -> float:
        """Mean log-likelihood of a split; distributed, each rank evaluates a contiguous part."""
        bs = self.config.eval_batch_size or self.config.batch_size
        if self.comm.world_size == 1:
            return float(evaluate(self.model, split, bs).mean())
        lo, hi = self.comm.part(split.n)
        ll = evaluate(self.model, split, bs, lo, hi)
        total, count = self.comm.sum_floats([float(ll.sum()), ll.size])
        return total / count if count else math.nan

    def fit(self) -> TrainResult:
        """Run the remaining epochs, then evaluate the best parameters on every split."""
        cfg = self.config
        stopped = False
        epoch = self.start_epoch - 1
        if self.start_epoch > cfg.total_epochs:
            self._note(
                f"nothing to do: the run already has {self.start_epoch - 1} epochs (asked for {cfg.total_epochs})"
            )
        if cfg.patience and self.bad_epochs >= cfg.patience:
            stopped = True
            self._note("the resumed run had already stopped early")
        saved = self.start_epoch - 1  # the epoch OUT/last holds
        try:
            for epoch in range(self.start_epoch, cfg.total_epochs + 1):
                if stopped:
                    break
                rec = self._run_epoch(epoch)
                # Ctrl-C while the epoch is booked and saved waits for the checkpoint
                with _sigint_deferred():
                    stopped = self._end_epoch(epoch, rec)
                    saved = epoch
        except KeyboardInterrupt:
            if self.out is not None and saved >= 1:
                where = f"in epoch {epoch}" if epoch > saved else f"after epoch {saved}"
                self.log(f"interrupted {where}; {self.out / 'last'} holds epoch {saved}; continue with --resume")
            elif self.out is not None:
                self.log("interrupted in epoch 1, before the first checkpoint; start again (without --resume)")
            raise
        self._finish(stopped)
        report = self._report(stopped)
        if self.out is not None:
            self.comm.on_main(
                lambda: ckpt.write_file_atomic(self.out / "report.json", json.dumps(report, indent=1) + "\n")
            )
        return TrainResult(report, self.history, self.best_epoch, self.model, self.out, stopped, self.notes)

    def _end_epoch(self, epoch: int, rec) -> bool:
        """Book epoch ``epoch``'s record, save its checkpoint, print its line; True when the run
        stops after it (early stopping, ``should_stop``)."""
        cfg = self.config
        stopped = False
        self.history.append(rec)
        self.elapsed += rec.train_time_s + rec.eval_time_s
        improved = rec.valid_ll is not None and (self.best_valid is None or rec.valid_ll > self.best_valid)
        if rec.valid_ll is None:
            improved = True  # no validation split: the latest parameters are the best we know
        if improved:
            self.best_valid, self.best_epoch, self.bad_epochs = rec.valid_ll, epoch, 0
        else:
            self.bad_epochs += 1
        if self.out is not None:

            def _save(epoch=epoch, improved=improved):
                current = self.model.to_circuit()
                if self._structure is None:
                    self._structure = ckpt.Structure.of(current)
                ckpt.save_run_checkpoint(
                    self.out, current, self._state(epoch), best=improved, structure=self._structure
                )

            self.comm.on_main(_save)  # rank 0 writes (atomically); the others wait for its outcome
        elif improved:
            self._best_params = self.snapshot_params()
        self.log(_epoch_line(rec, cfg.total_epochs, improved and rec.valid_ll is not None))
        if cfg.patience and self.bad_epochs >= cfg.patience and epoch < cfg.total_epochs:
            stopped = True
            self._note(
                f"early stop: no validation improvement for {cfg.patience} epochs (best: epoch {self.best_epoch})"
            )
        if not stopped and self.should_stop is not None and epoch < cfg.total_epochs and self.should_stop():
            stopped = True
            self._note(f"stopped after epoch {epoch}: should_stop() (best: epoch {self.best_epoch})")
        return stopped

    def _finish(self, stopped: bool) -> None:
        """Put the best parameters back into the model (from OUT/best or memory); plot the curves."""
        if self.out is not None and self.best_epoch is not None:
            self.comm.on_main(
                lambda: setattr(
                    self, "_best_params", ckpt.load_checkpoint(self.out, "best", self.model.to_circuit()).params
                )
            )
        if self._best_params is not None:
            if self.out is None:  # kept in memory by snapshot_params
                self.restore_params(self._best_params)
            else:  # read from OUT/best
                load_params(self.model, self._best_params)
        if self.out is not None and self.best_epoch is not None:
            self.comm.broadcast_params(self.model)  # the best parameters, read by rank 0
        if self.out is not None and self.comm.is_main:
            model = self.meta.get("model", {}).get("path") if isinstance(self.meta.get("model"), dict) else None
            title = f"{Path(model).name if model else 'model'} on {self.dataset.name}"
            note = plot_curves(self.history, self.out / "curves.png", title)
            if note:
                self._note(note)

    def _report(self, stopped: bool) -> dict[str, Any]:
        final = {}
        for name, split in self.data.items():
            final[name] = self._mean_ll(split)
        nv = self.circuit.num_vars
        image = self.dataset.image_shape is not None
        times = [h.train_time_s for h in self.history]
        return {
            **self.meta,
            "data": {
                "name": self.dataset.name,
                "source": self.dataset.source,
                "sizes": self.dataset.sizes(),
                "fingerprint": self.fingerprint,
            },
            "device": self.device,
            "device_name": device_name(self.device),
            "ranks": self.comm.world_size,
            "settings": asdict(self.config),
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "stopped_early": stopped,
            "train_ll": final.get("train"),
            "valid_ll": final.get("valid"),
            "test_ll": final.get("test"),
            "bpd": {k: bits_per_dim(v, nv) for k, v in final.items()} if image else None,
            "time_per_epoch_s": float(np.mean(times)) if times else None,
            "samples_per_s": float(np.mean([h.samples_per_s for h in self.history])) if self.history else None,
            "total_time_s": self.elapsed,
            "history": [asdict(h) for h in self.history],
            "notes": list(self.notes),
        }


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing when stderr is a file or a pipe
    return tqdm(total=total, desc=desc, unit=" samples", unit_scale=True, leave=False, disable=None, dynamic_ncols=True)


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C (SIGINT) back until the block is done, then act on it as it would have: a
    checkpoint under way is finished, and the interrupt comes after it. Only in the main thread
    (where Python runs signal handlers); elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        if old is signal.default_int_handler or old is None:
            raise KeyboardInterrupt
        if callable(old):
            old(signal.SIGINT, None)


def _epoch_line(rec: EpochRecord, epochs: int, best: bool) -> str:
    valid = f"valid {rec.valid_ll:.4f}{' *' if best else '  '}" if rec.valid_ll is not None else "valid -"
    return (
        f"epoch {rec.epoch:>3}/{epochs}  train {rec.train_ll:.4f}  {valid}  step {rec.step_size:.3g}  "
        f"{rec.train_time_s:.2f}s  {_si(rec.samples_per_s)} samples/s"
    )


def _si(v: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}"


def plot_curves(history: list[EpochRecord], path: Path, title: str | None = None) -> str | None:
    """Learning curves as a PNG (matplotlib, when installed). Returns a note when skipped."""
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no plot: matplotlib is not installed (pip install 'pcir[plot]' to get {path.name})"
    ep = [h.epoch for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(ep, [h.train_ll for h in history], label="train (during the epoch)", marker="o", ms=3)
    if any(h.valid_ll is not None for h in history):
        ax.plot(ep, [h.valid_ll for h in history], label="valid", marker="o", ms=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean log-likelihood")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return None


def train(
    circuit: Circuit,
    dataset: Dataset,
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = log_line,
    compile_fn: Callable[..., Any] | None = None,
    meta: dict[str, Any] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    comm=None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Compile ``circuit``, train it on ``dataset`` with EM and return the result (see module doc).

    ``comm``: a :class:`pcir.distributed.Comm` for data-parallel training (each rank trains on its
    part of every batch; rank 0 logs and writes checkpoints); None trains in this process.
    ``should_stop``: see :class:`Trainer`."""
    config = config or TrainConfig()
    device = check_device(device or default_device())
    if dataset.num_vars != circuit.num_vars:
        raise DataError(
            f"dataset '{dataset.name}' has {dataset.num_vars} variables but the circuit has {circuit.num_vars}",
            hint="one column per variable, in the circuit's variable order",
        )
    model = (compile_fn or compile_model)(circuit, device=device)
    if comm is not None:
        comm.broadcast_params(model)  # every rank starts from rank 0's parameters
    trainer = Trainer(
        model,
        circuit,
        dataset,
        config,
        out=out,
        device=device,
        progress=progress,
        log=log,
        on_batch=on_batch,
        meta=meta,
        comm=comm,
        should_stop=should_stop,
    )
    if resume:
        trainer.resume()
    elif out is not None:
        trainer.comm.on_main(lambda: _check_fresh_out(Path(out)))
    return trainer.fit()


def _check_fresh_out(out: Path) -> None:
    if (out / "last").is_symlink():
        raise CheckpointError(
            f"{out / 'last'}: the output folder already holds a run",
            hint="continue it with --resume, or choose another --out",
        )
