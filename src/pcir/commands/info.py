"""pcir info MODEL [--checkpoint DIR] [--plan] [--batch B]: sizes, parameters, layer plan, a training
step's memory, checkpoint state."""

from __future__ import annotations

from collections import Counter

NAME = "info"
HELP = "sizes, parameters and (with --plan) the backend's layer plan of a circuit; checkpoint state"
ORDER = 33


def add_arguments(p):
    p.add_argument("model", help="the circuit file")
    p.add_argument("--checkpoint", help="also describe this run folder or checkpoint folder")
    p.add_argument("--which", choices=["best", "last"], default="best")
    p.add_argument("--plan", action="store_true", help="compile and print the backend's kernel plan (layers)")
    p.add_argument("--device", help="device to compile for with --plan (default: cpu)")
    p.add_argument(
        "--batch",
        type=int,
        metavar="B",
        help="the GPU memory of a training step at this batch on the Triton engine (implies --plan)",
    )
    p.add_argument(
        "--pipeline", help="pass pipeline to run before compiling (--plan) or that the checkpoint was trained with"
    )
    p.add_argument(
        "--save-pcir",
        metavar="FILE",
        help="with --checkpoint: write the circuit with the checkpoint's parameters as a self-contained .pcir",
    )


def describe(circuit) -> list[str]:
    """Human-readable sizes of a circuit."""
    import numpy as np

    from ..ir.circuit import InputGroup, ProductGroup, SumGroup
    from ..ir.distributions import get as get_dist

    s = circuit.stats()
    doms = Counter(str(v.domain) for v in circuit.variables)
    lines = [
        f"variables   {circuit.num_vars} ({', '.join(f'{n} {d}' for d, n in sorted(doms.items()))})",
        f"groups      {s['groups']} ({_kinds(circuit)})",
        f"nodes       {s['nodes']}",
        f"edges       {s['edges']}",
        f"depth       {max(circuit.depth().values(), default=0)}",
        f"roots       {', '.join(circuit.roots)}",
    ]
    learn = fixed = 0
    by_kind: Counter[str] = Counter()
    seen = set()
    for g in circuit:
        pname = getattr(g, "params", None)
        if not pname or pname in seen:
            continue
        seen.add(pname)
        n = int(np.prod(circuit.params[pname].shape))
        if isinstance(g, SumGroup):
            by_kind["sum weights"] += n
            learn += n
        elif isinstance(g, InputGroup):
            by_kind[g.dist.kind] += n
            if get_dist(g.dist.kind).learnable:
                learn += n
            else:
                fixed += n
    tied = sum(1 for p in circuit.params if len(circuit.users_of_param(p)) > 1)
    lines.append(
        f"parameters  {s['params']} ({learn} learnable, {fixed} fixed; {', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})"
    )
    if tied:
        lines.append(f"tied        {tied} parameter arrays shared by several groups")
    largest = sorted(
        ((g.units, g.name, g.kind) for g in circuit if isinstance(g, (SumGroup, ProductGroup))), reverse=True
    )[:3]
    if largest:
        lines.append("largest     " + ", ".join(f"{n} ({k}, {u} units)" for u, n, k in largest))
    if circuit.attrs:
        lines.append("attributes  " + ", ".join(f"{k}={v}" for k, v in circuit.attrs))
    return lines


def _kinds(circuit) -> str:
    c = Counter(g.kind for g in circuit)
    return ", ".join(f"{c[k]} {k}" for k in ("input", "product", "sum") if c[k])


def describe_plan(model) -> list[str]:
    plan = getattr(model, "plan", None)
    if plan is None:
        return ["plan        (the runtime exposes no plan)"]
    lines = []
    stats = plan.stats() if hasattr(plan, "stats") else {}
    if stats:
        lines.append("plan        " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    chain_of = {}  # layer -> (run start, run end, chains): one forward launch per run
    for ch in getattr(plan, "chains", []) or []:
        for t in range(ch.start, ch.end):
            chain_of[t] = (ch.start, ch.end, len(ch.groups))
    for i, layer in enumerate(getattr(plan, "layers", []) or []):
        groups = getattr(layer, "groups", [])
        names = [getattr(g, "name", str(g)) for g in groups]
        shown = ", ".join(names[:4]) + (f", ... (+{len(names) - 4})" if len(names) > 4 else "")
        run = chain_of.get(i)
        tag = f"  [chain {run[0]}-{run[1] - 1}]" if run else ""
        lines.append(f"  layer {i:>3} {getattr(layer, 'kind', '?'):<8} {len(groups):>4} groups  {shown}{tag}")
    return lines


def describe_memory(model, batch: int) -> list[str]:
    """The model's tensors and the buffers a training step allocates at ``batch`` on the Triton
    engine (``CompiledCircuit.train_memory``)."""
    if getattr(model, "_kernels", None) is None:
        return ["memory      (no Triton kernels were generated: Triton is not importable here)"]
    mem = model.train_memory(batch)  # a bad batch raises a diagnostic
    tensors = {n.replace("_", " "): b for n, b in mem["model"].items()}
    step = mem["step"]
    note = " (flows in the value rows where the plan allows)"  # one buffer: the leaves' and sums' alias
    step = {n + (note if n == "values and flows" else ""): b for n, b in step.items()}
    pad = " " * 14
    return [
        f"memory      a training step at batch {batch} on the Triton engine ({model.precision}): "
        f"about {_size(sum(tensors.values()) + sum(step.values()))}",
        f"{pad}model tensors {_size(sum(tensors.values()))}: "
        + ", ".join(f"{n} {_size(b)}" for n, b in tensors.items()),
        f"{pad}step buffers {_size(sum(step.values()))}: " + ", ".join(f"{n} {_size(b)}" for n, b in step.items()),
        f"{pad}(not counted: the inputs' copies, library workspaces)",
    ]


def _size(b: int) -> str:
    for unit, k in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= k:
            return f"{b / k:.1f} {unit}"
    return f"{b} B"


def run(args) -> int:
    from ..api import load
    from ..checkpoint import load_checkpoint

    circuit = load(args.model)
    print(f"{args.model}")
    for line in describe(circuit):
        print(f"  {line}")
    if args.plan or args.batch is not None:  # --batch implies --plan
        from ..train import check_device, compile_model

        model = compile_model(
            circuit, check_device(args.device or "cpu"), **({"pipeline": args.pipeline} if args.pipeline else {})
        )
        for line in describe_plan(model):
            print(f"  {line}")
        if args.batch is not None:
            for line in describe_memory(model, args.batch):
                print(f"  {line}")
    if args.checkpoint:
        from ..train import apply_pipeline

        circuit = apply_pipeline(circuit, args.pipeline)
        ck = load_checkpoint(args.checkpoint, args.which, circuit)
        st = ck.state
        settings = st.get("settings", {})
        data = st.get("data", {})
        print(f"checkpoint {ck.path}")
        print(f"  epoch       {ck.epoch} (best {st.get('best_epoch')}, best valid {_fmt(st.get('best_valid'))})")
        print(f"  data        {data.get('name')} (fingerprint {str(data.get('fingerprint'))[:12]})")
        if settings:
            print(
                f"  settings    em {settings.get('em')}, batch {settings.get('batch_size')}, step {settings.get('step_size') or 'default'}, pseudocount {settings.get('pseudocount')}, seed {settings.get('seed')}"
                + (f", soften {settings['soften']:g}" if settings.get("soften", 1.0) < 1.0 else "")
                + (f", entropy {settings['entropy']:g}" if settings.get("entropy", 0.0) > 0 else "")
            )
        hist = st.get("history", [])
        if hist:
            h = hist[-1]
            print(
                f"  last epoch  train {_fmt(h.get('train_ll'))}, valid {_fmt(h.get('valid_ll'))}, {h.get('train_time_s', 0):.2f} s"
            )
        if args.save_pcir:
            from ..ir.printer import print_ir

            with open(args.save_pcir, "w") as f:
                f.write(print_ir(ck.apply(circuit)))
            print(f"wrote {args.save_pcir} (the circuit with the parameters of {ck.path})")
    elif args.save_pcir:
        from ..ir.diagnostics import PcirError

        raise PcirError("--save-pcir needs --checkpoint (the parameters to write)")
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"
