"""The ``pcir`` command: one entry point, one subcommand per module in :mod:`pcir.commands`.

A subcommand module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
User mistakes raise :class:`pcir.ir.PcirError`; they are printed as diagnostics (no traceback)
and the command exits 1. ``PCIR_TRACEBACK=1`` shows the traceback anyway (see :mod:`pcir.knobs`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import knobs
from .ir.diagnostics import PcirError


def _command_modules():
    from . import commands

    mods = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{commands.__name__}.{info.name}"))
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 100))


class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions as their modules write them: paragraphs (separated by blank lines) are
    re-wrapped to the terminal, but a paragraph with an indented line (a block of examples) is
    printed line for line (argparse's default would run the examples into one paragraph)."""

    def _fill_text(self, text, width, indent):
        import textwrap

        out = []
        for para in text.strip("\n").split("\n\n"):
            lines = para.splitlines()
            if any(ln[:1].isspace() for ln in lines):
                out.append("\n".join(indent + ln for ln in lines))
            else:
                out.append(textwrap.fill(" ".join(ln.strip() for ln in lines), width, initial_indent=indent,
                                         subsequent_indent=indent))  # fmt: skip
        return "\n\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pcir",
        description="pcir: a compiler for probabilistic circuits (.pc -> IR -> passes -> Triton -> torch).",
    )
    parser.add_argument("--version", action="version", version=f"pcir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=_HelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PcirError as e:
        if knobs.get().traceback:
            raise
        print(e.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
