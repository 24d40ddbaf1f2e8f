"""The benchmark harness's arithmetic (bench/harness): FLOP and byte counts, floors, ratios.

The harness itself runs on a GPU machine; these checks run its counting on tiny circuits whose
counts are worked out by hand, so a table's roofline column cannot silently drift.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from harness import report  # noqa: E402
from harness.suite import SMOKE, SUITE, pcir_graph_counts  # noqa: E402
from harness.work import circuit_work, floor_ms  # noqa: E402

from pcir import structures as st  # noqa: E402
from pcir.ir import CircuitBuilder, Dist, Domain  # noqa: E402


def _mixture_of_products():
    """2 variables (k=3), inputs of 4 units each, an aligned product (4 units), a dense sum of 2
    units over it, a root of 1 unit: E = 2*4 + 1*2 = 10, P = 4*2 = 8."""
    b = CircuitBuilder(seed=0)
    b.variables(2, Domain.categorical(3))
    d = Dist.make("categorical", k=3)
    a = b.input(0, 4, d, name="a")
    c = b.input(1, 4, d, name="c")
    p = b.product([a, c], pattern="aligned", name="p")
    s = b.sum([p], 2, name="s")
    b.root(b.sum([s], 1, name="r"))
    return b.build()


def test_counts_by_hand():
    w = circuit_work(_mixture_of_products(), batch=5)
    assert (w["sum_edges"], w["prod_edges"], w["sum_params"]) == (10, 8, 10)
    assert (w["stored_rows"], w["input_units"], w["leaf_params"]) == (4 + 4 + 2 + 1, 8, 2 * 4 * 3)
    assert w["mm_flops_fwd"] == 2 * 10 * 5 and w["mm_flops_train"] == 6 * 10 * 5
    assert w["ew_flops_fwd"] == 8 * 5 and w["ew_flops_train"] == 2 * 8 * 5
    X, leaf = 5 * 2, min(24, 8 * 5)
    fwd = 4 * (10 + 11 * 5 + leaf + X)
    assert w["bytes_fwd"] == fwd
    assert w["bytes_train"] == fwd + 4 * (2 * 10 + 2 * 11 * 5 + leaf + X) + 4 * (3 * 10 + 3 * 24)


def test_tied_parameters_count_once():
    w = circuit_work(st.hmm(5, 3, 7), batch=2)
    # 4 tied transition sums of 3x3 plus a root of 3: edges at every use, parameters once
    assert w["sum_edges"] == 4 * 9 + 3
    assert w["sum_params"] == 9 + 3
    assert w["leaf_params"] == 3 * 7


def test_floor_is_max_of_flop_and_byte_time():
    w = {"mm_flops_fwd": 2e12, "ew_flops_fwd": 0, "bytes_fwd": 1e11}
    card = {"tf32_TFLOPs": 400.0, "fp32_TFLOPs": 50.0, "bf16_TFLOPs": 800.0, "copy_TBps": 4.0}
    f = floor_ms(w, card, "fwd", "tf32")
    assert f == {"floor_fwd_ms": 25.0, "floor_fwd_bound": "bytes"}  # 5 ms of tf32 FLOPs < 25 ms of bytes
    assert floor_ms(w, card, "fwd", "fp32") == {"floor_fwd_ms": 40.0, "floor_fwd_bound": "flops"}
    assert floor_ms(w, {}, "fwd", "tf32") == {}


def test_ratios_and_misses():
    row = {
        "config": "hclt-512",
        "batch": 512,
        "floor_train_ms": 2.0,
        "pcir": {"fwd_ms": 2.0, "train_ms": 10.0, "peak_mib": 70.0, "compile_s": 1.0},
        "pyjuice": {"fwd_ms": 8.0, "train_ms": 40.0, "eager_train_ms": 50.0, "peak_mib": 100.0, "compile_s": 2.0},
    }
    report.add_ratios(row)
    assert row["ratio"]["fwd"] == 0.25 and row["ratio"]["train"] == 0.25
    assert row["ratio"]["train_vs_eager"] == 0.2 and row["ratio"]["peak"] == 0.7
    assert row["roofline"]["pcir_train"] == 0.2
    missed = report.misses([row])
    assert any("compile ratio 0.50" in m for m in missed)  # 0.5 > 0.25
    assert any("20.0% of the card's floor" in m for m in missed)
    assert not any("train ratio" in m or "peak ratio" in m for m in missed)


def test_suite_names_are_unique_and_cover_the_issue():
    names = [c.name for c in SUITE]
    assert len(names) == len(set(names))
    for want in ["hclt-512", "pd-256", "rat-d5-r16-256", "hmm-2048", "hclt-128-B1", "hclt-128-B2048"]:
        assert want in names


@pytest.mark.parametrize("cfg", [c for c in SMOKE if c.family in ("pd", "rat", "hmm")], ids=lambda c: c.name)
def test_graph_counts_add_pyjuice_one_child_products(cfg):
    from harness.suite import Context, build_pcir

    c = build_pcir(cfg, Context(device=None, pyjuice=None))
    nodes, edges = pcir_graph_counts(c)
    s = c.stats()
    assert nodes >= s["nodes"] and edges - s["edges"] == nodes - s["nodes"]
    assert np.isfinite(nodes)


@pytest.mark.parametrize("chain_bwd", [False, True])
def test_per_layer_profile_maps_every_launch_to_the_plan(chain_bwd, monkeypatch):
    """The launch proxy sees every Triton launch of a train step and maps it to the plan's layers
    (device events replaced by host clocks, so this runs on the CPU interpreter); the HMM's
    chained run is one forward launch, and with CHAIN_BWD one backward launch."""
    import time

    from pcir.backend import triton_engine as te

    monkeypatch.setattr(te, "CHAIN_BWD", chain_bwd)

    import torch
    from harness import profile
    from harness.suite import Context, build_pcir

    import pcir

    class HostEvent:
        def __init__(self, **_):
            self.t = 0.0

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, other):
            return (other.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    cfg = next(c for c in SMOKE if c.family == "hmm")
    ctx = Context(device=torch.device("cpu"), pyjuice=None)
    model = pcir.compile(build_pcir(cfg, ctx), device="cpu")
    if model._engine().name != "triton":
        pytest.skip("the Triton engine does not run here (TRITON_INTERPRET unset)")
    out = profile.per_layer(model, ctx.batches(cfg)[0], torch.device("cpu"), None)
    assert "note" not in out, out.get("note")
    assert [r["layer"] for r in out["layers"]] == [layer.index for layer in model.plan.layers]
    assert all(r["fwd_ms"] >= 0 and r["bwd_ms"] >= 0 for r in out["layers"])
    run = model.plan.chains[0]
    assert out["layers"][run.start]["fwd_kernel"] == "sum_fwd_chain"
    assert out["layers"][run.start + 1]["fwd_kernel"] == "(in the chained launch above)"
    top = out["layers"][run.end - 1]["bwd_kernels"]
    assert (top == ["sum_bwd_chain"]) == chain_bwd, top


def test_memory_probe_finds_what_is_live_at_the_peak():
    """bench/memory_probe.py replays an allocator trace: the peak is the largest running total of
    allocations less completed frees, the live set is what was allocated and not yet freed at
    that moment, named by the innermost pcir frame (else the innermost Python frame)."""
    import memory_probe

    def ev(action, addr, size, where="x.py"):
        return {"action": action, "addr": addr, "size": size, "frames": [{"filename": where, "line": 7, "name": "f"}]}

    pc = "/a/src/pcir/backend/triton_engine.py"
    trace = [
        ev("alloc", 1, 100, pc),
        ev("alloc", 2, 50),
        ev("free_requested", 2, 50),  # not yet free: still counted
        ev("alloc", 3, 30, pc),  # 180: the peak
        ev("free_completed", 2, 50),
        ev("free_completed", 1, 100),
        ev("alloc", 4, 120),  # 150: below the peak
    ]
    peak, live = memory_probe.peak_live(trace)
    assert peak == 180
    assert live == [(100, "triton_engine.py:7 f"), (50, "x.py:7 f"), (30, "triton_engine.py:7 f")]
    assert memory_probe.peak_live([]) == (0, [])


def test_kernel_probe_knobs_are_set_and_restored():
    import kernel_probe as kp

    from pcir.backend import plan as plan_mod
    from pcir.backend import triton_engine as te

    before = (te.CONTIG_GATHER, te.SMALL_LAYER, plan_mod.BLOCK_M_CAP, te.STATIC_GATHER)
    with kp.knobs("nocg+small0+bm128+nostatic+stages1"):  # stages1: a launch option, no knob
        assert (te.CONTIG_GATHER, te.SMALL_LAYER, plan_mod.BLOCK_M_CAP, te.STATIC_GATHER) == (False, 0.0, 128, False)
    assert (te.CONTIG_GATHER, te.SMALL_LAYER, plan_mod.BLOCK_M_CAP, te.STATIC_GATHER) == before
    with pytest.raises(RuntimeError), kp.knobs("small2"):  # restored on errors too
        assert te.SMALL_LAYER == 2.0
        raise RuntimeError
    assert te.SMALL_LAYER == before[1]
    mod = object()
    assert kp.with_launch_options(mod, "nocg") is mod  # no launch options: the module itself


def test_kernel_probe_ablations_edit_the_template_and_restore_it():
    """Each ablation changes the sum kernels' template where it says (an edit that no longer
    matches the template fails loudly), the fs<N>/dense knobs set the engine's constants, and
    everything is back afterwards."""
    import kernel_probe as kp

    from pcir.backend import codegen
    from pcir.backend import triton_engine as te

    attrs = sorted({attr for by_attr in kp.ABLATIONS.values() for attr in by_attr})
    assert {"SUM_KERNELS", "GATHER", "SUM_CHAIN"} <= set(attrs)
    original = {attr: getattr(codegen, attr) for attr in attrs}
    for name, by_attr in kp.ABLATIONS.items():
        with kp.knobs(name):
            for attr, edits in by_attr.items():
                text = getattr(codegen, attr)
                assert text != original[attr]
                for old, new in edits:
                    assert old not in text and new in text, (name, old)
        assert {attr: getattr(codegen, attr) for attr in original} == original
    with kp.knobs("fs3+dense"):
        assert te.FWD_OPTS == {"num_stages": 3} and te.DENSE_LOOP is True
    assert te.FWD_OPTS == {} and te.DENSE_LOOP is False


def test_kernel_probe_layer_shape_describes_the_engine_layer():
    import kernel_probe as kp
    import numpy as np

    from pcir import knobs, structures
    from pcir.backend import compile as pc_compile
    from pcir.backend import triton_engine as te

    if not knobs.get().triton_interpret:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    c = structures.hclt(np.random.default_rng(0).integers(0, 3, (200, 5)), num_latents=4)
    m = pc_compile(c, engine="triton", device="cpu", precision="fp32")
    eng = m._engine()
    sums = [(layer, L) for layer, L in zip(m.plan.layers, eng.layers, strict=True) if layer.kind == "sum"]
    shapes = [kp.layer_shape(layer, L) for layer, L in sums]
    assert all(isinstance(L, te._SumLayer) for _, L in sums)
    # every edge of the circuit's sums is in exactly one layer's count (4 latents: 4 x 4 per
    # inner group, 4 x 4 for the root's children... as the plan's groups say)
    assert sum(sh["edges"] for sh in shapes) == sum(g.units * g.k for layer, _ in sums for g in layer.groups)
    for sh, (layer, L) in zip(shapes, sums, strict=True):
        assert sh["tiles_fwd"] == L.n_fwd and sh["tiles_col"] == L.n_col and sh["tiles_pf"] == L.n_pf
        assert sh["contig"] is True and sh["dense"] == [False, False]  # HCLT; dense loops are off
        assert sh["max_k"] == max(g.k for g in layer.groups)


def test_kernel_resources_compiles_every_sum_kernel_for_the_gpu():
    """bench/kernel_resources.py compiles each generated sum kernel for an H100/H200 (sm_90)
    without a GPU and prints its shared memory: every kernel the engine launches compiles for the
    real backend (the interpreter never lowers them), and none is over the limit. It runs in a
    process of its own without TRITON_INTERPRET, under which Triton returns interpreted kernels."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "kernel_resources.py"), "hclt-32", "pd-32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    for kind in ("sum_fwd ", "sum_fwdt", "sum_bwd_prep", "sum_bwd_mm", "sum_bwd_params", "sum_bwd_cols"):
        assert sum(kind in line and "shared=" in line for line in lines) >= 2, (kind, out.stdout)
    # pd-32's table-driven layers: the kernels with the arity a compile-time constant (suffix s)
    for kind in ("sum_fwds", "sum_bwd_preps", "sum_bwd_mms", "sum_bwd_colss"):
        assert any(f" {kind} " in line and "shared=" in line for line in lines), (kind, out.stdout)


def test_isolated_runs_give_each_configuration_its_own_process_and_caches(tmp_path):
    """``run.py --isolate``: every configuration runs in a child ``run.py`` of its own with new,
    empty Triton and pcir cache folders (cold compiles on both sides); the parent gathers the rows
    and says so in the table."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "iso.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, str(root / "bench" / "run.py"), "--smoke", "--device", "cpu", "--no-pyjuice",
         "--only", "smoke-(hclt|hmm)", "--isolate", "--target-s", "0.01", "--max-iters", "2", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [row["config"] for row in rows] == [c.name for c in SMOKE if c.family in ("hclt", "hmm")]
    assert all("error" not in row["pcir"] and row["pcir"]["train_ms"] > 0 for row in rows)
    # each child compiled into caches of its own, empty before it started
    assert all(row["isolated"]["pcir_cache_files"] >= 1 for row in rows)
    assert "own process" in r.stdout
    assert "--isolate" in out.with_suffix(".md").read_text()


def test_bench_knobs_set_engine_constants_and_refuse_bad_ones(monkeypatch):
    import run as bench_run

    from pcir.backend import triton_engine as te

    monkeypatch.setattr(te, "SUM_ALIAS", te.SUM_ALIAS)  # restored after the test
    monkeypatch.setattr(te, "PDL", te.PDL)
    monkeypatch.setattr(te, "SMALL_LAYER", te.SMALL_LAYER)
    assert bench_run.apply_knobs(["SUM_ALIAS=False", "PDL=2", "SMALL_LAYER=2"]) == {
        "SUM_ALIAS": False,
        "PDL": 2,
        "SMALL_LAYER": 2,
    }
    assert te.SUM_ALIAS is False and te.PDL == 2 and te.SMALL_LAYER == 2
    for bad, why in [
        ("NO_SUCH_KNOB=1", "a knob of"),
        ("PDL", "NAME=VALUE"),
        ("PDL=two", "not a Python literal"),
        ("SUM_ALIAS=1", "is a bool, got a int"),
    ]:
        with pytest.raises(SystemExit, match=why):
            bench_run.apply_knobs([bad])


class _FakePC(torch.nn.Module):
    """PyJuice's compiled circuit as the harness uses it: calls logged with their options."""

    num_nodes, num_edges, num_sum_params = 7, 9, 5
    inner_layer_groups = [0, 1]

    def __init__(self, log):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.log = log

    def forward(self, x, record_cudagraph=False):
        self.log.append("record" if record_cudagraph else ("eval" if not torch.is_grad_enabled() else "train"))
        return self.w + x.float().sum(1)


def _fake_juice(log):
    class Opt:
        def __init__(self, pc, **kw):
            pass

        def step(self):
            log.append("em")

    return types.SimpleNamespace(compile=lambda ns: _FakePC(log), optim=types.SimpleNamespace(MiniBatchEM=Opt))


@pytest.mark.parametrize("batch, eager", [(1, False), (512, True)])
def test_pyjuice_side_records_graphs_first_at_small_batches(batch, eager, monkeypatch):
    """Below EAGER_MIN_BATCH the recording step is PyJuice's first call (as the reference script
    does; its first eager step at batch 1 never finished in the harness's time), no eager
    number is reported and the recording counts as the first step; at 512 eager comes first."""
    from harness import pyjuice_side

    monkeypatch.setattr(pyjuice_side, "pyjuice_graph_counts", lambda ns: (3, 4))
    log: list[str] = []
    cfg = types.SimpleNamespace(batch=batch)
    batches = [torch.ones(batch, 3), torch.zeros(batch, 3)]
    use_eager = batch >= pyjuice_side.EAGER_MIN_BATCH
    assert use_eager is eager
    out = pyjuice_side.run(
        cfg,
        None,
        batches,
        torch.device("cpu"),
        juice=_fake_juice(log),
        timer_kw={"max_iters": 3},
        profile=False,
        eager=use_eager,
    )
    first = next(c for c in log if c != "em")
    assert first == ("eval" if eager else "record")
    assert log.count("record") == 1
    assert ("eager_fwd_ms" in out) is eager and ("eager_skipped" in out) is (not eager)
    assert out["fwd_ms"] > 0 and out["train_ms"] > 0 and out["compile_s"] >= out["first_step_s"]
    if not eager:
        assert out["first_step_s"] == out["record_s"]
    assert out["ll_mean"] == pytest.approx(float(batches[0].sum(1).mean()))


def test_ab_compare_pairs_rows_and_refuses_two_cards(tmp_path):
    """bench/ab_compare.py: pcir's times and peaks side by side with B/A ratios, the knobs named;
    runs from two cards are refused (their times do not compare)."""
    import ab_compare

    def run(card, knob, rows):
        return {"card": {"card": card}, "args": {"knob": knob}, "rows": rows}

    def row(cfg, f, t, p, ll):
        return {"config": cfg, "pcir": {"fwd_ms": f, "train_ms": t, "peak_mib": p, "ll_mean": ll}}

    a = run("H200", [], [row("hclt-128", 1.0, 3.0, 600.0, -100.5), row("only-a", 1.0, 1.0, 1.0, 0.0)])
    b = run("H200", ["SUM_ALIAS=False"], [row("hclt-128", 1.1, 2.7, 720.0, -100.0)])
    out = ab_compare.compare(a, b)
    assert "A: defaults; B: SUM_ALIAS=False; H200" in out
    assert "| hclt-128 | 1.000 / 1.100 | 1.10 | 3.000 / 2.700 | 0.90 | 600 / 720 | 1.20 | -5.00e-01 |" in out
    assert "only-a" not in out
    with pytest.raises(SystemExit, match="different cards"):
        ab_compare.compare(a, run("NVIDIA H100 80GB HBM3", [], []))


def test_sm90_occupancy_from_registers_and_shared_memory():
    """kernel_resources' warps per SM: 65536 registers in per-warp units of 256, 228 KiB of
    shared memory (+1 KiB per block), at most 64 warps and 32 blocks."""
    from pcir.backend.offline import warps_per_sm as occ

    assert occ(203, 8, 32768) == 8  # 208 x 32 x 8 = 53,248 registers: one block
    assert occ(98, 16, 32768) == 16  # 104 x 32 x 16 = 53,248: one 16-warp block
    assert occ(64, 4, 0) == 32  # 2,048 per warp: 32 warps
    assert occ(8, 4, 0) == 64  # the 64-warp cap
    assert occ(32, 4, 100 * 1024) == 8  # shared memory: two blocks of 101 KiB


def test_kernel_probe_refuses_unknown_variant_parts():
    """A typo in a variant would time the defaults under another name (GPU time lost)."""
    import kernel_probe as kp

    assert kp.unknown_parts("base") == []
    assert kp.unknown_parts("pdl+fw8+stages2+small4+fs3+warps4+ab_a1") == []
    assert kp.unknown_parts("pdl+fw9+stagesX") == ["fw9", "stagesX"]


def test_launch_resources_lists_the_real_launches(tmp_path):
    """bench/launch_resources.py on a small configuration: the engine's launches at its batch,
    compiled for sm_90 without a GPU, with registers and the card's fill."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    env["PCIR_CACHE_DIR"] = str(tmp_path / "pcir")
    r = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "launch_resources.py"), "smoke-hmm-4",
         "--paths", "forward", "--unique"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = r.stdout + r.stderr
    if r.returncode != 0 and "ptxas" in out.lower() and "not found" in out.lower():
        pytest.skip("no ptxas for sm_90 on this machine")
    assert r.returncode == 0, out[-3000:]
    rows = [ln.split("|") for ln in r.stdout.splitlines() if ln.startswith("| forward |")]
    fwd = [c for c in rows if c[2].strip().startswith("sum_fwd")]
    assert fwd, r.stdout
    regs = int(fwd[0][6])
    assert 16 <= regs <= 255  # read from the cubin
    assert int(fwd[0][9]) >= int(fwd[0][5])  # at least one block of its warps per SM
    assert float(fwd[0][10]) < 1  # a smoke circuit's launch fills a sliver of the card


def test_call_overhead_parses_its_command_line(capsys, monkeypatch):
    """bench/call_overhead.py runs only on a GPU; on the CPU it imports, its command line parses
    and its default configurations are the suite's."""
    import call_overhead as co

    monkeypatch.setattr(sys, "argv", ["call_overhead.py", "--help"])
    with pytest.raises(SystemExit) as e:
        co.main()
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--configs" in out and "replayed once from an idle device" in out
    args = co.parser().parse_args([])
    assert set(args.configs.split(",")) <= {c.name for c in SUITE} and args.precision == "tf32"


def test_pyjuice_prebuild_calls_every_availability_check_and_reports_failures(monkeypatch):
    import pyjuice_prebuild

    calls = []
    mod = types.ModuleType("fake_pj_kernels")
    mod.smallbatch_fw_is_available = lambda: calls.append("fw") or True
    mod.par_is_available = lambda: calls.append("par") or False

    def broken():
        calls.append("broken")
        raise RuntimeError("nvcc not found")

    mod.broken_is_available = broken
    mod.smallbatch_forward_sum = lambda: calls.append("kernel")  # not a check: never called
    monkeypatch.setitem(sys.modules, "fake_pj_kernels", mod)
    out = pyjuice_prebuild.prebuild(("fake_pj_kernels", "no_such_pyjuice_module"))
    assert sorted(calls) == ["broken", "fw", "par"]
    assert out["fake_pj_kernels.smallbatch_fw_is_available"][0] is True
    assert out["fake_pj_kernels.par_is_available"][0] is False
    assert out["fake_pj_kernels.broken_is_available"][0] == "RuntimeError: nvcc not found"
    assert out["no_such_pyjuice_module"][0] == "error"
