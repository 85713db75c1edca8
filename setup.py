"""Builds the one native extension, ``msa_fast._C``, from ``csrc/``.

* CPU kernels (``csrc/cpu/*.cpp``) are always built: C++20 (what torch ≥ 2.14 needs), -O3, OpenMP through ATen's parallel_for.
* CUDA kernels (``csrc/cuda/*.cu``) are added when torch is a CUDA build and nvcc is found.
  ``MSA_FAST_BUILD_CUDA=1`` forces them (the build fails loudly if it cannot), ``=0`` skips them.
  No GPU is needed to compile: the sources compile, link and register their kernels anywhere.
* Toolkit headers the system CUDA lacks (cusparse.h, cublas_v2.h, ... which ATen's CUDA headers
  include) are taken from torch's own ``nvidia-*`` wheels, found through Python, not hard-coded.
  They are searched *after* the system CUDA headers (``-idirafter``), so the wheels only fill gaps
  and never shadow the headers that match nvcc.
* ``TORCH_CUDA_ARCH_LIST`` defaults to a short list (sm_80, sm_90 + PTX) to keep the build lean;
  set it to build for other GPUs.
* ``DEBUG=1`` builds with -O0 -g; release builds drop the -g that Python's CFLAGS add (build time).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _default_cuda_home() -> str | None:
    # torch guesses CUDA_HOME from `which nvcc`; /usr/local/bin/nvcc would make it /usr/local.
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and Path(candidate, "bin", "nvcc").exists():
            return candidate
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


_cuda_home = _default_cuda_home()
if _cuda_home:
    os.environ.setdefault("CUDA_HOME", _cuda_home)
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> bool:
    switch = os.environ.get("MSA_FAST_BUILD_CUDA", "auto").lower()
    possible = torch.version.cuda is not None and _cuda_home is not None
    if switch in ("0", "false", "off", "no"):
        return False
    if switch in ("1", "true", "on", "yes"):
        if not possible:
            sys.exit(
                "MSA_FAST_BUILD_CUDA=1 but the CUDA kernels cannot be built: "
                f"torch.version.cuda={torch.version.cuda!r}, nvcc found={_cuda_home is not None}"
            )
        return True
    return possible


def _nvidia_wheel_includes() -> list[str]:
    """Include folders of torch's nvidia-* wheels (cusparse.h etc. live there, not in the system CUDA)."""
    dirs: list[str] = []
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return dirs
    for base in spec.submodule_search_locations:
        dirs += sorted(str(Path(p)) for p in glob.glob(os.path.join(base, "*", "include")))
    return dirs


def _extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math: no code here reads FP exception flags, and without it GCC cannot turn the
    # selects of the contrastive epilogues into AVX2 blends, so those loops ran scalar (NaN semantics
    # are unchanged: it is not -ffast-math).
    cxx_flags = [*opt, *([] if debug else ["-g0"]), "-fopenmp", "-fno-trapping-math", "-DMSA_FAST_HAS_OPENMP"]
    if not debug and os.environ.get("MSA_FAST_NATIVE", "0") == "1":
        cxx_flags.append("-march=native")
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    include_dirs = [str(ROOT / "csrc")]
    # py_limited_api=True makes torch define Py_LIMITED_API (its minimum CPython, 3.10) itself.
    common = dict(
        name="msa_fast._C",
        include_dirs=include_dirs,
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if _want_cuda():
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        wheel_includes = _nvidia_wheel_includes()
        cxx_flags += [f for d in wheel_includes for f in ("-idirafter", d)]
        nvcc_flags = [*opt, "--expt-relaxed-constexpr", "-DMSA_FAST_WITH_CUDA"]
        nvcc_flags += [f for d in wheel_includes for f in ("-Xcompiler", "-idirafter", "-Xcompiler", d)]
        return CUDAExtension(
            sources=sources,
            extra_compile_args={"cxx": [*cxx_flags, "-DMSA_FAST_WITH_CUDA"], "nvcc": nvcc_flags},
            **common,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx_flags}, **common)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
