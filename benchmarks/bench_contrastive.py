"""Benchmark of the fused contrastive losses (issue 3 item 5) against eager and compiled PyTorch.

Cases (fp32, CPU):
* ``supcon``: ``supcon_loss`` over 3 views of B utterances (N = 3B rows, default B = 4,096 → N = 12,288),
  d = 128, 7 sentiment classes;
* ``hycon``: ``hycon_loss`` with K = B utterances × 3 modalities (3K = 12,288), d = 128;
* ``mgcl``: ``mgcl_contrastive_loss`` at B/2 utterances with 6 views (3 macro rows × 6 columns per
  utterance: 6,144 × 12,288 at the default), d = 128.

Providers: ``msa_fast`` (fused, ``--backend``), ``reference`` (eager dense), ``torch_compile``
(``torch.compile(reference)``) and ``bare_matmul``: only the GEMMs any implementation needs — the
similarity matrix forward (rows · colsᵀ) and the two backward GEMMs (dS·cols, dSᵀ·rows) — timed in the
same run. Targets (forward+backward, ratios of one run): fused ≥ 3x faster than eager, ≥ 1.5x faster
than compiled, within 1.5x of the bare matmuls (ratio bare/fused ≥ 0.667); loss-side peak memory ≥ 20x
lower than eager. Peak memory is the peak of bytes the PyTorch allocator holds during one
forward+backward above what was live before it (inputs excluded; torch.profiler memory events on CPU),
see harness.py.

    python benchmarks/bench_contrastive.py                  # the issue's sizes (several minutes)
    python benchmarks/bench_contrastive.py --quick          # tiny smoke run
    msa-fast bench contrastive --losses supcon --batch 1024
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402

LOSSES = ("supcon", "hycon", "mgcl")
D = 128


class _BareMatmuls(torch.autograd.Function):
    """rows·colsᵀ forward and the two backward GEMMs with a fixed dense upstream dS (allocated once)."""

    @staticmethod
    def forward(ctx, rows, cols, ds):
        ctx.save_for_backward(rows, cols, ds)
        return (rows @ cols.T)[0, 0]

    @staticmethod
    def backward(ctx, grad):
        rows, cols, ds = ctx.saved_tensors
        return ds @ cols, ds.T @ rows, None


def _case(loss: str, batch: int, providers, backend: str, device) -> harness.Case:
    import msa_fast.ops as ops
    from msa_fast.ops import reference

    g = torch.Generator().manual_seed(0)
    if loss == "supcon":
        n = 3 * batch

        def make_args():
            z = torch.randn(n, D, generator=g).to(device).requires_grad_()
            labels = torch.randint(0, 7, (batch,), generator=g).repeat(3).to(device)
            return z, labels

        fused = lambda z, labels: ops.supcon_loss(z, labels, backend=backend)  # noqa: E731
        eager = lambda z, labels: reference.supcon_loss(z, labels)  # noqa: E731
        shape = (n, n)
        bare_rows = lambda z, labels: (z, z)  # noqa: E731
    elif loss == "hycon":
        n = 3 * batch

        def make_args():
            xs = [torch.randn(batch, D, generator=g).to(device).requires_grad_() for _ in range(3)]
            y = (torch.randint(-18, 19, (batch,), generator=g) / 6.0).to(device)
            return (*xs, y)

        def fused(xl, xa, xv, y):
            return sum(ops.hycon_loss(xl, xa, xv, y, backend=backend))

        def eager(xl, xa, xv, y):
            return sum(reference.hycon_loss(xl, xa, xv, y))

        shape = (n, n)

        def bare_rows(xl, xa, xv, y):
            x = torch.cat([xl, xa, xv])
            return x, x
    else:
        b = batch // 2

        def make_args():
            feats = [torch.randn(b, D, generator=g).to(device).requires_grad_() for _ in range(6)]
            y = (torch.randint(-18, 19, (b,), generator=g) / 6.0).to(device)
            return (*feats, y)

        def fused(t, v, a, ti, vi, ai, y):
            return ops.mgcl_contrastive_loss((t, v, a), (ti, vi, ai), y, backend=backend)

        def eager(t, v, a, ti, vi, ai, y):
            return reference.mgcl_contrastive_loss((t, v, a), (ti, vi, ai), y)

        shape = (3 * b, 6 * b)

        def bare_rows(t, v, a, ti, vi, ai, y):
            rows = torch.cat([t, v, a])
            return rows, torch.cat([rows, ti, vi, ai])

    # The dense dS of the bare GEMMs is rows x cols fp32 (9.7 GB at N = 49,152): allocate it only when that
    # provider is measured, so other scripts (bench_contrastive_scaling) can build large cases without it.
    ds = torch.randn(*shape, generator=g).to(device) if "bare_matmul" in providers else None

    def bare(*args):
        rows, cols = bare_rows(*args)
        return _BareMatmuls.apply(rows, cols, ds)

    table = {harness.FUSED: fused, "reference": eager, "bare_matmul": bare}
    if "torch_compile" in providers:
        table["torch_compile"] = harness.compiled(eager)
    return harness.Case(kernel=loss, x_name="rows x cols", x_value=f"{shape[0]}x{shape[1]}", make_args=make_args,
                        providers={p: table[p] for p in providers}, variant=f"B={batch} d={D}",
                        config={"batch": batch, "d": D, "backend": backend, "device": str(device), "dtype": "float32"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msa-fast bench contrastive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, repeats=3, warmup=1)
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--losses", default=",".join(LOSSES), help=f"comma list of {', '.join(LOSSES)}")
    parser.add_argument("--batch", type=int, default=4096, help="utterances B (supcon/hycon: 3B rows; mgcl: B/2)")
    parser.add_argument("--quick", action="store_true", help="B = 64, 2 repeats: a smoke run, not a measurement")
    parser.set_defaults(modes="full")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.warmup, args.mem_repeats = 64, 2, 1, 1
    device, info = harness.setup_run(args)
    providers = harness.parse_list(args.providers, [*harness.PROVIDERS, "bare_matmul"], "provider")
    if "bare_matmul" not in providers:
        providers.append("bare_matmul")
    modes = harness.parse_list(args.modes, harness.ALL_MODES, "mode")
    rows = []
    for loss in harness.parse_list(args.losses, list(LOSSES), "loss"):
        case = _case(loss, args.batch, providers, args.backend, device)
        rows += harness.run_case(case, modes=modes, warmup=args.warmup, repeats=args.repeats,
                                 mem_repeats=args.mem_repeats, device=device, info=info, memory=not args.no_memory,
                                 interleave=not args.no_interleave, saved=False, log=harness.log)
    title = (f"contrastive losses on {info.machine}, {info.threads} threads, torch {info.torch_version}, commit "
             f"{info.git_commit}; p50 [p20, p80] of {args.repeats} timed calls after {args.warmup} warm-up calls")
    status = harness.report(rows, args, title=title, target=3.0)
    speed = harness.ratios(rows, metric="speed")
    checks = [("torch_compile", 1.5, "faster than torch.compile(reference)"),
              ("bare_matmul", 1 / 1.5, "of the bare matmuls' time (bare/fused; >= 0.667 means within 1.5x)")]
    for baseline, target, what in checks:
        if any(r["baseline"] == baseline for r in speed):
            ok, lines = harness.check_target(speed, baseline=baseline, mode="full", target=target)
            print(f"TARGET: fused forward+backward {what} >= {target:.3g}: {'PASS' if ok else 'FAIL'}")
            print("\n".join(lines))
    memory = harness.ratios(rows, metric="memory")
    if memory:
        ok, lines = harness.check_target(memory, baseline="reference", mode="full", target=20.0)
        print(f"TARGET: loss-side peak memory >= 20x lower than eager: {'PASS' if ok else 'FAIL'}")
        print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
