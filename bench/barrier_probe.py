"""What a grid-wide barrier costs inside one persistent Triton kernel (the question behind a
one-launch forward): ``P`` programs run ``R`` rounds, each round an arrive (``atomic_add``,
release) and a spin (``atomic_add(0)``, acquire) until all ``P`` have arrived. Prints microseconds
per round for several ``P`` against an empty launch of the same grid.

    python bench/barrier_probe.py [--rounds 200]
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl


@triton.jit
def _rounds(BAR, OUT, R, P, SYNC: tl.constexpr):
    pid = tl.program_id(0)
    seen = 0
    for r in range(R):
        if SYNC:
            tl.debug_barrier()
            tl.atomic_add(BAR, 1, sem="release", scope="gpu")
            target = P * (r + 1)
            seen = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
            while seen < target:
                seen = tl.atomic_add(BAR, 0, sem="acquire", scope="gpu")
            tl.debug_barrier()
    tl.store(OUT + pid, seen)


def timed(fn, iters=20) -> float:
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / iters * 1e3  # us


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(torch.cuda.get_device_name(dev), "SMs", sms)
    R = args.rounds
    for P in (1, 8, 32, sms, 2 * sms):
        bar = torch.zeros(1, dtype=torch.int32, device=dev)
        out = torch.zeros(P, dtype=torch.int32, device=dev)

        def run(sync, P=P, bar=bar, out=out):
            bar.zero_()
            _rounds[(P,)](bar, out, R, P, SYNC=sync, num_warps=4)

        t_sync = timed(lambda: run(True))
        assert int(out.min()) == P * R == int(out.max()), (int(out.min()), int(out.max()), P * R)
        t_none = timed(lambda: run(False))
        print(
            f"P={P:4d}: {t_sync:8.1f} us for {R} rounds ({(t_sync - t_none) / R:.2f} us/round), empty {t_none:.1f} us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
