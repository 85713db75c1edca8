"""Benchmark of msa_fast.ops.dropout against torch's own dropout, eager and under torch.compile.

Shapes from HyCon's MTE at batch 1,024 (50 steps, d = 50, 5 heads): the attention map
[5,120, 50, 50] (attention dropout 0.5) and the FFN activation [1,024, 50, 200] (ReLU dropout 0.3).
Baselines: here the ``reference`` provider is ``torch.nn.functional.dropout`` (``bernoulli_`` mask,
what a PyTorch model runs) and ``torch_compile`` is the same function under ``torch.compile``
(Inductor's per-element Philox); ``spec_reference`` (opt-in, slow) is the op's pure-PyTorch spec, whose
job is exactness, not speed. Target: the fused C++ forward+backward at least 2x faster than torch's
eager dropout, with no mask saved for backward (it is regenerated from the seed).

    python benchmarks/bench_dropout.py                 # default run (~1 min on 2 CPU cores)
    python benchmarks/bench_dropout.py --quick         # tiny shapes (smoke test)
    msa-fast bench dropout [same options]

Method, columns and memory measurement: benchmarks/harness.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/bench_dropout.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402

SHAPES = {"hycon_attention": (5120, 50, 50), "hycon_ffn": (1024, 50, 200)}
QUICK_SHAPES = {"tiny": (4, 9, 13)}
VARIANTS = {"p=0.5": 0.5, "p=0.3": 0.3}
SEED = 20240607


def make_cases(shapes, variants, providers, backend: str, dtype: torch.dtype, device: torch.device):
    import msa_fast.ops as ops
    from msa_fast.ops import reference

    cases = []
    for shape in shapes:
        for variant in variants:
            p = VARIANTS[variant]

            def make_args(shape=shape):
                return harness.seeded_input(shape, dtype, device), torch.tensor(SEED, dtype=torch.int64)

            def fused(x, seed, p=p):
                return ops.dropout(x, p, seed, backend=backend)

            def torch_eager(x, seed, p=p):
                return torch.nn.functional.dropout(x, p, training=True)

            def spec(x, seed, p=p):
                return reference.dropout(x, p, seed)

            table = {harness.FUSED: fused, "reference": torch_eager, "spec_reference": spec}
            if "torch_compile" in providers:
                table["torch_compile"] = harness.compiled(torch_eager)
            cases.append(harness.Case(
                kernel="dropout", x_name="shape", x_value=harness.shape_str(shape), make_args=make_args,
                providers={p_: table[p_] for p_ in providers}, variant=variant,
                config={"shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "backend": backend,
                        "p": p, "device": str(device), "reference_is": "torch.nn.functional.dropout"}))
    return cases


def main(argv: list[str] | None = None) -> int:
    return harness.bench_main(argv, op="dropout", doc=__doc__, shapes=SHAPES, quick_shapes=QUICK_SHAPES,
                              variants=list(VARIANTS), make_cases=make_cases, repeats=10, warmup=2,
                              extra_providers=("spec_reference",))


if __name__ == "__main__":
    sys.exit(main())
