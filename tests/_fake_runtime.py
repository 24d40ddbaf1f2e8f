"""A stand-in for the compiled runtime (pcir.compile's nn.Module), built on the reference evaluator.

It implements the runtime contract of the helper brief (model(x), forward_backward, em_step,
zero_flows, get/set_param, to_circuit, circuit, num_vars, device) so that the training loop and
checkpoints can be tested without the Triton backend. Full-batch EM accumulates the batches and
runs the reference ``em_step`` on their concatenation, which is the same as summing their flows.
Tests only: the product never imports this.
"""

from __future__ import annotations

import numpy as np
import torch

from pcir.ir import evaluator
from pcir.ir.circuit import Circuit


def _np(a):
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


class FakeModel(torch.nn.Module):
    def __init__(self, circuit: Circuit, device: str | None = None):
        super().__init__()
        self._circuit = circuit.materialized()
        self.circuit = self._circuit
        self.plan = None
        self.device = torch.device(device or "cpu")
        self._acc_x: list[np.ndarray] = []
        self._acc_m: list[np.ndarray] = []
        self.em_steps = 0

    @property
    def num_vars(self) -> int:
        return self._circuit.num_vars

    def forward(self, x, missing=None):
        ll = evaluator.log_likelihood(self._circuit, _np(x), _np(missing))
        return torch.as_tensor(ll, dtype=torch.float32, device=self.device)

    def forward_backward(self, x, missing=None):
        xs = _np(x).astype(np.float64)
        ms = np.zeros(xs.shape, bool) if missing is None else _np(missing).astype(bool)
        self._acc_x.append(xs)
        self._acc_m.append(ms)
        return self.forward(x, missing)

    def em_step(self, step_size: float = 1.0, pseudocount: float = 0.0) -> None:
        if not self._acc_x:
            return
        x = np.concatenate(self._acc_x)
        m = np.concatenate(self._acc_m)
        self._circuit = evaluator.em_step(self._circuit, x, m, step_size=step_size, pseudocount=pseudocount)
        self.circuit = self._circuit
        self.zero_flows()
        self.em_steps += 1

    def zero_flows(self) -> None:
        self._acc_x, self._acc_m = [], []

    def get_param(self, name: str) -> torch.Tensor:
        return torch.as_tensor(np.array(self._circuit.param_value(name)))

    def set_param(self, name: str, value) -> None:
        self._circuit = self._circuit.with_params(**{name: _np(value)})
        self.circuit = self._circuit

    def to_circuit(self) -> Circuit:
        return self._circuit


def compile(circuit, *, pipeline=None, device=None, precision="tf32", dump_dir=None) -> FakeModel:  # noqa: A001
    return FakeModel(circuit, device)
