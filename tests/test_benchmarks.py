"""Smoke tests of the benchmark harness (benchmarks/harness.py) and `msa_fast.bench.run`.

Tiny shapes and 2 repeats: these check the plumbing (modes, CSV columns, ratios, memory and
saved-tensor accounting), not performance.
"""

import csv
import json
import math

import pytest
import torch

from benchmarks import harness
from msa_fast.ops import _dispatch

needs_cpp = pytest.mark.skipif(not _dispatch.native_built(), reason="msa_fast._C is not built")


def _exp_case():
    def make_args():
        return (torch.randn(64, 32, requires_grad=True),)

    return harness.Case(kernel="toy_exp", x_name="n", x_value="64x32", make_args=make_args,
                        providers={harness.FUSED: torch.exp, "reference": lambda x: torch.exp(x.clone())},
                        variant="exp", config={"shape": [64, 32]})


def test_quantiles_follow_torch_quantile():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    t = torch.tensor(xs, dtype=torch.float64)
    for q in (0.2, 0.5, 0.8):
        assert harness.quantile(xs, q) == pytest.approx(float(torch.quantile(t, q)))


def test_run_case_rows_columns_and_ratios(tmp_path):
    rows = harness.run_case(_exp_case(), warmup=1, repeats=2, mem_repeats=1)
    modes = {(r["provider"], r["mode"], r["metric"]) for r in rows}
    for provider in (harness.FUSED, "reference"):
        for mode in harness.MODES:
            assert (provider, mode, "speed") in modes
            assert (provider, mode, "memory") in modes
            assert (provider, mode, "cpu_time") in modes
        assert (provider, "forward", "saved_tensors") in modes
    path = harness.append_csv(rows, tmp_path / "results.csv")
    harness.append_csv(rows, path)  # appending keeps one header
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert header == harness.COLUMNS
    assert len(body) == 2 * len(rows)
    back = harness.read_csv(path)
    for r in back:
        json.loads(r["extra_config"])
        assert r["machine"] and r["torch_version"] == torch.__version__ and int(r["threads"]) >= 1
        assert r["p20"] <= r["p50"] <= r["p80"]
    speed = harness.ratios(back[:len(rows)], metric="speed")
    assert {r["mode"] for r in speed} == set(harness.MODES)
    for r in speed:
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
    with pytest.raises(ValueError, match="columns"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        harness.append_csv(rows, bad)


def test_cpu_peak_memory_counts_the_output():
    x = torch.randn(256, 1024)  # 1 MiB
    step = harness.make_step(lambda t: t * 2, (x,), "forward")
    peak = harness.peak_memory(step, repeats=2)
    assert peak.p50 == pytest.approx(1.0, abs=0.01)
    assert peak.p20 == peak.p50 == peak.p80


def test_saved_tensor_counter_sees_exp_output():
    x = torch.randn(10, 7, requires_grad=True)
    st = harness.saved_tensors(torch.exp, (x,))
    assert st.extra_count == 1 and st.extra_bytes == 10 * 7 * 4  # exp saves its result
    st = harness.saved_tensors(lambda t: t * t, (x,))
    assert st.count == 1 and st.extra_count == 0  # mul saves x itself: an input alias, not extra


@needs_cpp
def test_fused_cutoff_saves_no_extra_tensor():
    from msa_fast import ops

    x = torch.randn(4, 9, 13, requires_grad=True)
    seed = torch.tensor(7)
    fused = harness.saved_tensors(lambda x, s: ops.cutoff(x, 0.2, "feature", s, backend="cpp"), (x, seed))
    assert fused.extra_count == 0 and fused.extra_bytes == 0
    eager = harness.saved_tensors(lambda x, s: ops.reference.cutoff(x, 0.2, "feature", s), (x, seed))
    assert eager.extra_count >= 1  # torch.where keeps its mask


@needs_cpp
@pytest.mark.parametrize("op", ["cutoff", "hard_concrete", "dropout"])
def test_bench_run_quick(op, tmp_path, capsys):
    from msa_fast import bench

    out = tmp_path / "r.csv"
    status = bench.run(op, ["--quick", "--providers", "msa_fast,reference", "--csv", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    assert "RATIOS" in text and "TARGET" in text
    rows = harness.read_csv(out)
    assert {r["kernel"] for r in rows} == {op}
    speed = harness.ratios(rows, metric="speed")
    assert speed and all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in speed)
    saved = [r for r in rows if r["provider"] == harness.FUSED and r["metric"] == "saved_tensors"]
    assert saved and all(r["p50"] == 0 for r in saved)


def test_bench_run_unknown_op():
    from msa_fast import bench

    with pytest.raises(bench.BenchmarksNotFound, match="no benchmark for 'nope'"):
        bench.run("nope", [])


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import plot

    rows = harness.run_case(_exp_case(), warmup=0, repeats=2, mem_repeats=1, modes=("forward",))
    path = harness.append_csv(rows, tmp_path / "r.csv")
    written = plot.plot(harness.read_csv(path), tmp_path / "plots")
    assert written and all(p.suffix == ".png" and p.stat().st_size > 0 for p in written)


def test_cli_bench_unknown_op_is_a_one_line_error(capsys):
    from msa_fast.cli import main

    assert main(["bench", "no_such_op"]) == 1
    assert "no_such_op" in capsys.readouterr().err


@needs_cpp
def test_contrastive_scaling_smoke(tmp_path, capsys):
    """One tiny point per provider, each in its own capped subprocess: the table, ratios and CSV rows."""
    from msa_fast import bench

    out = tmp_path / "r.csv"
    status = bench.run("contrastive_scaling", ["--losses", "supcon", "--batches", "64", "--providers",
                                               "msa_fast,reference", "--mem-cap-gib", "16", "--timeout", "120",
                                               "--csv", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    assert "RATIOS per B" in text and "eager/fused time" in text
    rows = harness.read_csv(out)
    got = {(r["provider"], r["metric"]) for r in rows}
    assert got == {(p, m) for p in ("msa_fast", "reference") for m in ("speed", "cpu_time", "peak_rss")}
    for r in rows:
        cfg = json.loads(r["extra_config"])
        assert cfg["status"] == "ok" and cfg["mem_cap_gib"] == 16 and r["x_value"] == "192x192"
        assert r["p50"] > 0 if r["metric"] != "peak_rss" else r["p50"] >= 0


def test_contrastive_scaling_skips_after_oom(monkeypatch, tmp_path, capsys):
    """A provider that ran out of memory at some B is not run at the larger B (no subprocess here)."""
    from benchmarks import bench_contrastive_scaling as scaling

    calls = []

    def fake_point(loss, batch, provider, **kw):
        calls.append((batch, provider))
        if provider == "reference" and batch >= 128:
            return {"status": "out of memory", "seconds": 0.5, "wall_s": 1.0, "peak_rss_mib": 900.0,
                    "error": "RuntimeError: DefaultCPUAllocator: can't allocate memory"}
        return {"status": "ok", "seconds": 0.01 * batch, "cpu_seconds": 0.02, "peak_rss_mib": 1.0 * batch,
                "wall_s": 1.0}

    monkeypatch.setattr(scaling, "run_point", fake_point)
    out = tmp_path / "r.csv"
    assert scaling.main(["--losses", "supcon", "--batches", "64,128,256", "--providers", "reference,msa_fast",
                         "--csv", str(out)]) == 0
    assert calls == [(64, "reference"), (64, "msa_fast"), (128, "reference"), (128, "msa_fast"), (256, "msa_fast")]
    text = capsys.readouterr().out
    assert "skipped: out of memory at B=128" in text and "eager out of memory" in text
    failed = [json.loads(r["extra_config"])["status"] for r in harness.read_csv(out) if r["metric"] == "failed"]
    assert failed == ["out of memory", "skipped: out of memory at B=128"]


def test_bench_train_smoke(tmp_path, capsys, monkeypatch):
    """bench_train end to end at batch 8 with one step per provider. torch.compile costs minutes here,
    so the compiled provider runs its fused backend eagerly: this checks the plumbing (Trainer setup at
    the multimodal stage, both scenarios and models, phase stamps, CSV rows, ratios, targets)."""
    from benchmarks import bench_train
    from msa_fast import bench

    monkeypatch.setitem(bench_train.PROVIDERS, "compiled_fused", dict(compile=False, backend="auto",
                                                                      dropout_impl="philox",
                                                                      optimizer_impl="fused",
                                                                      text_impl="packed",
                                                                      cmgf_impl="folded"))
    out = tmp_path / "r.csv"
    status = bench.run("train", ["--smoke", "--csv", str(out), "--workdir", str(tmp_path / "w")])
    assert status == 0
    text = capsys.readouterr().out
    assert "THROUGHPUT" in text and "BREAKDOWN" in text and "RATIOS" in text
    assert text.count("TARGET ") == 4
    rows = harness.read_csv(out)
    assert {r["kernel"] for r in rows} == {"train_hycon", "train_mgcl"}
    assert {r["mode"] for r in rows} == set(bench_train.SCENARIOS)
    assert {r["provider"] for r in rows} == set(bench_train.PROVIDERS)
    for r in rows:
        extra = json.loads(r["extra_config"])
        assert extra["stage"] == "multimodal" and extra["batch"] == 8
        assert math.isfinite(r["p50"]) and r["p50"] >= 0
        if r["kernel"] == "train_mgcl":
            assert extra["mgcl_preset"] == "quick" and extra["av_layers"] == 1
    phases = {(r["provider"], json.loads(r["extra_config"])["phase"]) for r in rows if r["metric"] == "phase_time"}
    for ph in ("data", "encoders", "losses", "contrastive_fwd", "backward", "contrastive_bwd", "optimizer"):
        assert ("eager_reference", ph) in phases
    backends = {json.loads(r["extra_config"])["backend"] for r in rows if r["provider"] == "eager_reference"}
    assert backends == {"reference"}
    impls = {(r["provider"], json.loads(r["extra_config"])["text_impl"]) for r in rows}
    assert impls == {("eager_reference", "hf"), ("compiled_fused", "packed")}
    cmgf = {(r["provider"], json.loads(r["extra_config"])["cmgf_impl"]) for r in rows if r["kernel"] == "train_mgcl"}
    assert cmgf == {("eager_reference", "mha"), ("compiled_fused", "folded")}
    assert {r["metric"] for r in rows} >= {"step_time", "throughput", "cpu_time", "compile_time", "phase_time"}
