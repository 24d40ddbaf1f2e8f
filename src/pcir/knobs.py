"""All configuration read from the environment, in one typed place (no stray os.environ reads).

| variable              | meaning                                                        |
|-----------------------|----------------------------------------------------------------|
| PCIR_CACHE_DIR        | where generated Triton modules are written (hash-keyed)        |
| PCIR_TRACEBACK        | 1: show Python tracebacks for user errors (debugging pcir)     |
| PCIR_DUMP_DIR         | if set, every compile writes its IR after each pass here        |
| PCIR_DEVICE           | default device for compile/train ("cuda" when available)       |
| TRITON_INTERPRET      | 1: run Triton kernels with the CPU interpreter (tests on CPU)  |
| PCIR_DATA_DIR         | extra folder searched for datasets by name (NAME/NAME.*.data)   |
| WORLD_SIZE, RANK      | set by torchrun: this process is rank RANK of WORLD_SIZE       |
| LOCAL_RANK            | set by torchrun: rank on this host (picks the GPU)             |
| PCIR_DIST_TIMEOUT     | seconds before a collective gives up on a dead rank (300)      |
| PCIR_DIST_BACKEND     | nccl or gloo (default: nccl for CUDA, gloo for the CPU)        |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Knobs:
    cache_dir: Path
    traceback: bool
    dump_dir: Path | None
    device: str | None
    triton_interpret: bool
    data_dir: Path | None = None
    # torch.distributed (pcir.distributed): None when no launcher set them
    world_size: int | None = None
    rank: int | None = None
    local_rank: int | None = None
    dist_timeout_s: float | None = None
    dist_backend: str | None = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _number(name: str, kind: type):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        from .ir.diagnostics import PcirError

        what = "an integer" if kind is int else "a number"
        raise PcirError(f"environment variable {name}={raw!r} is not {what}") from None


def get() -> Knobs:
    """Read the knobs now (cheap; tests may change the environment between calls)."""
    cache = os.environ.get("PCIR_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pcir"
    )
    dump = os.environ.get("PCIR_DUMP_DIR")
    data_dir = os.environ.get("PCIR_DATA_DIR")
    return Knobs(
        cache_dir=Path(cache),
        traceback=_flag("PCIR_TRACEBACK"),
        dump_dir=Path(dump) if dump else None,
        device=os.environ.get("PCIR_DEVICE") or None,
        triton_interpret=_flag("TRITON_INTERPRET"),
        data_dir=Path(data_dir) if data_dir else None,
        world_size=_number("WORLD_SIZE", int),
        rank=_number("RANK", int),
        local_rank=_number("LOCAL_RANK", int),
        dist_timeout_s=_number("PCIR_DIST_TIMEOUT", float),
        dist_backend=os.environ.get("PCIR_DIST_BACKEND") or None,
    )
