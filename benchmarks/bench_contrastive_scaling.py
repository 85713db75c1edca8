"""Scaling table of the contrastive losses (issue 3 item 5): time and peak memory from B = 512 to 16,384.

For each loss (``supcon``, ``hycon``; the cases of ``bench_contrastive.py``: 3 views of B utterances,
N = 3B rows, d = 128, fp32, CPU), each B in 512, 1,024, …, 16,384 (N = 1,536 … 49,152) and each provider
— ``reference`` (eager PyTorch), ``torch_compile`` (``torch.compile(reference)``) and ``msa_fast`` (fused,
``--backend``, C++ on CPU) — ONE forward+backward is timed in a FRESH SUBPROCESS, so that no point
inherits another's memory, caches or compiled code, and a point that needs more memory than the machine
has fails on its own instead of taking the machine down:

* The subprocess caps its address space (``resource.setrlimit(RLIMIT_AS)``, ``--mem-cap-gib``, default
  20 GiB of this machine's 24 GiB; set before ``import torch``). The cap is on *virtual* memory, and the
  imports alone map ~3.4 GiB (libtorch), so roughly cap − 3.5 GiB is left for tensors. An allocation beyond
  it fails at once with ``DefaultCPUAllocator: can't allocate memory`` (or ``MemoryError``): the point is
  reported ``out of memory`` instead of swapping or waking the kernel's OOM killer.
* ``--timeout`` seconds per point (default 600, compilation included): the subprocess's process group
  (inductor's compile workers too) is killed and the point reported ``timeout``.
* Once a provider ran out of memory or timed out (or failed) at some B, its larger B are not run
  (``skipped: out of memory at B=…``).

Timing: one untimed warm-up call first (for ``torch_compile`` this first call is the compilation), then
ONE timed forward+backward (``time.perf_counter``; the loss is a scalar, backward with grad 1). The
warm-up is dropped for eager/fused when the call is predicted (from the provider's time at the previous B,
scaled by (B/B_prev)²) to take longer than ``--warmup-max-s`` (default 60 s). ``cpu s`` is the CPU time
of the subprocess during the timed call (all threads, OpenMP spin-waits included). ``compile s`` is the
first call's time minus the timed call's time (the compilation, estimated). Inductor compiles cold: every
point gets a fresh, empty ``TORCHINDUCTOR_CACHE_DIR``. Compiled runs use torch.compile's default donated
buffers (only one backward is run, so ``harness.compiled``'s ``donated_buffer=False`` is undone). One call
per point is exposed to the machine's load: the 1-minute load average before each point is printed and
recorded — on a shared machine read the times with it (peak RSS and out-of-memory status do not depend
on load).

Peak memory is the peak resident set size of the subprocess during the timed call, minus its RSS after
the imports and the input creation (the baseline): ``/proc/self/status`` VmRSS is read as the baseline,
the kernel's high-water mark is reset to the current RSS (``echo 5 > /proc/self/clear_refs``) just
before the timed call, and VmHWM is read after it. So it counts every resident page the call touched
— tensors, allocator slack, glibc heap, OpenMP buffers, and for ``torch_compile`` what the compilation
left resident (also recorded separately as ``rss_residue_mib``) — unlike ``bench_contrastive.py``'s
allocator-event peak, which counts tensor storage only. Memory of child processes (inductor's compile
workers, the C++ compiler) is not included. Where clear_refs cannot be written, the peak is the
process-lifetime ``ru_maxrss`` minus the baseline. For a point that failed, the peak reached before
the failure is recorded.

Rows appended to ``benchmarks/results.csv`` (kernel = the loss, variant ``scaling d=128``, x = ``NxN``,
mode ``full``, one call so p20 = p50 = p80): ``speed`` [ms], ``cpu_time`` [ms], ``peak_rss`` [MiB] and
for ``torch_compile`` ``compile_time`` [ms]; a point that did not finish gets one ``failed`` row [s
until it failed, 0 when skipped] with its status in ``extra_config``.

    python benchmarks/bench_contrastive_scaling.py                   # the full table (20-40 minutes)
    python benchmarks/bench_contrastive_scaling.py --batches 64,128 --providers msa_fast,reference
    msa-fast bench contrastive_scaling --losses supcon --mem-cap-gib 16
"""

from __future__ import annotations

# Only the standard library at module level: the worker subprocess must cap its address space before
# torch is imported; torch and the harness are imported inside the functions.
import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LOSSES = ("supcon", "hycon")
BATCHES = (512, 1024, 2048, 4096, 8192, 16384)
PROVIDERS = ("reference", "torch_compile", "msa_fast")  # harness names, in the order they run per B
LABEL = {"reference": "eager", "torch_compile": "compiled", "msa_fast": "fused"}
D = 128
GIB = 2**30
_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "memoryerror", "bad_alloc", "out of memory",
                "not enough memory")


# ----------------------------------------------------------------------------------------------
# The worker: one (loss, B, provider) point, run as `python bench_contrastive_scaling.py --worker SPEC`.


def _peak_kib(hwm_reset: bool) -> int:
    from benchmarks import harness

    if hwm_reset:
        return harness.proc_status_kib("VmHWM")["VmHWM"]
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _is_oom(text: str) -> bool:
    text = text.lower()
    return any(m in text for m in _OOM_MARKERS)


def _worker(spec: dict) -> None:
    import resource

    cap = int(spec["mem_cap_gib"] * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out_path = Path(spec["out"])
    result: dict = {"status": "error", "phase": "import"}

    def save():
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, out_path)

    save()
    hwm_reset = False
    baseline_kib = 0
    t_phase = time.perf_counter()
    try:
        import torch

        from benchmarks import bench_contrastive, harness

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        result["threads"] = torch.get_num_threads()
        provider = spec["provider"]
        case = bench_contrastive._case(spec["loss"], spec["batch"], [provider], spec["backend"], torch.device("cpu"))
        if provider == "torch_compile":
            from torch._functorch import config as functorch_config

            functorch_config.donated_buffer = True  # torch.compile's default; we run one backward only
        fn = case.providers[provider]
        result.update(phase="inputs", x_value=case.x_value)
        save()
        args = case.make_args()
        leaves = harness._grad_leaves(args)

        def call():
            outs = harness._differentiable_outputs(fn(*args))
            value = float(sum(o.detach().sum() for o in outs))
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            del outs
            harness._clear_grads(leaves)
            return value

        gc.collect()
        base = harness.proc_status_kib("VmRSS", "VmSize")
        baseline_kib = base["VmRSS"]
        result.update(rss_baseline_mib=round(baseline_kib / 1024, 1),
                      vmsize_baseline_mib=round(base["VmSize"] / 1024, 1))
        hwm_reset = harness.reset_rss_peak()
        result["hwm_reset"] = hwm_reset
        if spec["warmup"] or provider == "torch_compile":
            result["phase"] = "first call" + (" (compile)" if provider == "torch_compile" else "")
            save()
            t_phase = time.perf_counter()
            call()
            result["first_call_s"] = round(time.perf_counter() - t_phase, 3)
            result["peak_rss_first_call_mib"] = round((_peak_kib(hwm_reset) - baseline_kib) / 1024, 1)
            gc.collect()
        rss_before = harness.proc_status_kib("VmRSS")["VmRSS"]
        result.update(phase="timed call", rss_residue_mib=round((rss_before - baseline_kib) / 1024, 1))
        save()
        hwm_reset = harness.reset_rss_peak() and hwm_reset
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0 = time.process_time()
        t_phase = time.perf_counter()
        loss = call()
        seconds = time.perf_counter() - t_phase
        cpu = time.process_time() - c0
        peak = _peak_kib(hwm_reset)
        result.update(status="ok", phase="done", seconds=seconds, cpu_seconds=cpu,
                      peak_rss_mib=round((peak - baseline_kib) / 1024, 1),
                      minor_faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, loss=loss)
        if provider == "torch_compile":  # the first call compiled and ran once: compilation ≈ first − timed
            result["compile_s"] = round(result["first_call_s"] - seconds, 3)
    except BaseException as e:  # noqa: BLE001 - every failure is a result of the point
        text = f"{type(e).__name__}: {e}"
        del e  # the traceback holds the frames that hold the big tensors
        gc.collect()
        result.update(status="out of memory" if _is_oom(text) else "error", error=text[-600:],
                      seconds=time.perf_counter() - t_phase)
        try:
            result["peak_rss_mib"] = round((_peak_kib(hwm_reset) - baseline_kib) / 1024, 1)
        except Exception:  # noqa: BLE001
            pass
    save()


# ----------------------------------------------------------------------------------------------
# The parent: run the points, skip after failures, print and record.


def _mem_available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the worker leads its own session: it and its compile workers
    except ProcessLookupError:
        pass


def run_point(loss: str, batch: int, provider: str, *, backend: str, mem_cap_gib: float, timeout: float,
              warmup: bool, threads: int | None) -> dict:
    """Run one point in a fresh subprocess; returns the worker's result plus wall time and status."""
    tmp = Path(tempfile.mkdtemp(prefix="msa_scaling_"))
    try:
        out = tmp / "result.json"
        spec = {"loss": loss, "batch": batch, "provider": provider, "backend": backend, "mem_cap_gib": mem_cap_gib,
                "warmup": warmup, "threads": threads, "out": str(out)}
        env = dict(os.environ)
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")  # cold compile, nothing shared between points
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                          env.get("PYTHONPATH")]))
        log_path = tmp / "stderr.txt"
        t0 = time.perf_counter()
        with open(log_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=env)
            timed_out = False
            rusage = None
            status_code = None
            while True:
                pid, status_code, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - t0 > timeout:
                    timed_out = True
                    _kill_group(proc.pid)
                    _, status_code, rusage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.1)
            proc.returncode = os.waitstatus_to_exitcode(status_code)
            _kill_group(proc.pid)  # leftover compile workers, if any
        wall = time.perf_counter() - t0
        result = json.loads(out.read_text()) if out.exists() else {"status": "error", "phase": "start"}
        result["wall_s"] = round(wall, 2)
        result["child_maxrss_mib"] = round(rusage.ru_maxrss / 1024, 1) if rusage else None
        stderr_tail = log_path.read_text(errors="replace")[-2000:]
        if timed_out:
            result.update(status="timeout", error=f"killed after {timeout:g} s in phase {result.get('phase')!r}")
        elif result.get("status") not in ("ok", "out of memory") and proc.returncode != 0:
            why = (f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}")
            oom = _is_oom(stderr_tail) or proc.returncode == -signal.SIGKILL
            result.update(status="out of memory" if oom else "error",
                          error=f"{why} in phase {result.get('phase')!r}: {stderr_tail[-600:]}")
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _row(loss: str, batch: int, provider: str, metric: str, unit: str, value: float, extra: dict, info) -> dict:
    from benchmarks import harness

    n = 3 * batch
    case = harness.Case(kernel=loss, x_name="rows x cols", x_value=f"{n}x{n}", make_args=lambda: (), providers={},
                        variant=f"scaling d={D}", config={"batch": batch, "d": D, "dtype": "float32", "device": "cpu"})
    return harness._row(case, info, provider, "full", metric, unit, harness.Stats(value, value, value), extra)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        _worker(json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(prog="msa-fast bench contrastive_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default=",".join(LOSSES), help=f"comma list of {', '.join(LOSSES)}")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma list of B (N = 3B rows)")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma list of {', '.join(PROVIDERS)}")
    parser.add_argument("--backend", default="cpp", help="backend of the msa_fast provider")
    parser.add_argument("--mem-cap-gib", type=float, default=20.0, help="RLIMIT_AS of every point's subprocess")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per point, compilation included")
    parser.add_argument("--warmup-max-s", type=float, default=60.0,
                        help="skip the eager/fused warm-up call when the call is predicted to take longer")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every subprocess")
    parser.add_argument("--csv", default=None, help="results file (rows are appended; default benchmarks/results.csv)")
    parser.add_argument("--no-csv", action="store_true", help="do not write the results file")
    args = parser.parse_args(argv)

    from benchmarks import harness

    losses = harness.parse_list(args.losses, list(LOSSES), "loss")
    providers = harness.parse_list(args.providers, list(PROVIDERS), "provider")
    try:
        batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    except ValueError:
        raise SystemExit(f"--batches {args.batches!r}: use a comma list of integers") from None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    info = harness.RunInfo.collect("cpu")
    threads = args.threads or info.threads
    rows, results = [], []
    for loss in losses:
        failed_at: dict[str, str] = {}  # provider -> "out of memory at B=..."
        last: dict[str, tuple[int, float]] = {}  # provider -> (B, seconds) of its last ok point
        for batch in batches:
            for provider in providers:
                load_before, avail = _loadavg(), _mem_available_gib()
                if provider in failed_at:
                    res = {"status": f"skipped: {failed_at[provider]}", "wall_s": 0.0}
                else:
                    warmup = True
                    if provider != "torch_compile" and provider in last:
                        b0, s0 = last[provider]
                        warmup = s0 * (batch / b0) ** 2 <= args.warmup_max_s
                    harness.log(f"{loss} B={batch} N={3 * batch} {LABEL[provider]}: running "
                                f"(load {load_before}, {avail} GiB available)")
                    res = run_point(loss, batch, provider, backend=args.backend, mem_cap_gib=args.mem_cap_gib,
                                    timeout=args.timeout, warmup=warmup, threads=args.threads)
                    res["warmup"] = int(warmup or provider == "torch_compile")
                    if res["status"] == "ok":
                        last[provider] = (batch, res["seconds"])
                    else:
                        failed_at[provider] = f"{res['status']} at B={batch}"
                res.update(loss=loss, batch=batch, n=3 * batch, provider=provider,
                           loadavg_1m=[load_before, _loadavg()], mem_available_gib=avail)
                results.append(res)
                harness.log(f"  -> {res['status']}: time {_fmt(res.get('seconds'))} s, peak RSS "
                            f"{_fmt((res.get('peak_rss_mib') or 0) / 1024, 3)} GiB, wall {res['wall_s']} s"
                            + (f" | {res['error'][:300]}" if res.get("error") else ""))
                extra = {k: res[k] for k in ("status", "warmup", "first_call_s", "compile_s", "rss_baseline_mib",
                                             "vmsize_baseline_mib", "rss_residue_mib", "peak_rss_first_call_mib",
                                             "minor_faults", "loss", "wall_s", "child_maxrss_mib", "loadavg_1m",
                                             "mem_available_gib", "error", "phase", "hwm_reset") if k in res}
                extra.update(backend=args.backend if provider == harness.FUSED else "", mem_cap_gib=args.mem_cap_gib,
                             timeout_s=args.timeout, method="fresh subprocess, 1 timed forward+backward",
                             provider_label=LABEL[provider])
                if provider == "torch_compile":
                    extra["donated_buffer"] = True
                if res["status"] == "ok":
                    rows.append(_row(loss, batch, provider, "speed", "ms", res["seconds"] * 1e3, extra, info))
                    rows.append(_row(loss, batch, provider, "cpu_time", "ms", res["cpu_seconds"] * 1e3, extra, info))
                    rows.append(_row(loss, batch, provider, "peak_rss", "MiB", res["peak_rss_mib"], extra, info))
                    if "compile_s" in res:
                        rows.append(_row(loss, batch, provider, "compile_time", "ms", res["compile_s"] * 1e3, extra,
                                         info))
                else:
                    rows.append(_row(loss, batch, provider, "failed", "s", float(res.get("seconds") or 0.0), extra,
                                     info))

    print(f"contrastive losses, scaling on {info.machine}, {threads} threads, torch {info.torch_version}, commit "
          f"{info.git_commit}, run {info.timestamp}; one forward+backward per point in a fresh subprocess "
          f"(RLIMIT_AS {args.mem_cap_gib:g} GiB, timeout {args.timeout:g} s); peak RSS above the post-setup baseline")
    head = (f"{'loss':<7} {'B':>6} {'N':>6} {'provider':<9} {'time s':>8} {'cpu s':>8} {'compile s':>9} "
            f"{'peak RSS GiB':>12} {'load':>5}  status")
    print(head)
    print("-" * len(head))
    for r in results:
        ok = r["status"] == "ok"
        print(f"{r['loss']:<7} {r['batch']:>6} {r['n']:>6} {LABEL[r['provider']]:<9} "
              f"{_fmt(r.get('seconds')) if ok else '-':>8} {_fmt(r.get('cpu_seconds')) if ok else '-':>8} "
              f"{_fmt(r.get('compile_s')):>9} "
              f"{_fmt(r['peak_rss_mib'] / 1024, 3) if ok else '-':>12} {_fmt(r['loadavg_1m'][0], 1):>5}  {r['status']}")
    print()
    print("RATIOS per B (time: >1 = fused faster; peak RSS: >1 = fused uses less)")
    print(f"{'loss':<7} {'B':>6} {'eager/fused time':>17} {'compiled/fused time':>20} {'eager/fused RSS':>16} "
          f"{'compiled/fused RSS':>19}")
    by_point = {(r["loss"], r["batch"], r["provider"]): r for r in results}
    for loss in losses:
        for batch in batches:
            fused = by_point.get((loss, batch, harness.FUSED))
            cells = []
            for base in ("reference", "torch_compile"):
                other = by_point.get((loss, batch, base))
                for key in ("seconds", "peak_rss_mib"):
                    if other is None or fused is None:
                        cells.append("n/a")
                    elif other["status"] != "ok":
                        cells.append(f"{LABEL[base]} {other['status'].split(' at ')[0].replace('skipped: ', '')}")
                    elif fused["status"] != "ok":
                        cells.append(f"fused {fused['status'].split(' at ')[0]}")
                    else:
                        cells.append(f"{other[key] / max(fused[key], 1e-9):.2f}x")
            print(f"{loss:<7} {batch:>6} {cells[0]:>17} {cells[2]:>20} {cells[1]:>16} {cells[3]:>19}")
    if not args.no_csv and rows:
        path = harness.append_csv(rows, args.csv or harness.DEFAULT_CSV)
        print(f"\n{len(rows)} rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
