"""Shared test configuration.

* ``--device cuda`` runs the kernel tests on the GPU with real Triton compilation; the default,
  ``cpu``, runs the same kernels under ``TRITON_INTERPRET=1`` (scripts/test.sh sets it).
* ``--program-order reverse|shuffle`` (or ``PCIR_PROGRAM_ORDER``) runs each interpreted launch's
  programs in another order than grid order, which shows a kernel whose programs depend on each
  other's writes (a race on a GPU) on the CPU; see tests/_program_order.py.
* Hypothesis profiles: ``ci`` (default, small) and ``thorough`` (``--hypothesis-profile thorough``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"], help="device for kernel tests")
    parser.addoption(
        "--program-order",
        default=os.environ.get("PCIR_PROGRAM_ORDER", "grid"),
        choices=["grid", "reverse", "shuffle"],
        help="order of an interpreted launch's programs (TRITON_INTERPRET=1 only)",
    )
    parser.addoption(
        "--engine-knob",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a knob of pcir.backend.triton_engine for the whole run (repeatable), e.g. "
        "PDL=2: the GPU suite with a candidate default before it becomes the default",
    )
    parser.addoption(
        "--fail-log",
        default=None,
        metavar="PATH",
        help="append each failing test's id and report to PATH as it fails (a run cut off by a "
        "time limit never prints its summary; this file still says what failed)",
    )


def pytest_configure(config):
    global _fail_log
    # written once, by the process that sees every report (xdist's controller, or the only one)
    _fail_log = None if hasattr(config, "workerinput") else config.getoption("--fail-log")
    if config.getoption("--engine-knob"):
        from pcir.backend import triton_engine

        try:
            config._pcir_engine_knobs = triton_engine.set_knobs(config.getoption("--engine-knob"))
        except ValueError as e:
            raise pytest.UsageError(f"--engine-knob {e}") from None
    order = config.getoption("--program-order")
    if order != "grid" and config.getoption("--device") == "cpu":
        from pcir import knobs

        if not knobs.get().triton_interpret:
            raise pytest.UsageError("--program-order needs TRITON_INTERPRET=1")
        import _program_order

        config._pcir_program_order = _program_order.install(order)


@pytest.fixture(autouse=True)
def _program_order_seed(request):
    """Under --program-order shuffle, each test draws its permutations from a seed of its own
    (its id), so a test sees the same program orders whichever worker runs it, alone or in the
    whole suite."""
    remap = getattr(request.config, "_pcir_program_order", None)
    if remap is not None:
        import zlib

        remap.reseed(zlib.crc32(request.node.nodeid.encode()))
    yield


_fail_log: str | None = None  # --fail-log


def pytest_runtest_logreport(report):
    """--fail-log: written as each failure arrives (with xdist, in the controller)."""
    if _fail_log and report.failed:
        with open(_fail_log, "a") as f:
            f.write(f"FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")


def pytest_report_header(config):
    lines = []
    order = config.getoption("--program-order")
    if order != "grid":
        lines.append(f"interpreted programs run in {order} order")
    knobs_set = getattr(config, "_pcir_engine_knobs", None)
    if knobs_set:
        lines.append("engine knobs: " + ", ".join(f"{k}={v!r}" for k, v in knobs_set.items()))
    return lines or None


@pytest.fixture(scope="session")
def device(request) -> str:
    dev = request.config.getoption("--device")
    if dev == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("--device cuda given but no CUDA device")
    return dev


@pytest.fixture(params=["triton", "torch"])
def engine(request, device) -> str:
    """Both engines of the compiled module: the generated Triton kernels (under TRITON_INTERPRET=1
    on the CPU, compiled with ``--device cuda``) and the plain-torch executor."""
    from pcir import knobs

    if request.param == "triton" and device == "cpu" and not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    return request.param


def pytest_collection_modifyitems(config, items):
    if config.getoption("--device") == "cuda":
        return
    skip = pytest.mark.skip(reason="needs --device cuda")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
