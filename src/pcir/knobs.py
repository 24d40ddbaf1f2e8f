"""All configuration read from the environment, in one typed place (no stray os.environ reads).

| variable              | meaning                                                        |
|-----------------------|----------------------------------------------------------------|
| PCIR_CACHE_DIR        | where generated Triton modules are written (hash-keyed)        |
| PCIR_TRACEBACK        | 1: show Python tracebacks for user errors (debugging pcir)     |
| PCIR_DUMP_DIR         | if set, every compile writes its IR after each pass here        |
| PCIR_DEVICE           | default device for compile/train ("cuda" when available)       |
| TRITON_INTERPRET      | 1: run Triton kernels with the CPU interpreter (tests on CPU)  |
| PCIR_DATA_DIR         | extra folder searched for datasets by name (NAME/NAME.*.data)   |
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


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def get() -> Knobs:
    """Read the knobs now (cheap; tests may change the environment between calls)."""
    cache = os.environ.get("PCIR_CACHE_DIR") or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pcir")
    dump = os.environ.get("PCIR_DUMP_DIR")
    data_dir = os.environ.get("PCIR_DATA_DIR")
    return Knobs(
        cache_dir=Path(cache),
        traceback=_flag("PCIR_TRACEBACK"),
        dump_dir=Path(dump) if dump else None,
        device=os.environ.get("PCIR_DEVICE") or None,
        triton_interpret=_flag("TRITON_INTERPRET"),
        data_dir=Path(data_dir) if data_dir else None,
    )
