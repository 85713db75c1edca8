"""Liger-style benchmark harness shared by every msa_fast op (engineering.md §1.4, §6).

A benchmark script describes *cases* (one input shape / op configuration each) and *providers* (callables
computing the same op: ``msa_fast`` = the fused kernel of one backend, ``reference`` = the eager
pure-PyTorch reference, ``torch_compile`` = ``torch.compile(reference)``). :func:`run_case` measures, for
every provider:

* **speed** (metric ``speed``, unit ``ms``) in the modes

  - ``forward``: one forward with autograd recording (the graph is built and dropped);
  - ``backward``: one forward outside the timer, then ``backward(retain_graph=True)`` timed on the
    same graph; input gradients are set to ``None`` between runs (outside the timer);
  - ``full``: forward + backward;
  - ``no_grad_forward`` (opt-in): forward under ``torch.no_grad()``.

  On CUDA the timing is ``triton.testing.do_bench`` with quantiles (0.5, 0.2, 0.8). On CPU (do_bench
  needs a GPU) each call is timed with ``time.perf_counter`` after ``--warmup`` untimed calls,
  ``--repeats`` times, with the Python GC disabled inside the timed loop; the call's output is
  freed after the timer stops. The providers of one case are timed *interleaved* (round robin,
  rotating the order every repeat), so a change in machine load hits every provider alike and the
  ratios of one run stay comparable. p50 / p20 / p80 are the linearly interpolated quantiles of the
  samples (``torch.quantile``'s rule, as do_bench uses). Speed rows also record, in
  ``extra_config``, the minor page faults per call (``getrusage``, outside the timed window — on
  CPU, first touches of freshly mmapped output buffers are often the largest cost) and the 1-minute
  load average before and after timing (on a shared machine, read ratios with it in mind).

* **CPU time** (metric ``cpu_time``, unit ``ms``, CPU only): ``time.process_time`` per call (user +
  system time of all threads of the process, page-fault handling included), from the same calls. With
  ``--threads 1`` it is the work a call does, insensitive to other processes taking the core; with
  more threads it also counts OpenMP spin-waiting. The speed target is judged on wall-clock ``speed``.

* **peak memory** (metric ``memory``, unit ``MiB``): the peak of bytes allocated by the PyTorch allocator
  *during* the measured step, above what was live when the step started (so the inputs, and in
  ``backward`` mode the forward graph, are not counted; what the step allocates and frees — outputs,
  temporaries inside kernels, gradients — is).

  - CUDA: ``torch.cuda.reset_peak_memory_stats()``, then ``max_memory_allocated() − memory_allocated()``.
  - CPU: torch keeps no CPU allocator statistics, so the calls run under
    ``torch.profiler.profile(activities=[CPU], profile_memory=True)``, each inside a
    ``record_function`` marker. With memory profiling on, torch's CPU allocator reports every
    allocation and free (size and timestamp, from any thread — the autograd engine included, and
    buffers a C++ kernel allocates internally through ATen). The events inside a marker's window are
    summed in time order from 0; the peak of the running sum is the result. This counts tensor
    storage only (not allocator slack, not Python objects, not page-level RSS), like the CUDA number.
    It is deterministic for a fixed program, so p20 = p50 = p80 unless allocations vary between runs.

* **tensors saved for backward** (metrics ``saved_tensors`` [count] and ``saved_bytes`` [bytes], mode
  ``forward``): one forward runs under ``torch.autograd.graph.saved_tensors_hooks``; every tensor autograd
  packs is recorded by storage (deduplicated). Saved tensors that share storage with an input of the
  call (e.g. ``x`` or the seed passed in) are free; the rows count the *extra* ones — storages that
  do not belong to an input (a mask, an intermediate, or the output kept alive for backward) — and
  ``extra_config`` also lists the totals including the input aliases.

Every measurement becomes one CSV row (:data:`COLUMNS`) appended to ``benchmarks/results.csv``
(``--overwrite`` starts the file afresh). ``extra_config`` is a JSON object with the shapes, dtype,
threads, backend, the op's variant and allocator-related environment variables.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_CSV = BENCH_DIR / "results.csv"

COLUMNS = ["kernel", "provider", "mode", "metric", "unit", "x_name", "x_value", "p50", "p20", "p80", "extra_config",
           "machine", "threads", "torch_version", "triton_version", "msa_fast_version", "git_commit", "timestamp"]
MODES = ("forward", "backward", "full")
ALL_MODES = (*MODES, "no_grad_forward")
FUSED = "msa_fast"
PROVIDERS = (FUSED, "reference", "torch_compile")
# Environment variables that change allocation cost on CPU; recorded with every row.
_ALLOC_ENV = ("THP_MEM_ALLOC_ENABLE", "LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
              "MALLOC_TOP_PAD_", "OMP_NUM_THREADS", "MSA_FAST_BACKEND")


# ----------------------------------------------------------------------------------------------
# Statistics.


@dataclass(frozen=True)
class Stats:
    p50: float
    p20: float
    p80: float


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (the rule of ``torch.quantile`` / numpy's default)."""
    xs = sorted(samples)
    if not xs:
        raise ValueError("no samples")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def stats(samples: Sequence[float]) -> Stats:
    return Stats(quantile(samples, 0.5), quantile(samples, 0.2), quantile(samples, 0.8))


# ----------------------------------------------------------------------------------------------
# Environment of a run (recorded on every row).


def machine_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cores = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({cores} logical CPUs)"


def git_commit() -> str:
    """Short HEAD of the checkout, with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    try:
        import msa_fast

        msa_fast_version = msa_fast.__version__
    except ImportError:
        msa_fast_version = "none"
    return {"torch_version": torch.__version__, "triton_version": triton_version, "msa_fast_version": msa_fast_version}


@dataclass
class RunInfo:
    """Columns shared by every row of one run."""

    machine: str
    threads: int
    torch_version: str
    triton_version: str
    msa_fast_version: str
    git_commit: str
    timestamp: str
    alloc_env: dict[str, str]

    @classmethod
    def collect(cls, device: torch.device | str = "cpu") -> "RunInfo":
        return cls(machine=machine_name(device), threads=torch.get_num_threads(), **versions(),
                   git_commit=git_commit(),
                   timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   alloc_env={k: os.environ[k] for k in _ALLOC_ENV if k in os.environ})


# ----------------------------------------------------------------------------------------------
# Steps: what one timed call of a provider does in each mode.


def _grad_leaves(args: Iterable[Any]) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def _differentiable_outputs(out: Any) -> list[torch.Tensor]:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]


def _clear_grads(leaves: Sequence[torch.Tensor]) -> None:
    for t in leaves:
        t.grad = None


@dataclass
class Step:
    """One measured call (``run``) and the untimed work before each call (``before``)."""

    run: Callable[[], Any]
    before: Callable[[], None]
    leaves: list[torch.Tensor] = field(default_factory=list)


def make_step(fn: Callable[..., Any], args: Sequence[Any], mode: str) -> Step:
    """The callable timed in `mode`. Upstream gradients are fixed ``randn`` tensors made once here."""
    leaves = _grad_leaves(args)
    if mode not in ALL_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {ALL_MODES}")
    if mode == "no_grad_forward":
        def run_ng():
            with torch.no_grad():
                return fn(*args)

        return Step(run_ng, lambda: None, leaves)
    if mode == "forward":
        return Step(lambda: fn(*args), lambda: None, leaves)
    if not leaves:
        raise ValueError(f"mode {mode!r} needs an input with requires_grad=True")
    probe = _differentiable_outputs(fn(*args))
    if not probe:
        raise ValueError(f"mode {mode!r}: the op returned no output that requires grad")
    grads = [torch.randn_like(o) for o in probe]
    del probe
    _clear_grads(leaves)
    if mode == "full":
        def run_full():
            torch.autograd.backward(_differentiable_outputs(fn(*args)), grads)

        return Step(run_full, lambda: _clear_grads(leaves), leaves)
    outs = _differentiable_outputs(fn(*args))  # the graph the timed backward walks again and again

    def run_bwd():
        torch.autograd.backward(outs, grads, retain_graph=True)

    return Step(run_bwd, lambda: _clear_grads(leaves), leaves)


# ----------------------------------------------------------------------------------------------
# Speed.


def shape_str(shape) -> str:
    """``(256, 500, 74)`` → ``'256x500x74'``: the ``x_value`` of shape-swept cases."""
    return "x".join(str(s) for s in shape)


def seeded_input(shape, dtype: torch.dtype, device, *, requires_grad: bool = True) -> torch.Tensor:
    """The benchmark input of an elementwise op: standard normal from a fixed generator (seed 0), drawn in
    fp32 and cast, so every provider, dtype and run times the same values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


def proc_status_kib(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in KiB (e.g. ``VmRSS``, ``VmHWM``, ``VmSize``); absent keys are left out."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name = line.split(":", 1)[0]
            if name in keys:
                out[name] = int(line.split()[1])
    return out


def reset_rss_peak() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS (Linux ≥ 4.0); False where that
    is not possible. Importing torch peaks far above the RSS it settles at, which would hide a measured
    step's own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _minor_faults() -> int:
    """Minor page faults of this process so far (first touches of freshly mapped memory)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(steps: dict[str, Step], *, device: torch.device | str = "cpu", warmup: int = 5, repeats: int = 20,
               interleave: bool = True, faults: dict[str, float] | None = None,
               cpu_time: dict[str, Stats] | None = None) -> dict[str, Stats]:
    """p50/p20/p80 wall-clock milliseconds per step name (see the module docstring for the method).

    On CPU, `faults` (if given) receives the mean number of minor page faults per call of each step,
    counted outside the timed window, and `cpu_time` the p50/p20/p80 of the process CPU time per call
    (``time.process_time``: all threads, user + system); the output of a call is freed after the timer
    stops.
    """
    device = torch.device(device)
    if device.type == "cuda":
        from triton.testing import do_bench

        out = {}
        for name, step in steps.items():
            q = do_bench(step.run, quantiles=[0.5, 0.2, 0.8], grad_to_none=step.leaves or None)
            out[name] = Stats(*q)
            step.before()
        return out
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name].before()
            steps[name].run()
    if interleave:  # round robin, the starting provider rotating every repeat
        schedule = [n for r in range(repeats) for n in names[r % len(names):] + names[:r % len(names)]]
    else:
        schedule = [n for n in names for _ in range(repeats)]
    samples: dict[str, list[float]] = {n: [] for n in names}
    cpu_samples: dict[str, list[float]] = {n: [] for n in names}
    fault_counts: dict[str, int] = {n: 0 for n in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in schedule:
            step = steps[name]
            step.before()
            f0 = _minor_faults()
            c0 = time.process_time()
            t0 = time.perf_counter()
            out = step.run()
            t1 = time.perf_counter()
            c1 = time.process_time()
            fault_counts[name] += _minor_faults() - f0
            del out
            samples[name].append((t1 - t0) * 1e3)
            cpu_samples[name].append((c1 - c0) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
        for step in steps.values():
            step.before()
    if faults is not None:
        faults.update({n: fault_counts[n] / max(len(samples[n]), 1) for n in names})
    if cpu_time is not None:
        cpu_time.update({n: stats(c) for n, c in cpu_samples.items()})
    return {n: stats(s) for n, s in samples.items()}


# ----------------------------------------------------------------------------------------------
# Peak memory.


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop (and "no GPU") lines to fd 2 from C++; keep them out of the report.

    The captured text is replayed if the block raises, so real errors are not hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            tmp.seek(0)
            sys.stderr.write(tmp.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_MARK = "msa_fast_bench::"


def _cpu_peaks(steps: dict[str, Step], repeats: int) -> dict[str, list[int]]:
    """Peak bytes of every call, all measured in one profiler session (starting one costs ~0.5 s).

    Each call runs inside a ``record_function`` marker; the allocator's memory events that fall inside
    a marker's time window are summed in time order, starting from 0 at the window's start."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    labels: dict[str, str] = {}
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for rep in range(repeats):
            for i, (name, step) in enumerate(steps.items()):
                step.before()
                gc.collect()
                label = f"{_MARK}{i}:{rep}"
                labels[label] = name
                with record_function(label):
                    result = step.run()
                    del result
    events = prof.profiler.kineto_results.events()
    windows = [(e.start_ns(), e.start_ns() + e.duration_ns(), labels[e.name()]) for e in events
               if e.name() in labels]
    if len(windows) != len(labels):
        raise RuntimeError(f"profiler returned {len(windows)} of {len(labels)} measurement windows")
    memory = sorted(((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU))
    peaks: dict[str, list[int]] = {name: [] for name in steps}
    for start, end, name in windows:
        live = peak = 0
        for t, nbytes in memory:
            if start <= t <= end:
                live += nbytes
                peak = max(peak, live)
        peaks[name].append(peak)
    for step in steps.values():
        step.before()
    return peaks


def peak_memory_many(steps: dict[str, Step], *, device: torch.device | str = "cpu", repeats: int = 3
                     ) -> dict[str, Stats]:
    """Peak MiB allocated during one call of each step, above the bytes live before it (module docstring)."""
    device = torch.device(device)
    if device.type != "cuda":
        return {name: stats([b / 2**20 for b in peaks]) for name, peaks in _cpu_peaks(steps, repeats).items()}
    out = {}
    for name, step in steps.items():
        samples = []
        for _ in range(repeats):
            step.before()
            gc.collect()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            result = step.run()
            del result
            torch.cuda.synchronize(device)
            samples.append((torch.cuda.max_memory_allocated(device) - base) / 2**20)
        step.before()
        out[name] = stats(samples)
    return out


def peak_memory(step: Step, *, device: torch.device | str = "cpu", repeats: int = 3) -> Stats:
    """Peak MiB allocated during one call of the step, above the bytes live before it (module docstring)."""
    return peak_memory_many({"step": step}, device=device, repeats=repeats)["step"]


# ----------------------------------------------------------------------------------------------
# Tensors saved for backward.


@dataclass(frozen=True)
class SavedTensors:
    count: int  # distinct storages saved (input aliases included)
    bytes: int
    extra_count: int  # distinct storages saved that belong to no input of the call
    extra_bytes: int
    extra_shapes: tuple[str, ...] = ()


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr()) if s.nbytes() else (str(t.device), id(s))


def saved_tensors(fn: Callable[..., Any], args: Sequence[Any]) -> SavedTensors:
    """What autograd keeps for backward after one forward of ``fn(*args)`` (module docstring)."""
    seen: dict[tuple[str, int], tuple[int, str]] = {}

    def pack(t: torch.Tensor):
        seen.setdefault(_storage_key(t), (t.untyped_storage().nbytes(), f"{tuple(t.shape)}:{t.dtype}"))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    del out
    _clear_grads(_grad_leaves(args))
    inputs = {_storage_key(a) for a in args if isinstance(a, torch.Tensor)}
    extra = {k: v for k, v in seen.items() if k not in inputs}
    return SavedTensors(count=len(seen), bytes=sum(v[0] for v in seen.values()), extra_count=len(extra),
                        extra_bytes=sum(v[0] for v in extra.values()),
                        extra_shapes=tuple(v[1] for v in extra.values()))


# ----------------------------------------------------------------------------------------------
# Providers.


def compiled(fn: Callable[..., Any], **kwargs) -> Callable[..., Any]:
    """``torch.compile(fn)`` with a recompile budget large enough for a sweep of shapes and variants.

    Donated buffers (AOTAutograd reusing saved activations' storage in backward) are turned off: they
    forbid ``backward(retain_graph=True)``, which the ``backward`` mode needs. Rows of this provider
    record ``donated_buffer: false``."""
    from torch._dynamo import config as dynamo_config
    from torch._functorch import config as functorch_config

    functorch_config.donated_buffer = False
    limit_name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit_name, max(64, getattr(dynamo_config, limit_name)))
    return torch.compile(fn, **kwargs)


# ----------------------------------------------------------------------------------------------
# Cases and rows.


@dataclass
class Case:
    """One configuration of an op measured for every provider.

    ``make_args()`` returns fresh arguments (tensors that need gradients have ``requires_grad=True``);
    ``providers`` maps a provider name to a callable taking those arguments.
    """

    kernel: str
    x_name: str
    x_value: str
    make_args: Callable[[], Sequence[Any]]
    providers: dict[str, Callable[..., Any]]
    config: dict[str, Any] = field(default_factory=dict)
    variant: str = ""


def _row(case: Case, info: RunInfo, provider: str, mode: str, metric: str, unit: str, s: Stats,
         extra: dict[str, Any]) -> dict[str, Any]:
    config = {"variant": case.variant, **case.config, "threads": info.threads, **extra}
    if info.alloc_env:
        config["env"] = info.alloc_env
    return {"kernel": case.kernel, "provider": provider, "mode": mode, "metric": metric, "unit": unit,
            "x_name": case.x_name, "x_value": case.x_value, "p50": s.p50, "p20": s.p20, "p80": s.p80,
            "extra_config": json.dumps(config, sort_keys=True), "machine": info.machine, "threads": info.threads,
            "torch_version": info.torch_version, "triton_version": info.triton_version,
            "msa_fast_version": info.msa_fast_version, "git_commit": info.git_commit, "timestamp": info.timestamp}


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def run_case(case: Case, *, modes: Sequence[str] = MODES, warmup: int = 5, repeats: int = 20, mem_repeats: int = 3,
             device: torch.device | str = "cpu", info: RunInfo | None = None, memory: bool = True,
             saved: bool = True, interleave: bool = True, log: Callable[[str], None] | None = None
             ) -> list[dict[str, Any]]:
    """Measure every provider of `case` in every mode; return the CSV rows."""
    info = info or RunInfo.collect(device)
    rows: list[dict[str, Any]] = []
    args = case.make_args()
    provider_extra: dict[str, dict[str, Any]] = {p: {} for p in case.providers}
    if "torch_compile" in provider_extra:
        from torch._functorch import config as functorch_config

        provider_extra["torch_compile"]["donated_buffer"] = bool(functorch_config.donated_buffer)
    # First call of each provider, timed on its own: for torch_compile this is the compilation.
    for name, fn in case.providers.items():
        t0 = time.perf_counter()
        out = fn(*args)
        if "backward" in modes or "full" in modes:
            outs = _differentiable_outputs(out)
            if outs:
                torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        del out
        _clear_grads(_grad_leaves(args))
        provider_extra[name]["first_call_s"] = round(time.perf_counter() - t0, 3)
    for mode in modes:
        if log:
            log(f"  {case.kernel} {case.variant} {case.x_value} {mode}")
        steps = {name: make_step(fn, args, mode) for name, fn in case.providers.items()}
        faults: dict[str, float] = {}
        cpu: dict[str, Stats] = {}
        load_before = _loadavg()
        speed = time_steps(steps, device=device, warmup=warmup, repeats=repeats, interleave=interleave,
                           faults=faults, cpu_time=cpu)
        load = {"loadavg_1m": [load_before, _loadavg()]} if load_before is not None else {}
        for name in case.providers:
            detail = {**provider_extra[name], "repeats": repeats, "warmup": warmup, "interleaved": interleave, **load}
            if name in faults:
                detail["minor_faults_per_call"] = round(faults[name], 1)
            rows.append(_row(case, info, name, mode, "speed", "ms", speed[name], detail))
            if name in cpu:
                rows.append(_row(case, info, name, mode, "cpu_time", "ms", cpu[name], detail))
        if memory:
            peaks = peak_memory_many(steps, device=device, repeats=mem_repeats)
            for name in case.providers:
                rows.append(_row(case, info, name, mode, "memory", "MiB", peaks[name],
                                 {**provider_extra[name], "mem_repeats": mem_repeats}))
        del steps
    if saved:
        for name, fn in case.providers.items():
            st = saved_tensors(fn, args)
            detail = {"saved_total_count": st.count, "saved_total_bytes": st.bytes,
                      "extra_saved_shapes": list(st.extra_shapes)}
            rows.append(_row(case, info, name, "forward", "saved_tensors", "count",
                             Stats(st.extra_count, st.extra_count, st.extra_count), detail))
            rows.append(_row(case, info, name, "forward", "saved_bytes", "bytes",
                             Stats(st.extra_bytes, st.extra_bytes, st.extra_bytes), detail))
    return rows


# ----------------------------------------------------------------------------------------------
# CSV.


def append_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike = DEFAULT_CSV, *, overwrite: bool = False) -> Path:
    """Append rows (or rewrite the file with ``overwrite``); the header is written once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = overwrite or not path.exists() or path.stat().st_size == 0
    if not fresh:
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header != COLUMNS:
            raise ValueError(f"{path} has columns {header}, expected {COLUMNS}; use --overwrite or another --csv")
    with path.open("w" if fresh else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if fresh:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return path


def read_csv(path: str | os.PathLike = DEFAULT_CSV) -> list[dict[str, Any]]:
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("p50", "p20", "p80"):
            r[k] = float(r[k])
    return rows


# ----------------------------------------------------------------------------------------------
# Ratios and tables.


def _variant(row: dict[str, Any]) -> str:
    cfg = row["extra_config"]
    return (json.loads(cfg) if isinstance(cfg, str) else cfg).get("variant", "")


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["kernel"], _variant(row), row["x_value"]


def ratios(rows: Sequence[dict[str, Any]], *, fused: str = FUSED, metric: str = "speed") -> list[dict[str, Any]]:
    """baseline p50 / fused p50 for every (kernel, variant, x, mode) and baseline provider in `rows`.

    > 1 means the fused provider is faster (or, for ``memory``, uses less).
    """
    table: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r["metric"] != metric:
            continue
        table.setdefault((*_key(r), r["mode"]), {})[r["provider"]] = float(r["p50"])
    out = []
    for (kernel, variant, x, mode), by_provider in table.items():
        if fused not in by_provider:
            continue
        for base, value in by_provider.items():
            if base == fused:
                continue
            f = by_provider[fused]
            ratio = value / f if f > 0 else math.inf
            out.append({"kernel": kernel, "variant": variant, "x_value": x, "mode": mode, "baseline": base,
                        "fused_p50": f, "baseline_p50": value, "ratio": ratio})
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (case, mode): p50 [p20, p80] per provider for speed, then memory and saved tensors."""
    providers: list[str] = []
    for r in rows:
        if r["provider"] not in providers:
            providers.append(r["provider"])
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((*_key(r), r["metric"], r["unit"], r["mode"]), {})[r["provider"]] = r
    lines = []
    head = f"{'kernel':<14} {'variant':<20} {'x':<12} {'metric':<19} {'mode':<9}" + "".join(
        f" {p:>26}" for p in providers)
    lines.append(head)
    lines.append("-" * len(head))
    order = {"speed": 0, "cpu_time": 1, "memory": 2, "saved_tensors": 3, "saved_bytes": 4}
    cases = list(dict.fromkeys(k[:3] for k in groups))  # cases in the order they were measured
    for key in sorted(groups, key=lambda k: (cases.index(k[:3]), order.get(k[3], 9),
                                             ALL_MODES.index(k[5]) if k[5] in ALL_MODES else 9)):
        kernel, variant, x, metric, unit, mode = key
        cells = []
        for p in providers:
            r = groups[key].get(p)
            if r is None:
                cells.append(f" {'-':>26}")
            elif metric in ("speed", "cpu_time", "memory"):
                cells.append(f" {_num(r['p50']):>8} [{_num(r['p20'])}, {_num(r['p80'])}]".rjust(27))
            else:
                cells.append(f" {int(float(r['p50'])):>26}")
        lines.append(f"{kernel:<14} {variant:<20} {x:<12} {metric + ' ' + unit:<19} {mode:<9}" + "".join(cells))
    return "\n".join(lines)


def _num(v: float) -> str:
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def format_ratios(ratio_rows: Sequence[dict[str, Any]], *, title: str = "RATIOS (baseline p50 / fused p50; >1 = fused faster)"
                  ) -> str:
    lines = [title, f"{'kernel':<14} {'variant':<20} {'x':<12} {'mode':<9} {'vs':<14} {'fused ms':>10} "
                    f"{'base ms':>10} {'ratio':>7}"]
    cases = list(dict.fromkeys((r["kernel"], r["variant"], r["x_value"]) for r in ratio_rows))
    for r in sorted(ratio_rows, key=lambda r: (cases.index((r["kernel"], r["variant"], r["x_value"])), r["baseline"],
                                               ALL_MODES.index(r["mode"]) if r["mode"] in ALL_MODES else 9)):
        lines.append(f"{r['kernel']:<14} {r['variant']:<20} {r['x_value']:<12} {r['mode']:<9} {r['baseline']:<14} "
                     f"{_num(r['fused_p50']):>10} {_num(r['baseline_p50']):>10} {r['ratio']:>6.2f}x")
    return "\n".join(lines)


def check_target(ratio_rows: Sequence[dict[str, Any]], *, baseline: str = "reference", mode: str = "full",
                 target: float = 2.0) -> tuple[bool, list[str]]:
    """(all pass, one line per case) for ratio >= target against `baseline` in `mode`."""
    lines, ok = [], True
    relevant = [r for r in ratio_rows if r["baseline"] == baseline and r["mode"] == mode]
    for r in relevant:
        passed = r["ratio"] >= target
        ok &= passed
        lines.append(f"  {'PASS' if passed else 'FAIL'}  {r['kernel']} {r['variant']} {r['x_value']}: "
                     f"{r['ratio']:.2f}x vs {baseline} ({mode}), target >= {target:g}x")
    if not relevant:
        ok = False
        lines.append(f"  FAIL  no {mode} ratios against {baseline} were measured")
    return ok, lines


def check_no_extra_saved(rows: Sequence[dict[str, Any]], *, fused: str = FUSED) -> tuple[bool, list[str]]:
    lines, ok = [], True
    for r in rows:
        if r["provider"] == fused and r["metric"] == "saved_tensors":
            n = int(float(r["p50"]))
            ok &= n == 0
            cfg = json.loads(r["extra_config"])
            lines.append(f"  {'PASS' if n == 0 else 'FAIL'}  {r['kernel']} {cfg.get('variant', '')} {r['x_value']}: "
                         f"{n} extra tensor(s) saved for backward (input aliases saved: "
                         f"{cfg['saved_total_count'] - n})")
    return ok, lines


# ----------------------------------------------------------------------------------------------
# Command line shared by the bench_<op>.py scripts.


def add_common_args(parser: argparse.ArgumentParser, *, repeats: int = 20, warmup: int = 5) -> None:
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls per provider and mode (CPU)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls before timing (CPU)")
    parser.add_argument("--mem-repeats", type=int, default=3, help="runs of the peak-memory measurement")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list from {','.join(ALL_MODES)}")
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help=f"comma list of providers to run (default {','.join(PROVIDERS)})")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before measuring")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--csv", default=str(DEFAULT_CSV), help="results file (rows are appended)")
    parser.add_argument("--no-csv", action="store_true", help="do not write the results file")
    parser.add_argument("--overwrite", action="store_true", help="rewrite the results file instead of appending")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-interleave", action="store_true",
                        help="time providers one after another instead of round robin")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if the speed target is missed")


def parse_list(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"unknown {what} {bad or value!r}; choose from {', '.join(allowed)}")
    return items


def setup_run(args: argparse.Namespace) -> tuple[torch.device, RunInfo]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible to torch")
    return device, RunInfo.collect(device)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def report(rows: Sequence[dict[str, Any]], args: argparse.Namespace, *, target: float = 2.0,
           target_baseline: str = "reference", title: str = "") -> int:
    """Print the table, the ratios and the pass/fail lines; write the CSV. Returns the exit status."""
    print(title or "")
    print(format_table(rows))
    print()
    speed = ratios(rows, metric="speed")
    print(format_ratios(speed))
    cpu = ratios(rows, metric="cpu_time")
    if cpu:
        print()
        print(format_ratios(cpu, title="CPU-TIME RATIOS (baseline / fused process CPU time; with 1 thread, robust "
                                       "to other load)").replace("fused ms", "fused cpu").replace(" base ms", "base cpu"))
    mem = ratios(rows, metric="memory")
    if mem:
        print()
        print(format_ratios(mem, title="MEMORY RATIOS (baseline peak MiB / fused peak MiB; >1 = fused uses less)")
              .replace("fused ms", "fused MiB").replace(" base ms", "base MiB"))
    print()
    ok, lines = check_target(speed, baseline=target_baseline, mode="full", target=target)
    print(f"TARGET: fused forward+backward >= {target:g}x faster than the eager {target_baseline}: "
          f"{'PASS' if ok else 'FAIL'}")
    print("\n".join(lines))
    saved_ok, saved_lines = check_no_extra_saved(rows)
    if saved_lines:
        print(f"TARGET: no extra tensor saved for backward by the fused op: {'PASS' if saved_ok else 'FAIL'}")
        print("\n".join(saved_lines))
    if not args.no_csv:
        path = append_csv(rows, args.csv, overwrite=args.overwrite)
        print(f"\n{len(rows)} rows {'written to' if args.overwrite else 'appended to'} {path}")
    return 1 if args.strict and not (ok and saved_ok) else 0


def bench_main(argv: Sequence[str] | None, *, op: str, doc: str, shapes: dict[str, tuple[int, ...]],
               quick_shapes: dict[str, tuple[int, ...]], variants: Sequence[str],
               make_cases: Callable[..., list[Case]], repeats: int, warmup: int, target: float = 2.0,
               extra_providers: Sequence[str] = ()) -> int:
    """The ``main(argv)`` of a ``bench_<op>.py`` script: parse options, run every case, report.

    ``make_cases(shapes, variants, providers, backend, dtype, device)`` builds the op's cases;
    ``extra_providers`` are opt-in providers the script also knows (``--providers`` may name them).
    """
    parser = argparse.ArgumentParser(prog=f"msa-fast bench {op}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, repeats=repeats, warmup=warmup)
    parser.add_argument("--backend", default="cpp", help="backend of the msa_fast provider (cpp on CPU)")
    parser.add_argument("--shapes", default=",".join(shapes),
                        help=f"comma list of named shapes ({', '.join(shapes)}) or shapes written AxBxC")
    parser.add_argument("--variants", default=",".join(variants), help=f"comma list of {', '.join(variants)}")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, 2 repeats, 1 warm-up (smoke test; not a measurement)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.repeats, args.warmup, args.mem_repeats = 2, 1, 1
        chosen = list(quick_shapes.values())
    else:
        try:
            chosen = [shapes[s] if s in shapes else tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        except ValueError:
            raise SystemExit(f"--shapes {args.shapes!r}: use names ({', '.join(shapes)}) or AxBxC") from None
    device, info = setup_run(args)
    providers = parse_list(args.providers, [*PROVIDERS, *extra_providers], "provider")
    modes = parse_list(args.modes, ALL_MODES, "mode")
    chosen_variants = parse_list(args.variants, list(variants), "variant")
    cases = make_cases(chosen, chosen_variants, providers, args.backend, getattr(torch, args.dtype), device)
    rows: list[dict[str, Any]] = []
    for case in cases:
        rows += run_case(case, modes=modes, warmup=args.warmup, repeats=args.repeats, mem_repeats=args.mem_repeats,
                         device=device, info=info, memory=not args.no_memory, interleave=not args.no_interleave,
                         log=log)
    title = (f"{op} on {info.machine}, {info.threads} threads, torch {info.torch_version}, commit {info.git_commit}, "
             f"run {info.timestamp}; "
             f"p50 [p20, p80] of {args.repeats} timed calls after {args.warmup} warm-up calls"
             f"{', providers interleaved' if not args.no_interleave else ''}")
    return report(rows, args, title=title, target=target)
