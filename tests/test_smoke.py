import subprocess
import sys

import numpy as np

from pcir.ir import CircuitBuilder, Dist, Domain, log_likelihood, verify
from pcir.ir.evaluator import enumerate_assignments


def test_two_variable_mixture_normalised():
    b = CircuitBuilder()
    x0, x1 = b.variables(2, Domain.categorical(3))
    a = b.input(x0, 3, Dist.make("categorical", k=3))
    c = b.input(x1, 3, Dist.make("categorical", k=3))
    b.root(b.sum([b.product([a, c])], 1))
    circuit = verify(b.build())
    total = np.exp(log_likelihood(circuit, enumerate_assignments(circuit))).sum()
    assert abs(total - 1.0) < 1e-12


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "pcir", "--help"], capture_output=True, text=True, check=True).stdout
    assert "check" in out and "ir" in out
