"""Shared pieces of the training tests: a tiny circuit, tiny data, the stand-in runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pcir.data import load_dataset
from pcir.ir import CircuitBuilder, Dist, Domain


def mixture_circuit(num_vars: int = 4, components: int = 3, seed: int = 0, k: int = 2):
    """A mixture of fully factorised components (one sum over one product of leaf groups)."""
    b = CircuitBuilder(seed=seed)
    xs = b.variables(num_vars, Domain.categorical(k))
    dist = Dist.make("bernoulli") if k == 2 else Dist.make("categorical", k=k)
    leaves = [b.input(v, components, dist) for v in xs]
    b.root(b.sum([b.product(leaves)], 1))
    return b.build()


def mixture_data(n: int, num_vars: int = 4, seed: int = 0, flip: bool = False) -> np.ndarray:
    """Samples of a 2-component mixture of product Bernoullis (``flip`` swaps 0 and 1)."""
    rng = np.random.default_rng(seed)
    protos = np.array([[0.9] * num_vars, [0.15] * num_vars])
    protos[1, : num_vars // 2] = 0.7
    z = rng.integers(0, 2, size=n)
    x = (rng.random((n, num_vars)) < protos[z]).astype(np.uint8)
    return 1 - x if flip else x


def make_dataset(
    tmp: Path,
    n_train: int = 120,
    n_valid: int = 40,
    n_test: int = 40,
    num_vars: int = 4,
    valid_flip: bool = False,
    name: str = "toy",
):
    path = tmp / f"{name}.npz"
    np.savez(
        path,
        train=mixture_data(n_train, num_vars, 1),
        valid=mixture_data(n_valid, num_vars, 2, flip=valid_flip),
        test=mixture_data(n_test, num_vars, 3),
    )
    return load_dataset(path)
