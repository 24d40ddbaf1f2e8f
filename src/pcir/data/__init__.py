"""Data for training and evaluating circuits: readers, datasets, checks against a circuit.

numpy only; the training loop (:mod:`pcir.train`) moves arrays to torch.

>>> from pcir.data import load_dataset
>>> ds = load_dataset("nltcs")            # shipped with pcir
>>> ds["train"].shape
(16181, 16)
"""

from .dataset import SHIPPED, SPLITS, Dataset, check_table, known_names, load_dataset
from .readers import Origin, Table, read_file, read_idx, read_npy, read_npz, read_text

__all__ = [
    "SHIPPED",
    "SPLITS",
    "Dataset",
    "Origin",
    "Table",
    "check_table",
    "known_names",
    "load_dataset",
    "read_file",
    "read_idx",
    "read_npy",
    "read_npz",
    "read_text",
]
