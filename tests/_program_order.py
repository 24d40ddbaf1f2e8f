"""Run the interpreted kernels' programs in another order than Triton's interpreter does.

Under ``TRITON_INTERPRET=1`` the programs of a launch run one after another in grid order
(0, 1, 2, ...). A GPU runs them in any order and at the same time, so a kernel whose programs
read what other programs of the same launch write (a race) can pass every CPU test and still be
wrong on a GPU. Running the same tests with the programs in reverse or in a shuffled order shows
such a dependence on the CPU: a result that changes with the order depends on it.

``install(order)`` remaps the grid index the interpreter hands to each program:
``reverse`` runs the last program first; ``shuffle`` uses a fresh random permutation for every
launch, drawn from a generator that conftest.py reseeds from each test's id, so a test sees the
same orders in every run and a failure repeats. Sums by atomic adds then add in another order, so the
tests that compare bit for bit against an in-order reference hold only up to rounding there.
"""

from __future__ import annotations

import numpy as np

ORDERS = ("grid", "reverse", "shuffle")


class _Remap:
    def __init__(self, builder, order: str, seed: int):
        self.builder = builder
        self.order = order
        self.rng = np.random.default_rng(seed)
        self.dims = (1, 1, 1)
        self.perm = np.zeros(1, dtype=np.int64)
        self.launches = 0
        self._set_dim = builder.set_grid_dim
        self._set_idx = builder.set_grid_idx

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def set_grid_dim(self, nx, ny, nz):
        self.dims = (int(nx), int(ny), int(nz))
        n = self.dims[0] * self.dims[1] * self.dims[2]
        if self.order == "reverse":
            self.perm = np.arange(n - 1, -1, -1, dtype=np.int64)
        else:
            self.perm = self.rng.permutation(n).astype(np.int64)
        self.launches += 1
        return self._set_dim(nx, ny, nz)

    def set_grid_idx(self, x, y, z):
        _, ny, nz = self.dims
        p = int(self.perm[(x * ny + y) * nz + z])
        return self._set_idx(p // (ny * nz), (p // nz) % ny, p % nz)


def install(order: str, seed: int = 0) -> _Remap | None:
    """Patch the interpreter's grid walk (``grid``: leave it as it is). Returns the patch, whose
    ``launches`` counts the launches it reordered, or None."""
    if order not in ORDERS:
        raise ValueError(f"program order {order!r} is not one of {', '.join(ORDERS)}")
    if order == "grid":
        return None
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    remap = _Remap(builder, order, seed)
    builder.set_grid_dim = remap.set_grid_dim
    builder.set_grid_idx = remap.set_grid_idx
    return remap


def uninstall(remap: _Remap | None) -> None:
    if remap is None:
        return
    del remap.builder.set_grid_dim
    del remap.builder.set_grid_idx
