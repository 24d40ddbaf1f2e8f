"""pcir.backend: kernel plan, Triton codegen and the torch runtime.

>>> model = pcir.compile(circuit)            # doctest: +SKIP
>>> ll = model(x)                            # per-sample log-likelihoods, autograd works
>>> model.forward_backward(x); model.em_step(step_size=0.1)

Stages: :func:`pcir.backend.plan.lower` (circuit -> :class:`KernelPlan`, pure data),
:func:`pcir.backend.codegen.generate` (plan -> Triton source text),
:func:`pcir.backend.loader.load_source` (source -> module imported from a hash-keyed cache),
:class:`pcir.backend.runtime.CompiledCircuit` (the ``nn.Module``).
"""

from __future__ import annotations

from pathlib import Path

from ..ir.circuit import Circuit
from ..ir.diagnostics import BackendError

PRECISIONS = ("tf32", "tf32x3", "fp32", "bf16")
ENGINES = ("auto", "triton", "torch")


def compile(  # noqa: A001  (the public name the contract asks for)
    circuit_or_path,
    *,
    pipeline: str | None = None,
    device=None,
    precision: str = "tf32x3",
    dump_dir: str | Path | None = None,
    engine: str = "auto",
):
    """Compile a circuit (or a ``.pc``/``.pcir`` file) into a :class:`CompiledCircuit`.

    * ``pipeline``: a pass pipeline spec run first (``"default"`` for the default pipeline);
      None runs no passes (the backend then uses its own layering and block sizes).
    * ``device``: where the module lives (default: ``PCIR_DEVICE``, else cuda when available).
    * ``precision``: the sum-layer matrix products on the GPU: ``"tf32x3"`` (default: three
      tf32 products on tensor cores, about float32 accuracy, a few % slower than tf32),
      ``"tf32"`` (one product; truncation biases log-likelihoods by ~1e-4 relative),
      ``"fp32"`` (exact float32 FMAs, no tensor cores) or ``"bf16"``. docs/backend.md has the
      measured error and speed of each.
    * ``dump_dir``: write the IR after each pass, the plan and the generated source there.
    * ``engine``: ``"auto"`` (Triton where it can run: CUDA, or CPU under TRITON_INTERPRET=1; else
      plain torch), ``"triton"`` or ``"torch"``.
    """
    import torch

    from .. import knobs
    from ..ir.verify import verify
    from .plan import lower
    from .runtime import CompiledCircuit

    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    if engine not in ENGINES:
        raise BackendError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    circuit = _load(circuit_or_path)
    verify(circuit)
    if pipeline:
        from ..passes import DEFAULT_PIPELINE, run_pipeline

        spec = DEFAULT_PIPELINE if pipeline == "default" else pipeline
        circuit, _report = run_pipeline(circuit, spec, dump_dir=dump_dir, timings=False)
    plan = lower(circuit)
    dev = torch.device(device or knobs.get().device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = kernels = None
    if engine != "torch":
        try:
            from .codegen import generate
            from .loader import load_source
        except ImportError:  # codegen not available: the torch engine runs the plan
            generate = None
        if generate is not None:
            source = generate(plan, precision=precision)
            kernels = load_source(source, plan.source_hash, precision)
    if dump_dir is not None:
        d = Path(dump_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "plan.txt").write_text(plan.to_text())
        if source is not None:
            (d / "kernels.py").write_text(source)
    model = CompiledCircuit(circuit, plan, precision=precision, engine=engine, source=source, kernels=kernels)
    return model.to(dev)


def _load(obj) -> Circuit:
    if isinstance(obj, Circuit):
        return obj
    if isinstance(obj, (str, Path)):
        from ..api import load

        return load(obj)
    raise BackendError(f"cannot compile a {type(obj).__name__}; pass a Circuit or a file path")


__all__ = ["compile", "PRECISIONS", "ENGINES"]
