"""Subcommands of ``pcir``: each module here is one (see :mod:`pcir.cli`)."""
