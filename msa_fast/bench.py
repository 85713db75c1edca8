"""``msa-fast bench OP``: run ``benchmarks/bench_<OP>.py`` of a source checkout.

The benchmark scripts are not part of the installed package: they live in the repository's
``benchmarks/`` folder, beside ``msa_fast/`` (an editable install or ``PYTHONPATH`` pointing at the
checkout finds them). Each script exposes ``main(argv) -> int``; :func:`run` imports it as
``benchmarks.bench_<OP>`` and calls it.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path


class BenchmarksNotFound(RuntimeError):
    """The benchmarks folder (or the op's script) is not where a source checkout keeps it."""


def benchmarks_dir() -> Path:
    """``<checkout>/benchmarks``, found from the location of the imported msa_fast package."""
    import msa_fast

    path = Path(msa_fast.__file__).resolve().parent.parent / "benchmarks"
    if not (path / "harness.py").is_file():
        raise BenchmarksNotFound(
            f"msa-fast bench needs the repository's benchmarks/ folder, expected at {path} (beside the msa_fast "
            f"package at {Path(msa_fast.__file__).resolve().parent}); it is not shipped in wheels. Run from a "
            "source checkout installed with `pip install -e .` (or with PYTHONPATH pointing at the checkout).")
    return path


def available() -> list[str]:
    """The ops that have a ``bench_<op>.py`` script."""
    return sorted(p.stem[len("bench_"):] for p in benchmarks_dir().glob("bench_*.py"))


def _load(op: str):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", op):
        raise BenchmarksNotFound(f"msa-fast bench: {op!r} is not an op name")
    bench = benchmarks_dir()
    script = bench / f"bench_{op}.py"
    if not script.is_file():
        raise BenchmarksNotFound(f"msa-fast bench: no benchmark for {op!r} ({script} is missing); "
                                 f"available: {', '.join(available()) or 'none'}")
    root = str(bench.parent)
    loaded = sys.modules.get("benchmarks")
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", None) or next(iter(getattr(loaded, "__path__", [])), ""))
        if where.resolve().parent != bench.resolve() and where.resolve() != bench.resolve():
            raise BenchmarksNotFound(f"msa-fast bench: a different 'benchmarks' module is already imported "
                                     f"from {where}; expected {bench}")
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"benchmarks.bench_{op}")


def run(op: str, argv: list[str] | None = None) -> int:
    """Run the benchmark of `op` with command-line arguments `argv`; returns the exit status.

    Raises :class:`BenchmarksNotFound` (a RuntimeError) with an explanation if the benchmarks folder
    or the op's script is missing.
    """
    module = _load(op)
    status = module.main(list(argv or []))
    return int(status or 0)
