"""pcir.passes: the pass infrastructure and the optimisation passes.

A pass is a frozen dataclass with a kebab-case ``name`` and typed options; ``apply(circuit)``
returns a new circuit. Pipelines are spec strings::

    from pcir.passes import run_pipeline, DEFAULT_PIPELINE
    optimised, report = run_pipeline(circuit, "collapse-nodes,partition-blocks{max-block=64},group-layers")
    print(report.format())

See ``docs/passes.md`` for every pass and its options.
"""

from . import cleanup as _cleanup  # noqa: F401  (importing registers the passes)
from . import collapse as _collapse  # noqa: F401
from . import layers as _layers  # noqa: F401
from . import partition as _partition  # noqa: F401
from .base import Pass, PassStats, get_pass, register_pass, registered_passes
from .pipeline import (
    DEFAULT_PIPELINE,
    PassRecord,
    PipelineReport,
    describe_passes,
    parse_pipeline,
    pipeline_spec,
    run_pipeline,
)
from .stats import circuit_stats, naive_layering

__all__ = [
    "DEFAULT_PIPELINE",
    "Pass",
    "PassRecord",
    "PassStats",
    "PipelineReport",
    "circuit_stats",
    "describe_passes",
    "get_pass",
    "naive_layering",
    "parse_pipeline",
    "pipeline_spec",
    "register_pass",
    "registered_passes",
    "run_pipeline",
]
