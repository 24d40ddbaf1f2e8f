"""Generated source -> an imported module, through a file in a hash-keyed cache directory.

Triton's JIT reads kernel source with ``inspect``, so the source must live in a real file: it is
written once to ``<cache_dir>/kernels/pcir_<key>.py`` (atomically) and imported with importlib.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from .. import knobs

_LOADED: dict[str, ModuleType] = {}


def source_key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def load_source(source: str, circuit_hash: str = "", precision: str = "") -> ModuleType:
    """Write ``source`` under the cache directory (if not there yet) and import it."""
    key = source_key(source)
    if key in _LOADED:
        return _LOADED[key]
    d = Path(knobs.get().cache_dir) / "kernels"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"pcir_{key}.py"
    if not path.exists() or path.read_text() != source:
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    name = f"pcir_kernels_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    _LOADED[key] = mod
    return mod
