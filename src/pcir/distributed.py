"""Data-parallel training on ``torch.distributed``: one process per GPU, any number of hosts.

Started the standard way, with ``torchrun`` (its rendezvous forms the group; it sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, read through :mod:`pcir.knobs`)::

    torchrun --nproc_per_node=2 -m pcir train model.pc --data mnist --distributed

or from Python::

    comm = pcir.distributed.init()                 # NCCL on GPUs, gloo on CPU; a timeout is set
    model = pcir.compile(circuit, device=comm.device)
    comm.broadcast_params(model)                   # every rank starts from rank 0's parameters
    lo, hi = comm.part(len(x))                     # this rank's contiguous shard
    model.forward_backward(x[lo:hi])
    comm.em_step(model, step_size=1.0)             # all-reduce the flows, then the EM step

What is communicated
--------------------
* **EM**: the flow buffers (:meth:`CompiledCircuit.flow_tensors`, one float32 per parameter) are
  summed over ranks before every EM step, in buckets of at most ``bucket_mb`` MiB (large buffers
  are reduced in place chunk by chunk, small ones packed into one flat buffer: a handful of
  collective calls per step, never one per parameter). Flows are sums over samples, so the sum of
  the ranks' flows is the flow of the whole batch and the EM step that follows is the
  single-process one. Every rank then runs the same deterministic update on the same numbers and
  holds the same parameters; :meth:`Comm.sync_params` checks that (a hash per parameter tensor)
  and re-broadcasts rank 0's parameters if a non-deterministic kernel ever made them drift.
* **Gradients**: :meth:`Comm.ddp` wraps the model in ``DistributedDataParallel`` (buffers are not
  broadcast: the flow buffers are not model state), or :meth:`Comm.all_reduce_gradients` averages
  ``.grad`` with the same bucketing, for a circuit inside a larger training loop.
* **Metrics**: log-likelihood sums and counts are all-gathered as float64 and summed in rank order,
  so every rank gets bit-identical values (and makes the same early-stopping decision).

Equality with one process
-------------------------
The global batch is split into contiguous parts (:meth:`Comm.part`), one per rank; the union of
the parts is the single-process batch. Results differ only by the order of float32 additions
(per-rank partial sums, then the all-reduce): relative differences of a few float32 ulps per
step, which the tests bound by ``rtol=1e-5, atol=1e-6`` on parameters after several EM steps.

Failures
--------
Every collective runs under the group's timeout (``PCIR_DIST_TIMEOUT`` seconds, default 300, or
``--dist-timeout``). A rank that dies or hangs makes the others raise :class:`DistributedError`
(naming the rank, the operation and the timeout) instead of hanging: gloo reports it from the
collective itself; NCCL's watchdog aborts the process after the timeout with its own message.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from . import knobs
from .ir import diagnostics
from .ir.diagnostics import PcirError

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_BUCKET_MB = 256.0
BACKENDS = ("nccl", "gloo")
_HASH_CHUNK = 1 << 24

_LAUNCH_HINT = (
    "start one process per GPU with torchrun, e.g. torchrun --nproc_per_node=2 -m pcir train ... "
    "(several hosts: --nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT)"
)


class DistributedError(PcirError):
    """A process group could not form, or a collective failed (a rank died or timed out)."""


# ---- bucketing ----------------------------------------------------------------------------------
def buckets(tensors: Iterable[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Split tensors into buckets of at most ``bucket_bytes`` (one dtype and device each).

    Every piece is a contiguous 1-D *view* of one tensor (large tensors are cut into chunks), so a
    bucket of one piece is reduced in place and a bucket of several is packed into one flat
    buffer. Empty tensors are skipped.
    """
    out: list[list[torch.Tensor]] = []
    cur: list[torch.Tensor] = []
    cur_bytes = 0
    for t in tensors:
        if t.numel() == 0:
            continue
        if not t.is_contiguous():
            raise DistributedError(f"cannot reduce a non-contiguous tensor of shape {tuple(t.shape)} in place")
        flat = t.view(-1)
        step = max(1, bucket_bytes // t.element_size())
        for a in range(0, flat.numel(), step):
            piece = flat[a : a + step]
            nbytes = piece.numel() * piece.element_size()
            if cur and (
                cur_bytes + nbytes > bucket_bytes or piece.dtype != cur[0].dtype or piece.device != cur[0].device
            ):
                out.append(cur)
                cur, cur_bytes = [], 0
            cur.append(piece)
            cur_bytes += nbytes
    if cur:
        out.append(cur)
    return out


def _first_line(e: BaseException) -> str:
    """The gist of a torch.distributed error: its first sentence, without gloo's source location."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", lines[0])
    cut = text.find(". ")
    return (text[: cut + 1] if cut > 0 else text)[:300]


# ---- the communicator ---------------------------------------------------------------------------
class LocalComm:
    """One process, no group: every collective is the identity. The training loop always talks to
    a communicator, so the single-process path and the distributed one are the same code."""

    rank = 0
    world_size = 1
    local_rank = 0
    backend: str | None = None
    timeout_s: float | None = None
    device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return "1 process"

    # -- sharding -------------------------------------------------------------------------------
    def part(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[lo, hi)`` of ``n`` items (sizes differ by at most 1)."""
        return (n * self.rank) // self.world_size, (n * (self.rank + 1)) // self.world_size

    def shard(self, idx, n: int | None = None):
        """This rank's part of a global batch: a tensor of indices, or a ``slice`` (clipped to ``n``)."""
        if self.world_size == 1:
            return idx
        if isinstance(idx, slice):
            start = idx.start or 0
            stop = idx.stop if n is None else min(idx.stop, n)
            lo, hi = self.part(max(stop - start, 0))
            return slice(start + lo, start + hi)
        lo, hi = self.part(len(idx))
        return idx[lo:hi]

    # -- collectives (identity here) ------------------------------------------------------------
    def all_reduce_flows(self, model) -> None:
        """Sum the model's flow buffers over ranks (in place)."""

    def em_step(self, model, step_size: float = 1.0, pseudocount: float = 0.0, entropy: float = 0.0) -> None:
        """All-reduce the flows, then ``model.em_step`` (the same update on every rank)."""
        self.all_reduce_flows(model)
        extra = {"entropy": entropy} if entropy else {}  # (models without the option need not take it)
        model.em_step(step_size=step_size, pseudocount=pseudocount, **extra)

    def all_reduce_gradients(self, model, average: bool = True) -> None:
        """Sum (``average``: mean) ``.grad`` of the model's parameters over ranks."""

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks, in float64, identical on every rank."""
        return [float(v) for v in values]

    def broadcast_params(self, model, src: int = 0) -> None:
        """Overwrite every rank's parameters with rank ``src``'s."""

    def params_in_sync(self, model) -> bool:
        """Whether every rank holds bit-identical parameters."""
        return True

    def sync_params(self, model) -> bool:
        """Check the parameters; re-broadcast rank 0's if they drifted. True when they had."""
        return False

    def broadcast_json(self, obj: Any = None, src: int = 0) -> Any:
        """Rank ``src``'s JSON-serialisable ``obj`` on every rank."""
        return obj

    def on_main(self, fn: Callable[[], Any], share: bool = False) -> Any:
        """Run ``fn`` on rank 0 only (files, logs); its errors are raised on every rank.

        With ``share`` the (JSON-serialisable) result is returned on every rank, else only on rank 0.
        """
        return fn()

    def barrier(self) -> None:
        """Wait for every rank (under the timeout)."""

    def ddp(self, model, **kw):
        """The model wrapped for data-parallel gradient training (here: the model itself)."""
        return model

    def close(self) -> None:
        """Leave the group (if this communicator created it)."""


class Comm(LocalComm):
    """A communicator over the default ``torch.distributed`` process group (see the module doc)."""

    def __init__(
        self,
        *,
        device: torch.device,
        timeout_s: float,
        local_rank: int = 0,
        bucket_mb: float = DEFAULT_BUCKET_MB,
        owns_group: bool = False,
        resync: bool | None = None,
    ):
        if not dist.is_initialized():
            raise DistributedError("no process group: call pcir.distributed.init() first", hint=_LAUNCH_HINT)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = local_rank
        self.backend = str(dist.get_backend())
        self.device = torch.device(device)
        self.timeout_s = float(timeout_s)
        self.bucket_bytes = max(1024, int(bucket_mb * 2**20))
        self.owns_group = owns_group
        # NCCL's tensors live on this rank's GPU; gloo's on the CPU (it also takes CUDA tensors)
        self.comm_device = self.device if self.backend == "nccl" else torch.device("cpu")
        self.stats = {"calls": 0, "bytes": 0}

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.backend}, {self.device}, timeout {self.timeout_s:g} s)"

    # -- error handling -------------------------------------------------------------------------
    def _fail(self, what: str, e: BaseException) -> DistributedError:
        return DistributedError(
            f"rank {self.rank} of {self.world_size}: {what} failed: {_first_line(e)}",
            hint=(
                f"another rank died or did not reach this point within the timeout ({self.timeout_s:g} s; "
                "set it with --dist-timeout or PCIR_DIST_TIMEOUT); that rank's own output says why"
            ),
        )

    def _run(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except PcirError:
            raise
        except (RuntimeError, ValueError, dist.DistError) as e:  # DistBackendError, DistNetworkError, ...
            raise self._fail(what, e) from e

    def _reduce(self, tensors: Iterable[torch.Tensor], what: str, op=dist.ReduceOp.SUM) -> None:
        """All-reduce ``tensors`` in place, bucketed; every call is asynchronous, waited at the end."""
        bks = buckets(tensors, self.bucket_bytes)

        def go():
            pending = []
            for bk in bks:
                buf = bk[0] if len(bk) == 1 else torch.cat(bk)
                pending.append((bk, buf, dist.all_reduce(buf, op=op, async_op=True)))
                self.stats["calls"] += 1
                self.stats["bytes"] += buf.numel() * buf.element_size()
            for bk, buf, work in pending:
                work.wait()
                if len(bk) > 1:
                    off = 0
                    for piece in bk:
                        piece.copy_(buf[off : off + piece.numel()])
                        off += piece.numel()

        with torch.no_grad():
            self._run(what, go)

    # -- collectives ----------------------------------------------------------------------------
    def all_reduce_flows(self, model) -> None:
        self._reduce(_flow_tensors(model), "all-reduce of the EM flows")

    def all_reduce_gradients(self, model, average: bool = True) -> None:
        grads = []
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:  # every rank must send the same buckets, even where a grad is unused
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self._reduce(grads, "all-reduce of the gradients")
        if average:
            with torch.no_grad():
                for g in grads:
                    g.div_(self.world_size)

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        self._run("all-gather of the metrics", lambda: dist.all_gather(parts, t))
        total = parts[0].cpu().clone()
        for p in parts[1:]:  # in rank order: the same float64 sums on every rank
            total += p.cpu()
        return [float(v) for v in total]

    def broadcast_params(self, model, src: int = 0) -> None:
        # copy through a scratch buffer: copy_ into the parameter bumps its version counter, which
        # the runtime's cached normalised weights (and CUDA graphs) key on
        with torch.no_grad():
            for bk in buckets([p.detach() for p in model.parameters()], self.bucket_bytes):
                buf = torch.cat(bk) if len(bk) > 1 else bk[0].clone()
                self._run("broadcast of the parameters", lambda buf=buf: dist.broadcast(buf, src=src))
                off = 0
                for piece in bk:
                    piece.copy_(buf[off : off + piece.numel()])
                    off += piece.numel()

    def _param_hashes(self, model) -> torch.Tensor:
        hs = []
        for p in model.parameters():
            v = p.detach().reshape(-1)
            if v.numel() == 0:
                hs.append(torch.zeros((), dtype=torch.int64, device=v.device))
                continue
            bits = v.view(torch.int32) if v.element_size() == 4 else v.view(torch.int64)
            h = torch.zeros((), dtype=torch.int64, device=v.device)
            for a in range(0, v.numel(), _HASH_CHUNK):  # chunks: bounded temporaries on big models
                c = bits[a : a + _HASH_CHUNK].to(torch.int64)
                w = torch.arange(a, a + c.numel(), device=v.device, dtype=torch.int64) % 65521 + 1
                h += (c * w).sum()  # int64 sums wrap, in any order alike: a checksum of the bits
            hs.append(h)
        return (
            torch.stack(hs).to(self.comm_device) if hs else torch.zeros(1, dtype=torch.int64, device=self.comm_device)
        )

    def params_in_sync(self, model) -> bool:
        h = self._param_hashes(model)
        parts = [torch.empty_like(h) for _ in range(self.world_size)]
        self._run("all-gather of the parameter checksums", lambda: dist.all_gather(parts, h))
        return all(bool(torch.equal(parts[0], q)) for q in parts[1:])

    def sync_params(self, model) -> bool:
        if self.params_in_sync(model):
            return False
        self.broadcast_params(model, src=0)
        return True

    def broadcast_json(self, obj: Any = None, src: int = 0) -> Any:
        data = json.dumps(obj).encode() if self.rank == src else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
        self._run("broadcast", lambda: dist.broadcast(size, src=src))
        n = int(size.item())
        if self.rank == src:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.comm_device)
        else:
            buf = torch.empty(n, dtype=torch.uint8, device=self.comm_device)
        if n:
            self._run("broadcast", lambda: dist.broadcast(buf, src=src))
        return json.loads(bytes(buf.cpu().numpy()).decode())

    def on_main(self, fn: Callable[[], Any], share: bool = False) -> Any:
        result = None
        err: BaseException | None = None
        payload: dict[str, Any] | None = None
        if self.is_main:
            try:
                result = fn()
                payload = {"ok": True, "value": result if share else None}
            except PcirError as e:
                err = e
                payload = {"ok": False, "type": type(e).__name__, "message": e.message, "hint": e.hint}
            except Exception as e:  # noqa: BLE001  (every rank must hear that rank 0 failed)
                err = e
                payload = {"ok": False, "type": None, "message": f"{type(e).__name__}: {e}", "hint": None}
        payload = self.broadcast_json(payload)
        if not payload["ok"]:
            if err is not None:
                raise err
            cls = getattr(diagnostics, payload["type"] or "", None)
            if not (isinstance(cls, type) and issubclass(cls, PcirError)):
                cls = DistributedError
            raise cls(f"rank 0 failed: {payload['message']}", hint=payload.get("hint"))
        return payload["value"] if share else result

    def barrier(self) -> None:
        # a one-element all-reduce: the same timeout and error path as every other collective
        self._reduce([torch.zeros(1, device=self.comm_device)], "barrier")

    def ddp(self, model, **kw):
        from torch.nn.parallel import DistributedDataParallel

        # the flow buffers are scratch, not model state: never broadcast them on forward
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            kw.setdefault("forward_sync_buffers", False)
        else:  # torch < 2.13
            kw.setdefault("broadcast_buffers", False)
        kw.setdefault("bucket_cap_mb", self.bucket_bytes / 2**20)
        if self.device.type == "cuda":
            kw.setdefault("device_ids", [self.device.index])
        return DistributedDataParallel(model, **kw)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _flow_tensors(model) -> list[torch.Tensor]:
    get = getattr(model, "flow_tensors", None)
    if get is None:
        raise DistributedError(f"{type(model).__name__} has no flow_tensors(): cannot all-reduce its EM flows")
    return list(get())


# ---- joining a group ----------------------------------------------------------------------------
def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return knobs.get().world_size is not None


def pick_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """This rank's device: ``cuda`` (or none given, with a GPU) -> ``cuda:LOCAL_RANK``; else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"device '{device}' requested but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if dev.type != "cpu":
        raise DistributedError(f"unknown device '{device}' (use cpu or cuda)")
    return dev


def init(
    *,
    device: str | torch.device | None = None,
    backend: str | None = None,
    timeout_s: float | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    local_rank: int | None = None,
    init_method: str | None = None,
    bucket_mb: float = DEFAULT_BUCKET_MB,
) -> Comm:
    """Join the process group of this run and return its :class:`Comm`.

    Rank, world size and local rank come from the launcher's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``; torchrun sets them) unless given; the rendezvous address from ``MASTER_ADDR``
    and ``MASTER_PORT`` (``init_method="env://"``) or ``init_method`` (e.g. ``tcp://host:port``).
    ``backend``: ``nccl`` for CUDA devices, ``gloo`` for the CPU (default from the device, or
    ``PCIR_DIST_BACKEND``). ``timeout_s`` bounds every collective (default ``PCIR_DIST_TIMEOUT``,
    else 300 s). If a group already exists (the caller made it) it is used as is.
    """
    k = knobs.get()
    local_rank = local_rank if local_rank is not None else (k.local_rank if k.local_rank is not None else 0)
    timeout = float(timeout_s if timeout_s is not None else (k.dist_timeout_s or DEFAULT_TIMEOUT_S))
    if not timeout > 0:
        raise DistributedError(f"the distributed timeout must be positive, got {timeout:g} s")
    dev = pick_device(device, local_rank)
    if dist.is_initialized():
        return Comm(device=dev, timeout_s=timeout, local_rank=local_rank, bucket_mb=bucket_mb)
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    rank = rank if rank is not None else k.rank
    world_size = world_size if world_size is not None else k.world_size
    if rank is None or world_size is None:
        raise DistributedError("not started by a launcher: RANK and WORLD_SIZE are not set", hint=_LAUNCH_HINT)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a rank of the group")
    backend = backend or k.dist_backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend not in BACKENDS:
        raise DistributedError(f"unknown distributed backend '{backend}' (use {' or '.join(BACKENDS)})")
    if backend == "nccl" and dev.type != "cuda":
        raise DistributedError("the nccl backend needs CUDA devices", hint="use --device cuda, or gloo for the CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kw: dict[str, Any] = {}
    if backend == "nccl":
        kw["device_id"] = dev  # binds the communicator to this rank's GPU (no device guessing)
    try:
        dist.init_process_group(
            backend,
            init_method=init_method or "env://",
            rank=rank,
            world_size=world_size,
            timeout=dt.timedelta(seconds=timeout),
            **kw,
        )
    except (RuntimeError, ValueError, dist.DistError) as e:
        raise DistributedError(
            f"rank {rank} of {world_size}: cannot join the process group: {_first_line(e)}",
            hint=(f"every rank must start within {timeout:g} s and reach MASTER_ADDR:MASTER_PORT; " + _LAUNCH_HINT),
        ) from e
    return Comm(device=dev, timeout_s=timeout, local_rank=local_rank, bucket_mb=bucket_mb, owns_group=True)


def ring_all_reduce_seconds(nbytes: float, ranks: int, bus_bytes_per_s: float, latency_s: float = 0.0) -> float:
    """Time of a ring all-reduce of ``nbytes`` over ``ranks`` links of ``bus_bytes_per_s`` each:
    ``2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency`` (reduce-scatter then all-gather)."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / bus_bytes_per_s + 2 * (ranks - 1) * latency_s


def flow_bytes(model_or_plan) -> int:
    """Bytes all-reduced per EM step: every flow buffer (one float32 per parameter entry)."""
    if hasattr(model_or_plan, "flow_tensors"):
        return sum(t.numel() * t.element_size() for t in model_or_plan.flow_tensors())
    p = model_or_plan
    return 4 * (p.sum_param_size + p.cat_size + 3 * p.gauss_rows)


__all__ = [
    "BACKENDS",
    "Comm",
    "DEFAULT_TIMEOUT_S",
    "DistributedError",
    "LocalComm",
    "buckets",
    "flow_bytes",
    "init",
    "launched",
    "pick_device",
    "ring_all_reduce_seconds",
]
