"""Compile a few generated kernels for sm_90 on this machine (no GPU needed: Triton lowers to PTX
on the host) and print, as JSON, the atomic instructions of each. Run in a process of its own
without TRITON_INTERPRET (tests/test_backend_ptx.py): the interpreter replaces the kernels.

    python tests/_ptx_atomics.py [--value-mask]

``--value-mask`` first puts back the per-value masks the eighth session removed (``& (fc != 0.0)``
on the column flows, ``& (f != 0.0)`` on the product flows), to show what they do to the
instructions. The circuit has scratch products, so the module has ``product_bwd``."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_backend_gathers import CIRCUITS  # noqa: E402

from pcir.backend import codegen  # noqa: E402
from pcir.backend import compile as pc_compile  # noqa: E402

MASKED = 'mask=m2 & (r[:, None] != 0), sem="relaxed")'
VALUE_MASKED = 'mask=m2 & (r[:, None] != 0) & (fc != 0.0), sem="relaxed")'

# kernel -> (argument types; constexprs); pointers and the batch are 16-divisible, as Triton
# specialises them at a batch of 512
KERNELS = {
    "sum_bwd_cols_v0": (
        {"F": "*fp32", "W": "*fp32", "E": "*fp32", "COLS": "*i32", "TAB": "*i64", "LIST": "*i64", "B": "i32",
         "A": "i32", "LE": "i32", "SH": "i32", "V": "*fp32", "M": "*fp32", "RG": "*i32"},
        {"BB": 64, "EXCL": False, "CG": True, "DENSE": True, "SC": False},
    ),
    "sum_cols_scatter": (
        {"F": "*fp32", "E": "*fp32", "T": "*fp32", "COLS": "*i32", "G": "*i64", "B": "i32", "A": "i32",
         "E0": "i32", "LE": "i32", "SH": "i32", "V": "*fp32", "M": "*fp32", "RG": "*i32"},
        {"BK": 64, "BB": 32, "EXCL": False, "CG": True, "SC": False},
    ),
    "product_bwd": (
        {"F": "*fp32", "IDX": "*i32", "TAB": "*i64", "B": "i32", "NT": "i32", "LE": "i32", "SH": "i32"},
        {"A": 2, "BU": 32, "BB": 64},
    ),
}  # fmt: skip


def main() -> int:
    value_mask = "--value-mask" in sys.argv
    m = pc_compile(CIRCUITS["scratch_chain"](), engine="triton", device="cpu", precision="fp32")
    src = codegen.generate(m.plan, "fp32")
    if value_mask:
        assert "fc, " + MASKED in src and "f, " + MASKED in src
        src = src.replace("fc, " + MASKED, "fc, " + VALUE_MASKED)
        src = src.replace("f, " + MASKED, "f, " + VALUE_MASKED.replace("fc != 0.0", "f != 0.0"))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ptx_kernels.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("ptx_kernels", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["ptx_kernels"] = mod
        spec.loader.exec_module(mod)
        for name, (types, consts) in KERNELS.items():
            fn = getattr(mod, name)
            sig = {a: types.get(a, "constexpr") for a in fn.arg_names}
            d16 = [["tt.divisibility", 16]]
            attrs = {(i,): d16 for i, a in enumerate(fn.arg_names) if a in types and a not in ("A", "E0", "LE", "SH")}
            k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32))
            out[name] = sorted(set(re.findall(r"\b(?:atom|red)\.[a-z0-9.]+", k.asm["ptx"])))
            if "EXCL" in consts:  # the exclusive layers' plain stores (leaf rows shifted, _flow_row)
                kx = triton.compile(
                    ASTSource(fn, sig, {**consts, "EXCL": True}, attrs), target=GPUTarget("cuda", 90, 32)
                )
                out[name + ":excl"] = sorted(set(re.findall(r"\bst\.global\.[a-z0-9.]+", kx.asm["ptx"])))
                # and storing G for the children that keep it in their value rows (the sum alias)
                ks = triton.compile(
                    ASTSource(fn, sig, {**consts, "EXCL": True, "SC": True}, attrs), target=GPUTarget("cuda", 90, 32)
                )
                out[name + ":excl_sc"] = sorted(set(re.findall(r"\bst\.global\.[a-z0-9.]+", ks.asm["ptx"])))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
