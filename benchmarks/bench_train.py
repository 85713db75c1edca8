"""Benchmark of full training steps (issue 5 item 8): samples/s of HyCon and MGCL training, eager
pure-PyTorch against the compiled step with the fused contrastive kernels.

What one step is: what the training engine does per batch (msa_fast/train/engine.py,
``Trainer._train_epoch``), driven through a real :class:`~msa_fast.train.engine.Trainer` built as
``msa-fast train`` builds it (``resolve_config`` + the registry's model factory, ``seed_everything``
with deterministic algorithms, the engine's default AdamW, no scheduler, ``nan_check`` on): the batch
is moved to the device and stripped of its ids, ``forward_loss`` = ``model(batch)`` +
``model.loss_terms(batch, out, stage)`` (the engine's ``_forward_fn``), the loss terms are checked
for finiteness (one host sync, ``_check_finite``), ``_backward`` of the stage's loss term,
``_optimizer_step`` (gradient-norm check, ``optimizer.step()``, ``zero_grad``). The stage is the
model's last one, the multimodal stage (HyCon's only stage; MGCL's stage 2, ``loss='total'`` =
``L_pred + α L_con + β L_uni`` with the trainable modules the stage names). Data reading is not part
of the judged step time; it is measured beside it (below).

Providers (timed interleaved in one run, round robin with the starting provider rotating every step,
the Python GC collected before and disabled during each timed step, as benchmarks/harness.py does):

* ``eager_reference``: config ``compile=False``, ``backend='reference'`` (the pure-PyTorch dense
  contrastive losses of msa_fast.ops.reference), ``dropout_impl='torch'`` (torch.nn.Dropout and
  nn.MultiheadAttention's own attention dropout), ``optimizer_impl='torch'`` (torch's default
  AdamW implementation, the for-loop one on CPU), ``text_impl='hf'`` (Hugging Face's forward of the
  text encoder over all 50 positions, padding included) and, for MGCL, ``cmgf_impl='mha'``
  (nn.MultiheadAttention's forward in the fusion): the model and loop as plain PyTorch writes them;
* ``compiled_fused``: config ``compile=True`` (the engine's ``torch.compile(forward_loss,
  fullgraph=True)``, falling back to graph breaks as the engine does; the mode used is recorded),
  ``backend='auto'`` (the fused C++ kernels on CPU; the resolved backend is recorded),
  ``dropout_impl='philox'`` (every dropout mask from msa_fast.ops.dropout, msa_fast/models/dropout.py),
  ``optimizer_impl='fused'`` (the engine's default: torch's fused AdamW kernel), ``text_impl='packed'``
  (the default: a fine-tuned text encoder runs only on the positions the model reads and the valid keys
  they attend to, msa_fast/models/text_packing.py; no effect with cached text features) and, for MGCL,
  ``cmgf_impl='folded'`` (the default: the fusion's one-query attention with the key / value projections
  moved to the query side, msa_fast/models/single_query_attention.py).

Both providers start from the same weights (same seed) and read the same batch sequence.

Scenarios (MOSEI-shaped word-aligned synthetic data from ``write_synthetic_store``: text 50 tokens,
audio 50×74, vision 50×35, cached 768-d ``text_feat``; batches are :class:`~msa_fast.data.loader.Batch`
objects from the engine's own train loader — a ``StoreLoader`` over the HDF5 store, what ``make_loader``
builds, ``num_workers=0``):

* ``cached_b1024``: batch 1,024 with cached text-encoder features (``text_features=True``); target
  compiled_fused ≥ 1.5x eager_reference throughput;
* ``finetune_b64``: batch 64 fine-tuning the packaged text encoder (all-MiniLM-L6-v2, a 6-layer BERT,
  ``text_features=False``); target ≥ 1.2x.

Models use their MOSEI paper configs (``msa_fast.models.configs.CONFIGS``) with the scenario's batch
size and text features. MGCL on MOSEI has 768-d × 3-layer A/V Transformers, which cost minutes per
batch-1,024 step on 2 CPU cores: ``--mgcl-preset quick`` (the default) applies the architecture keys
of ``PRESETS['quick']['mgcl']`` (``av_dim=128, av_heads=4, av_ffn=512, av_layers=1``), ``--mgcl-preset
paper`` keeps the paper's encoders; every row and the report say which was used.

Measurements (per model × scenario × provider): ``--warmup`` untimed steps per provider (compilation
happens in the first one), then ``--steps`` timed steps. Metrics:

* ``step_time`` [ms] and ``throughput`` [samples/s, batch / step time]: p50 [p20, p80] over the timed
  steps, wall clock (``time.perf_counter``); the targets are judged on the throughput ratio of one run;
* ``cpu_time`` [ms]: process CPU time per step (all threads; less sensitive to other load, but it
  counts OpenMP spinning);
* ``first_step_time`` [s]: the first warm-up step; ``compile_time`` [s]: the first step minus the
  steady-state p50 step (for ``compiled_fused``: what Dynamo/Inductor compilation of forward+loss and,
  lazily, of the backward graph costs);
* ``phase_time`` [ms] (phase in ``extra_config``): where a step goes, from ``perf_counter`` stamps at
  the phase boundaries of every timed step (CPU execution is synchronous):
  ``data`` (fetching the next batch from the store through the loader; the same for both providers),
  ``encoders`` (``model(batch)``; eager only), ``losses`` (``loss_terms`` + the finiteness check; eager
  only), ``forward_loss`` (the compiled forward+loss as one phase, compiled only), ``backward``,
  ``optimizer``; for eager_reference also ``contrastive_fwd`` (the contrastive op inside ``losses``)
  and ``contrastive_bwd`` (its backward inside ``backward``, from autograd nodes stamped around the op:
  identity autograd Functions on its inputs and outputs whose backward records the time).
* ``data_throughput`` [samples/s]: the end-to-end rate with synchronous loading (``num_workers=0``),
  batch / (step + data).

The engine runs with ``deterministic=True`` by default (``torch.use_deterministic_algorithms``), which
also fills every uninitialised tensor (``torch.utils.deterministic.fill_uninitialized_memory``); the
benchmark keeps that (``--set deterministic=false`` measures without it). Threads: 1 by default
(``--threads``), because on a machine shared with other jobs two OpenMP threads spend most of a step
waiting for each other whenever one is descheduled (a small Transformer layer measured 12x slower
with 2 threads than with 1 at a load average of 7).

    python benchmarks/bench_train.py              # both models, both scenarios, 5 timed steps each
                                                  # (the fine-tuning ratio moves by ±5 % between runs
                                                  # at 3): ~14 min on a quiet 2-core machine with
                                                  # Inductor's cache warm (a cold compile adds 2-3 min
                                                  # per case)
    python benchmarks/bench_train.py --models hycon --scenarios cached_b1024 --steps 10
    python benchmarks/bench_train.py --mgcl-preset paper --models mgcl --scenarios finetune_b64
    python benchmarks/bench_train.py --smoke                      # tiny batches, 1 step: a plumbing test
    msa-fast bench train [same options]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/bench_train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402

MODELS = ("hycon", "mgcl")
SCENARIOS = {
    "cached_b1024": dict(batch=1024, text_features=True, target=1.5),
    "finetune_b64": dict(batch=64, text_features=False, target=1.2),
}
PROVIDERS = {
    "eager_reference": dict(compile=False, backend="reference", dropout_impl="torch", optimizer_impl="torch",
                            text_impl="hf", cmgf_impl="mha"),
    "compiled_fused": dict(compile=True, backend="auto", dropout_impl="philox", optimizer_impl="fused",
                           text_impl="packed", cmgf_impl="folded"),
}
BASELINE, FUSED = "eager_reference", "compiled_fused"
#: MGCL's architecture keys taken from PRESETS['quick']['mgcl'] with --mgcl-preset quick (its other
#: keys — epochs, lr, compile=False, cached text features — are the quick training run's, not ours).
MGCL_ARCH_KEYS = ("av_dim", "av_heads", "av_ffn", "av_layers")
#: The contrastive method of each model (wrapped on the eager provider to time the op inside a step).
_CONTRASTIVE = {"hycon": ("contrastive_terms", ("x_l", "x_a", "x_v")),
                "mgcl": ("contrastive", ("T_a", "V_a", "A_a", "T_i", "V_i", "A_i"))}
SEED = 1111
PHASE_ORDER = ("data", "encoders", "losses", "contrastive_fwd", "forward_loss", "backward", "contrastive_bwd",
               "optimizer")


# ---------------------------------------------------------------------------- model configs


def mgcl_preset_keys(preset: str) -> dict:
    if preset == "paper":
        return {}
    from msa_fast.models.configs import preset_config

    quick = preset_config("quick", "mgcl")
    return {k: quick[k] for k in MGCL_ARCH_KEYS if k in quick}


def model_config(model: str, scenario: str, provider: str, batch: int, mgcl_preset: str, smoke: bool,
                 overrides=None) -> dict:
    """The resolved run config (engine defaults + the model's MOSEI paper config + the scenario +
    ``--set`` overrides, as ``msa-fast train --set``)."""
    from msa_fast.train.configs import resolve_config
    from msa_fast.train.cli import model_defaults_for

    sc, pv = SCENARIOS[scenario], PROVIDERS[provider]
    mcfg = model_defaults_for(model, "mosei")
    if model == "mgcl":
        mcfg.update(mgcl_preset_keys(mgcl_preset), cmgf_impl=pv["cmgf_impl"])
    mcfg.update(text_features=sc["text_features"], backend=pv["backend"], dropout_impl=pv["dropout_impl"],
                text_impl=pv["text_impl"], batch_size=batch)
    if smoke and not sc["text_features"]:
        mcfg["text_model"] = "random"  # a 2-layer 128-d BERT: the smoke test checks plumbing, not speed
    extra = {"compile": pv["compile"], "optimizer_impl": pv["optimizer_impl"], "progress": False, "log_every": 0,
             "device": "cpu"}
    return resolve_config(model, "mosei", model_cfg=mcfg, extra=extra, overrides=overrides)


# ---------------------------------------------------------------------------- contrastive-op stamps


class _Stamp(torch.autograd.Function):
    """Identity on its tensors; its backward appends ``perf_counter()`` to ``clock``."""

    @staticmethod
    def forward(ctx, clock, *xs):
        ctx.clock = clock
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *grads):
        ctx.clock.append(time.perf_counter())
        return (None, *grads)


def _wrap_contrastive(model, name: str, phases: dict) -> None:
    """Time the model's contrastive method in situ: its forward directly, its backward from two stamps
    (after the op's output gradients are ready, after its input gradients are)."""
    method, keys = _CONTRASTIVE[name]
    orig = getattr(model, method)
    clock_out: list[float] = []
    clock_in: list[float] = []

    def timed(out, y):
        ins = _Stamp.apply(clock_in, *[out[k] for k in keys])
        t0 = time.perf_counter()
        res = orig({**out, **dict(zip(keys, ins))}, y)
        if isinstance(res, tuple):  # hycon: (iamcl, iemcl, scl, extra)
            tensors, rest = list(res[:3]), res[3:]
            tensors = list(_Stamp.apply(clock_out, *tensors))
            res = (*tensors, *rest)
        else:
            res = _Stamp.apply(clock_out, res)[0]
        phases["contrastive_fwd"] = phases.get("contrastive_fwd", 0.0) + time.perf_counter() - t0
        return res

    def bwd_time() -> float | None:
        if not clock_out or not clock_in:
            return None
        dt = clock_in[-1] - clock_out[-1]
        clock_out.clear()
        clock_in.clear()
        return dt

    setattr(model, method, timed)
    model._bench_contrastive_bwd = bwd_time


# ---------------------------------------------------------------------------- one provider's trainer


class Runner:
    """One Trainer (model, optimiser, loader) set up at the model's last stage, stepping as the engine."""

    def __init__(self, model: str, scenario: str, provider: str, store: str, workdir: Path, batch: int,
                 mgcl_preset: str, smoke: bool, overrides=None):
        from msa_fast.data.store import StoreReader
        from msa_fast.train.cli import data_dims, model_factory
        from msa_fast.train.engine import Trainer, seed_everything

        self.name, self.scenario, self.provider, self.batch = model, scenario, provider, batch
        self.compiled = PROVIDERS[provider]["compile"]
        cfg = model_config(model, scenario, provider, batch, mgcl_preset, smoke, overrides)
        self.cfg = cfg
        reader = StoreReader(store)
        seed_everything(SEED, bool(cfg.get("deterministic", True)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the random smoke-test text encoder's warning
            net = model_factory(model, data_dims(reader), "mosei")(cfg)
        self.trainer = tr = Trainer(net, cfg, reader, workdir / f"{model}_{scenario}_{provider}", seed=SEED,
                                    handle_sigint=False)
        self.si = len(tr.stages) - 1
        self.stage = tr.stages[self.si]
        tr.state["stage"] = self.si
        tr._setup_stage(self.si)
        self.fwd = tr._forward_fn(self.si)
        self.phases: dict[str, float] = {}
        if not self.compiled:
            _wrap_contrastive(tr.model, model, self.phases)
        tr.model.train()
        self._batches = self._iterate()
        self.params = sum(p.numel() for p in tr.model.parameters())
        self.trainable = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)

    def _iterate(self):
        loader = self.trainer.train_loader
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    def fetch(self):
        t0 = time.perf_counter()
        b = next(self._batches)
        return b, time.perf_counter() - t0

    def step(self, batch) -> dict[str, float]:
        """One training step on ``batch`` as Trainer._train_epoch does it; returns the phase times (s)."""
        from msa_fast.train.engine import _strip

        tr, si = self.trainer, self.si
        ph = self.phases
        ph.clear()
        t0 = time.perf_counter()
        b = batch.to(tr.device, non_blocking=True)
        sb = _strip(b)
        if self.compiled:
            out, terms = self.fwd(sb)
            self._check(terms)
            t1 = time.perf_counter()
            ph["forward_loss"] = t1 - t0
        else:  # the engine's eager forward_loss, split at the model / loss_terms boundary
            amp, dev = tr.amp_dtype, tr.device.type
            with torch.autocast(dev, dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = tr.model(sb)
                te = time.perf_counter()
                terms = tr.model.loss_terms(sb, out, self.stage)
            self._check(terms)
            t1 = time.perf_counter()
            ph["encoders"], ph["losses"] = te - t0, t1 - te
        tr._backward(terms, 1.0 / int(tr.cfg["grad_accum"]))
        hook = getattr(tr.model, "on_batch_end", None)
        if callable(hook):
            hook(b, out, self.stage, tr.state["epoch"] + 1)
        t2 = time.perf_counter()
        ph["backward"] = t2 - t1
        tr._optimizer_step()
        tr.state["step"] += 1
        ph["optimizer"] = time.perf_counter() - t2
        if not self.compiled:
            bwd = tr.model._bench_contrastive_bwd()
            if bwd is not None:
                ph["contrastive_bwd"] = bwd
        return dict(ph)

    def _check(self, terms):
        tr = self.trainer
        for u in tr.updates:
            if u.loss not in terms:
                raise KeyError(f"stage {self.stage.name!r}: loss_terms returned no {u.loss!r} term")
        if tr.cfg["nan_check"]:
            tr._check_finite(terms, self.si, tr.state["step"])
        else:
            from msa_fast.train.engine import _term_values
            _term_values(terms)

    def describe(self) -> dict:
        c = self.cfg
        d = {"model": self.name, "scenario": self.scenario, "stage": self.stage.name, "stage_index": self.si,
             "stages": [s.name for s in self.trainer.stages], "loss": self.stage.loss, "batch": self.batch,
             "text_features": bool(c["text_features"]), "backend": c["backend"], "compile": bool(c["compile"]),
             "compile_mode": self.trainer._compile_mode.get(self.si, "eager"), "optimizer": c["optimizer"],
             "lr": self.stage.extra.get("lr", c["lr"]), "nan_check": bool(c["nan_check"]),
             "deterministic": bool(c["deterministic"]), "params": self.params, "trainable_params": self.trainable,
             "dropout_impl": c["dropout_impl"], "optimizer_impl": c["optimizer_impl"], "text_impl": c["text_impl"]}
        if self.name == "mgcl":
            d.update({k: c[k] for k in MGCL_ARCH_KEYS}, cmgf_impl=c["cmgf_impl"])
        else:
            d.update(d=c["d"], mte_layers=c["mte_layers"])
        if not c["text_features"]:
            enc = self.trainer.model.text.encoder
            d["text_encoder"] = f"{type(enc).__name__} {enc.config.num_hidden_layers}x{enc.config.hidden_size}"
        return d


# ---------------------------------------------------------------------------- measurement


def resolved_backend(backend: str) -> str:
    from msa_fast.ops import _dispatch

    return _dispatch.resolve("hycon_loss", backend, torch.zeros(2, 2), native_op="hycon_rows",
                             triton_op="hycon_rows_triton")


def _stats(xs):
    return harness.stats(xs) if xs else harness.Stats(float("nan"), float("nan"), float("nan"))


def measure(model: str, scenario: str, store: str, workdir: Path, args) -> dict:
    """Warm-up then ``args.steps`` interleaved timed steps of both providers; per provider: step / CPU /
    data samples and phase samples (seconds)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # every compiled provider starts cold in memory (Inductor's on-disk caches stay)
    counters.clear()
    batch = args.batch or SCENARIOS[scenario]["batch"]
    names = list(args.providers)
    runners = {}
    for p in names:
        t = time.perf_counter()
        runners[p] = Runner(model, scenario, p, store, workdir, batch, args.mgcl_preset, args.smoke, args.set)
        harness.log(f"  {p}: built in {time.perf_counter() - t:.1f} s")
    res = {p: {"step": [], "cpu": [], "data": [], "phases": {}, "first": None} for p in names}
    load0 = os.getloadavg()[0]
    for w in range(args.warmup):
        for p in names:
            b, _ = runners[p].fetch()
            t = time.perf_counter()
            runners[p].step(b)
            dt = time.perf_counter() - t
            if w == 0:
                res[p]["first"] = dt
            harness.log(f"  warm-up {w + 1}/{args.warmup} {p}: {dt:.2f} s")
    compiled = _compile_counters()
    for i in range(args.steps):
        order = names[i % len(names):] + names[:i % len(names)]
        for p in order:
            r = runners[p]
            b, data_s = r.fetch()
            gc.collect()
            gc.disable()
            try:
                c0 = time.process_time()
                t0 = time.perf_counter()
                ph = r.step(b)
                t1 = time.perf_counter()
                c1 = time.process_time()
            finally:
                gc.enable()
            del b
            out = res[p]
            out["step"].append(t1 - t0)
            out["cpu"].append(c1 - c0)
            out["data"].append(data_s)
            for k, v in ph.items():
                out["phases"].setdefault(k, []).append(v)
        harness.log(f"  step {i + 1}/{args.steps}: " + ", ".join(f"{p} {res[p]['step'][-1]:.2f} s" for p in names))
    load1 = os.getloadavg()[0]
    after = _compile_counters()
    compiled["graphs_compiled_in_timed_steps"] = after["unique_graphs"] - compiled["unique_graphs"]
    for p in names:
        res[p]["describe"] = runners[p].describe()
        res[p]["phases"]["data"] = res[p]["data"]
    res["_meta"] = {"batch": batch, "loadavg_1m": [round(load0, 2), round(load1, 2)], "compile": compiled}
    del runners
    gc.collect()
    return res


def _compile_counters() -> dict:
    """Dynamo graphs compiled so far and Inductor's FX-graph cache hits/misses (a warm on-disk cache
    makes a later run's compile_time much shorter)."""
    from torch._dynamo.utils import counters

    ind = counters["inductor"]
    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "fxgraph_cache_hit": int(ind["fxgraph_cache_hit"]), "fxgraph_cache_miss": int(ind["fxgraph_cache_miss"])}


def rows_for(model: str, scenario: str, res: dict, info: harness.RunInfo, args, extra_common: dict) -> list[dict]:
    meta = res["_meta"]
    batch = meta["batch"]
    rows = []
    for p in PROVIDERS:
        if p not in res:
            continue
        r = res[p]
        desc = r["describe"]
        label = f"mgcl_preset={args.mgcl_preset}" if model == "mgcl" else "paper"
        if args.set:
            label += " " + " ".join(args.set)
        base_extra = {**extra_common, **desc, "provider_backend_resolved": resolved_backend(desc["backend"]),
                      "steps": len(r["step"]), "warmup": args.warmup, "loadavg_1m": meta["loadavg_1m"],
                      "variant": label, "interleaved": True}
        if model == "mgcl":
            base_extra["mgcl_preset"] = args.mgcl_preset
        if args.set:
            base_extra["overrides"] = list(args.set)

        def row(metric, unit, s, extra=None, variant=None):
            e = {**base_extra, **(extra or {})}
            if variant:
                e["variant"] = variant
            return {"kernel": f"train_{model}", "provider": p, "mode": scenario, "metric": metric, "unit": unit,
                    "x_name": "batch", "x_value": str(batch), "p50": s.p50, "p20": s.p20, "p80": s.p80,
                    "extra_config": json.dumps(e, sort_keys=True), "machine": info.machine, "threads": info.threads,
                    "torch_version": info.torch_version, "triton_version": info.triton_version,
                    "msa_fast_version": info.msa_fast_version, "git_commit": info.git_commit,
                    "timestamp": info.timestamp}

        step = _stats([t * 1e3 for t in r["step"]])
        rows.append(row("step_time", "ms", step))
        rows.append(row("throughput", "samples/s", _stats([batch / t for t in r["step"]])))
        rows.append(row("cpu_time", "ms", _stats([t * 1e3 for t in r["cpu"]])))
        e2e = [batch / (t + d) for t, d in zip(r["step"], r["data"])]
        rows.append(row("data_throughput", "samples/s", _stats(e2e), {"note": "batch / (step + data), num_workers=0"}))
        first = r["first"]
        if first is not None:
            rows.append(row("first_step_time", "s", harness.Stats(first, first, first)))
            comp = max(0.0, first - step.p50 / 1e3)
            rows.append(row("compile_time", "s", harness.Stats(comp, comp, comp),
                            {"note": "first warm-up step minus the p50 step", **meta["compile"]}))
        for ph in PHASE_ORDER:
            if ph in r["phases"]:
                rows.append(row("phase_time", "ms", _stats([t * 1e3 for t in r["phases"][ph]]), {"phase": ph},
                                variant=f"{label} phase={ph}"))
    return rows


# ---------------------------------------------------------------------------- report


def _get(rows, model, scenario, provider, metric, phase=None):
    for r in rows:
        if (r["kernel"] == f"train_{model}" and r["mode"] == scenario and r["provider"] == provider
                and r["metric"] == metric):
            if phase is None or json.loads(r["extra_config"]).get("phase") == phase:
                return r
    return None


def report(rows: list[dict], cases: list[tuple[str, str]], info, args) -> bool:
    n = harness._num
    print(f"\nTHROUGHPUT (samples/s of full training steps: p50 [p20, p80]; step ms p50; CPU ms p50)")
    print(f"{'model':<6} {'scenario':<13} {'provider':<16} {'samples/s':>28} {'step ms':>10} {'cpu ms':>10} "
          f"{'first s':>8}  stage / compile")
    for model, scenario in cases:
        for p in args.providers:
            t, s = _get(rows, model, scenario, p, "throughput"), _get(rows, model, scenario, p, "step_time")
            c, f = _get(rows, model, scenario, p, "cpu_time"), _get(rows, model, scenario, p, "first_step_time")
            e = json.loads(t["extra_config"])
            print(f"{model:<6} {scenario:<13} {p:<16} {n(t['p50']):>10} [{n(t['p20'])}, {n(t['p80'])}]".ljust(66)
                  + f" {n(s['p50']):>10} {n(c['p50']):>10} {n(f['p50']) if f else '-':>8}  "
                    f"{e['stage']} / {e['compile_mode']} ({e['provider_backend_resolved']})")
    print("\nBREAKDOWN (p50 ms per phase; contrastive_* are inside losses / backward; data is beside the step)")
    print(f"{'model':<6} {'scenario':<13} {'provider':<16}" + "".join(f" {ph:>15}" for ph in PHASE_ORDER)
          + f" {'sum(no data)':>13} {'step':>9}")
    for model, scenario in cases:
        for p in args.providers:
            cells, tot = [], 0.0
            for ph in PHASE_ORDER:
                r = _get(rows, model, scenario, p, "phase_time", ph)
                cells.append(f" {n(r['p50']) if r else '-':>15}")
                if r and ph in ("encoders", "losses", "forward_loss", "backward", "optimizer"):
                    tot += r["p50"]
            s = _get(rows, model, scenario, p, "step_time")
            print(f"{model:<6} {scenario:<13} {p:<16}" + "".join(cells) + f" {n(tot):>13} {n(s['p50']):>9}")
    if BASELINE not in args.providers or FUSED not in args.providers:
        print("\n(one provider only: no ratios)")
        return True
    print(f"\nRATIOS ({BASELINE} p50 step / {FUSED} p50 step = throughput ratio; >1 = {FUSED} faster)")
    print(f"{'model':<6} {'scenario':<13} {'wall ratio':>10} {'cpu ratio':>10} {'target':>7}  loadavg 1m before/after")
    ok_all = True
    lines = []
    for model, scenario in cases:
        sb, sf = _get(rows, model, scenario, BASELINE, "step_time"), _get(rows, model, scenario, FUSED, "step_time")
        cb, cf = _get(rows, model, scenario, BASELINE, "cpu_time"), _get(rows, model, scenario, FUSED, "cpu_time")
        ratio, cratio = sb["p50"] / sf["p50"], cb["p50"] / cf["p50"]
        target = SCENARIOS[scenario]["target"]
        load = json.loads(sf["extra_config"])["loadavg_1m"]
        print(f"{model:<6} {scenario:<13} {ratio:>9.2f}x {cratio:>9.2f}x {target:>6.1f}x  {load}")
        ok = ratio >= target
        ok_all &= ok
        lines.append(f"TARGET {model} {scenario}: {FUSED} >= {target:g}x {BASELINE} throughput: "
                     f"{'PASS' if ok else 'FAIL'} ({ratio:.2f}x)")
    print()
    print("\n".join(lines))
    if args.smoke or args.batch:
        print("(batch sizes overridden: not the issue's measurement)")
    return ok_all


# ---------------------------------------------------------------------------- main


def prepare_store(workdir: Path, batch: int, batches: int) -> tuple[str, dict]:
    """Word-aligned MOSEI-shaped store with cached text features; the train split is ``batches`` full
    batches of the largest batch size (no partial batch: no recompilation for a new shape)."""
    from msa_fast.data.synthetic import write_synthetic_store

    n = batch * batches
    t = time.perf_counter()
    path = write_synthetic_store(workdir / "mosei_aligned_textfeat.h5", "mosei", seed=0, scale=n / 16326,
                                 aligned=True, text_features=True, min_samples=8)
    from msa_fast.data.store import StoreReader

    reader = StoreReader(path)
    got = reader.num_samples("train")
    info = {"train_samples": got, "write_s": round(time.perf_counter() - t, 1),
            "store_mib": round(os.path.getsize(path) / 2**20, 1), "aligned": True,
            "shapes": "text 50 (ids + 768-d text_feat), audio 50x74, vision 50x35",
            "store": "synthetic MOSEI word-aligned, float32, no compression"}
    if got % batch:
        raise RuntimeError(f"synthetic train split has {got} samples, not a multiple of {batch}")
    return path, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msa-fast bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per provider")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per provider (compilation: first)")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma list of {', '.join(PROVIDERS)}")
    parser.add_argument("--mgcl-preset", choices=("quick", "paper"), default="quick",
                        help="quick: MGCL's A/V Transformers from PRESETS['quick'] (128-d, 1 layer); paper: "
                             "768-d x 3 layers (minutes per batch-1024 step on 2 CPU cores)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both providers, as `msa-fast train --set` (e.g. deterministic=false)")
    parser.add_argument("--batch", type=int, default=None, help="override every scenario's batch size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine 2 OpenMP threads wait for each other "
                             "whenever one is descheduled; 0 keeps torch's default)")
    parser.add_argument("--workdir", default=None, help="where the store goes (default: a temp dir, removed)")
    parser.add_argument("--csv", default=str(harness.DEFAULT_CSV), help="results file (rows are appended)")
    parser.add_argument("--no-csv", action="store_true", help="do not write the results file")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if a target is missed")
    parser.add_argument("--smoke", action="store_true",
                        help="batch 8, 1 warm-up + 1 timed step, a random 2-layer text encoder: plumbing only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch = args.batch or 8
        args.steps, args.warmup = min(args.steps, 1), min(args.warmup, 1)
    if args.steps < 1 or args.warmup < 1:
        raise SystemExit("--steps and --warmup must be >= 1 (the first warm-up step compiles)")
    models = harness.parse_list(args.models, list(MODELS), "model")
    scenarios = harness.parse_list(args.scenarios, list(SCENARIOS), "scenario")
    args.providers = harness.parse_list(args.providers, list(PROVIDERS), "provider")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = harness.RunInfo.collect("cpu")
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_train_", dir=os.environ.get("MSA_FAST_BENCH_DIR"))
        workdir = Path(tmp.name)
    try:
        big = max(args.batch or SCENARIOS[s]["batch"] for s in scenarios)
        harness.log(f"preparing the store in {workdir} ...")
        store, store_info = prepare_store(workdir, big, 2)
        harness.log(f"  {store_info['train_samples']} train samples, {store_info['store_mib']} MiB "
                    f"({store_info['write_s']} s)")
        common = {**store_info, "threads": info.threads, "env": info.alloc_env,
                  "native_build": _build_flags()}
        rows, cases = [], []
        t_all = time.perf_counter()
        for scenario in scenarios:
            for model in models:
                harness.log(f"{model} / {scenario} (batch {args.batch or SCENARIOS[scenario]['batch']}):")
                res = measure(model, scenario, store, workdir, args)
                rows += rows_for(model, scenario, res, info, args, common)
                cases.append((model, scenario))
        harness.log(f"measured in {time.perf_counter() - t_all:.0f} s")
        print(f"full training steps on {info.machine}, {info.threads} threads, torch {info.torch_version}, commit "
              f"{info.git_commit}, run {info.timestamp}; {args.steps} timed steps per provider after "
              f"{args.warmup} warm-up step(s), providers interleaved; MGCL preset {args.mgcl_preset!r}; "
              f"1-min load average {os.getloadavg()[0]:.1f}")
        ok = report(rows, cases, info, args)
        if not args.no_csv:
            path = harness.append_csv(rows, args.csv)
            print(f"\n{len(rows)} rows appended to {path}")
        return 1 if (args.strict and not ok) else 0
    finally:
        if tmp is not None:
            tmp.cleanup()


def _build_flags() -> dict:
    try:
        from msa_fast.ops import _dispatch

        return _dispatch.build_info()
    except Exception:  # pragma: no cover
        return {}


if __name__ == "__main__":
    sys.exit(main())
