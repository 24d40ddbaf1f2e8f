"""The side-by-side benchmark harness behind ``bench/run.py`` (pcir and PyJuice 2.6.3).

Modules: :mod:`suite` (configurations, data, the structures on both sides), :mod:`work` (FLOPs and
bytes a configuration must move, the card's ceilings), :mod:`timing` (event timing),
:mod:`pcir_side` and :mod:`pyjuice_side` (one configuration on each system), :mod:`profile`
(per-layer times and launch counts), :mod:`report` (tables).
"""
