"""Benchmark of msa_fast.ops.cutoff against its eager reference and torch.compile(reference).

MOSEI-shaped inputs (issue 2 item 7): x of [256, 500, 74] (COVAREP audio, 500 steps) and [32, 50, 768]
(BERT text features, batch 32), fp32; feature mode with ratio 0.2 (MMCL's setting) and token mode.
Target: the fused C++ kernel's forward+backward at least 2x faster than the eager reference, with no
extra tensor saved for backward (the cut is regenerated from the seed).

    python benchmarks/bench_cutoff.py                 # default run (~2 min on 2 CPU cores)
    python benchmarks/bench_cutoff.py --quick         # tiny shapes, a few repeats (smoke test)
    msa-fast bench cutoff [same options]

Method, columns and memory measurement: benchmarks/harness.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/bench_cutoff.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402

SHAPES = {"mosei_audio": (256, 500, 74), "mosei_text": (32, 50, 768)}
QUICK_SHAPES = {"tiny": (4, 9, 13)}
VARIANTS = {"feature": ("feature", 0.2), "token": ("token", 0.2)}
SEED = 20240607


def make_cases(shapes, variants, providers, backend: str, dtype: torch.dtype, device: torch.device):
    import msa_fast.ops as ops
    from msa_fast.ops import reference

    cases = []
    for shape in shapes:
        for variant in variants:
            mode, ratio = VARIANTS[variant]

            def make_args(shape=shape):
                return harness.seeded_input(shape, dtype, device), torch.tensor(SEED, dtype=torch.int64)

            def fused(x, seed, mode=mode, ratio=ratio):
                return ops.cutoff(x, ratio, mode, seed, backend=backend)

            def eager(x, seed, mode=mode, ratio=ratio):
                return reference.cutoff(x, ratio, mode, seed)

            table = {harness.FUSED: fused, "reference": eager}
            if "torch_compile" in providers:
                table["torch_compile"] = harness.compiled(eager)
            cases.append(harness.Case(
                kernel="cutoff", x_name="shape", x_value=harness.shape_str(shape), make_args=make_args,
                providers={p: table[p] for p in providers}, variant=f"{mode} r={ratio}",
                config={"shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "backend": backend,
                        "mode": mode, "ratio": ratio, "device": str(device)}))
    return cases


def main(argv: list[str] | None = None) -> int:
    return harness.bench_main(argv, op="cutoff", doc=__doc__, shapes=SHAPES, quick_shapes=QUICK_SHAPES,
                              variants=list(VARIANTS), make_cases=make_cases, repeats=15, warmup=3)


if __name__ == "__main__":
    sys.exit(main())
