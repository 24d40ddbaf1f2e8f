"""Compile a model's kernels for a GPU that is not here: the engine's own launches, as warmups.

Triton can compile for any NVIDIA architecture without a GPU (its ``ptxas`` is bundled); what it
lacks is a driver to ask for the target. :func:`use_offline_target` installs one that names an
sm_90 device (H100/H200) by default, :class:`Recorder` turns every launch of an engine into a
compile (``warmup``) and records it, so calling a model's own paths on the CPU compiles each
kernel with the argument types, constants, grid and warps the engine really gives it. The
buffers of such a pass hold garbage: only the launches matter.

For tools and tests on machines without a GPU (``tests/test_backend_sm90.py``,
``bench/launch_resources.py``). It replaces Triton's driver for the whole process and needs
Triton's interpreter off (``TRITON_INTERPRET`` unset before the generated kernels are loaded):
run it in a process of its own, never beside real GPU work.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .precompile import WarmupKernels

# an sm_90 streaming multiprocessor (H100, H200): registers, shared memory (bytes), warps, blocks
SM90_REGS, SM90_SHARED, SM90_WARPS, SM90_BLOCKS = 65536, 228 * 1024, 64, 32


class _OfflineDriver:
    """What Triton's JITFunction asks of its driver on the way to a warmup compile."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")

    def is_active(self):
        return True


def use_offline_target(arch: int = 90) -> None:
    """Make Triton compile for ``sm_<arch>`` in this process, GPU or not."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("offline compiles need Triton's interpreter off (unset TRITON_INTERPRET)")
    from triton.runtime import driver

    driver.set_active(_OfflineDriver(arch))


@dataclass
class Launch:
    """One recorded launch: the kernel, its grid, its compile-time options and the compiled
    kernel (None where the launch only refers to one compiled before with the same key)."""

    kernel: str
    grid: tuple
    num_warps: int | None
    constants: dict = field(default_factory=dict)
    compiled: Any = None

    @property
    def programs(self) -> int:
        n = 1
        for g in self.grid:
            n *= int(g)
        return n


class Recorder(WarmupKernels):
    """precompile's WarmupKernels (launches compile, do not run) that also appends every launch
    to ``launches``."""

    def __init__(self, module, launches: list[Launch]):
        super().__init__(module)
        self._launches = launches

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not hasattr(fn, "warmup"):
            return fn
        launches = self._launches

        class _Grid:
            def __getitem__(self, grid):
                grid = grid if isinstance(grid, tuple) else (grid,)

                def launch(*args, **kwargs):
                    consts = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages", "launch_pdl")}
                    compiled = fn.warmup(*args, grid=grid, **kwargs)
                    launches.append(Launch(name, grid, kwargs.get("num_warps"), consts, compiled))
                    return compiled

                return launch

        return _Grid()


def resources(compiled) -> dict[str, int] | None:
    """Registers per thread, stack and local bytes of a compiled kernel, from its cubin (Triton's
    bundled ``cuobjdump``), and its shared memory; None where they cannot be read."""
    cubin = getattr(compiled, "asm", {}).get("cubin")
    if not cubin:
        return None
    import triton

    exe = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([str(exe), "-res-usage", f.name], capture_output=True, text=True, check=False).stdout
        except OSError:
            return None
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)
    if not m:
        return None
    md = compiled.metadata
    return {
        "regs": int(m.group(1)),
        "stack": int(m.group(2)),
        "local": int(m.group(3)),
        "shared": int(md.shared),
        "warps": int(md.num_warps),
    }


def warps_per_sm(regs: int, warps: int, shared: int) -> int:
    """Resident warps per sm_90 SM of a kernel with ``regs`` registers per thread, ``warps`` warps
    per block and ``shared`` bytes of shared memory per block: registers are allocated per warp in
    units of 256, each block reserves 1 KiB of shared memory more, at most 64 warps and 32 blocks."""
    per_warp = -(-regs * 32 // 256) * 256
    by_regs = SM90_REGS // (per_warp * warps) if regs else SM90_BLOCKS
    by_smem = SM90_SHARED // (shared + 1024) if shared else SM90_BLOCKS
    return min(by_regs, by_smem, SM90_BLOCKS, SM90_WARPS // warps) * warps
