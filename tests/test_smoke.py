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


def test_subcommand_help_keeps_example_lines_and_wraps_prose():
    from pcir.cli import _HelpFormatter, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    query = sub.choices["query"].format_help()
    # each example stays a line of its own (argparse's default ran them into one paragraph)
    assert "\n  pcir query ll model.pcir --data test.data " in query
    assert "\n  pcir query map model.pcir --data partial.csv " in query
    opt = sub.choices["opt"]
    opt.formatter_class = lambda prog: _HelpFormatter(prog, width=60)
    text = opt.format_help()
    prose = text.split("\n\n")[1]
    assert prose.startswith("Run a pass pipeline") and max(len(ln) for ln in prose.splitlines()) <= 60
