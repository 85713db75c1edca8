"""Benchmark of msa_fast.ops.hard_concrete against its eager reference and torch.compile(reference).

MOSEI-shaped gates (issue 2 item 7): log_alpha of [256, 3, 50] (batch 256, 3 modalities, 50 steps),
fp32, training with noise generated from a seed, in two variants: ``clamp`` (z = clamp(s̄, 0, 1),
Louizos et al.) and ``threshold 0.5`` (M3SA's hard filter with the straight-through gradient).
Target: the fused C++ kernel's forward+backward at least 2x faster than the eager reference, with no
extra tensor saved for backward (the noise is regenerated from the seed).

Opt-in provider ``torch_rand`` (``--providers msa_fast,reference,torch_compile,torch_rand``): the usual
eager implementation with ``torch.rand_like`` noise — not reproducible across backends, but it shows
what the reference's integer-Philox emulation costs.

    python benchmarks/bench_hard_concrete.py          # default run (~1-2 min on 2 CPU cores)
    python benchmarks/bench_hard_concrete.py --quick  # tiny shapes, a few repeats (smoke test)
    msa-fast bench hard_concrete [same options]

Method, columns and memory measurement: benchmarks/harness.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/bench_hard_concrete.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402

SHAPES = {"mosei_gates": (256, 3, 50)}
QUICK_SHAPES = {"tiny": (3, 3, 7)}
VARIANTS = {"clamp": None, "threshold": 0.5}
SEED = 20240607


def make_cases(shapes, variants, providers, backend: str, dtype: torch.dtype, device: torch.device):
    import msa_fast.ops as ops
    from msa_fast.ops import reference

    cases = []
    for shape in shapes:
        for variant in variants:
            threshold = VARIANTS[variant]

            def make_args(shape=shape):
                return harness.seeded_input(shape, dtype, device), torch.tensor(SEED, dtype=torch.int64)

            def fused(log_alpha, seed, threshold=threshold):
                return ops.hard_concrete(log_alpha, threshold=threshold, training=True, seed=seed, backend=backend)

            def eager(log_alpha, seed, threshold=threshold):
                return reference.hard_concrete(log_alpha, threshold=threshold, training=True, seed=seed)

            def torch_rand(log_alpha, seed, threshold=threshold, beta=2 / 3, gamma=-0.1, zeta=1.1, eps=1e-6):
                # The usual eager implementation (Louizos et al.'s L0 code, M3SA): torch.rand_like noise
                # instead of the reproducible Philox stream; same distribution, not the same draws.
                u = torch.rand_like(log_alpha).clamp(eps, 1 - eps)
                s_bar = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / beta) * (zeta - gamma) + gamma
                soft = s_bar.clamp(0, 1)
                if threshold is None:
                    return soft
                return (s_bar > threshold).to(soft.dtype) + (soft - soft.detach())

            table = {harness.FUSED: fused, "reference": eager}
            if "torch_compile" in providers:
                table["torch_compile"] = harness.compiled(eager)
            table["torch_rand"] = torch_rand
            name = "clamp" if threshold is None else f"threshold {threshold}"
            cases.append(harness.Case(
                kernel="hard_concrete", x_name="shape", x_value=harness.shape_str(shape), make_args=make_args,
                providers={p: table[p] for p in providers}, variant=f"train {name}",
                config={"shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "backend": backend,
                        "training": True, "threshold": threshold, "ste": "clamp", "noise": "philox(seed)",
                        "beta": 2 / 3, "gamma": -0.1, "zeta": 1.1, "device": str(device)}))
    return cases


def main(argv: list[str] | None = None) -> int:
    return harness.bench_main(argv, op="hard_concrete", doc=__doc__, shapes=SHAPES, quick_shapes=QUICK_SHAPES,
                              variants=list(VARIANTS), make_cases=make_cases, repeats=100, warmup=10,
                              extra_providers=["torch_rand"])


if __name__ == "__main__":
    sys.exit(main())
