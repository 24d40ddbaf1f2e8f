"""pcir fmt FILE...: canonical formatting of .pc files."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

NAME = "fmt"
HELP = "format .pc files canonically (print, --check, or -i to rewrite in place)"
ORDER = 12


def add_arguments(p):
    p.add_argument("files", nargs="+", metavar="FILE", help=".pc files ('-' reads standard input)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 (and show a diff) if a file is not formatted")
    mode.add_argument("-i", "--in-place", action="store_true", help="rewrite the files")


def run(args) -> int:
    from ..frontend import format_pc
    from ..ir.diagnostics import PcirError

    status = 0
    for name in args.files:
        if name == "-":
            text, label = sys.stdin.read(), "<stdin>"
        else:
            try:
                text, label = Path(name).read_text(), name
            except (OSError, UnicodeDecodeError) as e:
                raise PcirError(f"{name}: cannot read: {e}") from None
        out = format_pc(text, label)
        if args.check:
            if out != text:
                old = [ln if ln.endswith("\n") else ln + "\n" for ln in text.splitlines(True)]
                sys.stdout.writelines(difflib.unified_diff(old, out.splitlines(True), label, label + " (formatted)"))
                print(f"{label}: not formatted", file=sys.stderr)
                status = 1
        elif args.in_place and name != "-":
            if out != text:
                Path(name).write_text(out)
        else:
            sys.stdout.write(out)
    return status
