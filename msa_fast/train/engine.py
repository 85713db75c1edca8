"""The training engine: runs an :class:`~msa_fast.models.base.MSAModel`'s stages on a store.

One :class:`Trainer` is one training run (one seed) in one directory. What the model decides
(models/base.py): the stages (epochs, trainable submodules, minimised loss term, whether the stage
selects on validation), the optimiser parameter groups (separate BERT learning rates), the loss terms,
the per-epoch hook (label banks). What the engine adds, each a tested building block:

* **compiled step**: ``model(batch)`` + ``model.loss_terms(...)`` under ``torch.compile``
  (``fullgraph=True`` first; a graph break falls back to ``fullgraph=False`` with a warning; config
  ``compile=False`` runs eager), optional bf16 autocast (``amp='bf16'``);
* **gradient accumulation** (``grad_accum``; ``accum_scale`` mean|sum; ``accum_partial``
  discard|step for a trailing incomplete group), optional global-norm clipping;
* **optimisers**: ``adamw`` (default) | ``adam`` | ``sgd`` over ``model.param_groups(cfg)``
  restricted to the stage's trainable parameters; schedulers ``linear`` (warm-up for
  ``warmup_ratio`` / ``warmup_steps`` of the planned optimiser steps, then linear decay to 0) and
  ``warmup_constant``;
* **per-batch multi-optimiser updates** (M3SA): a stage whose ``extra['updates']`` is a list of
  ``{'name', 'loss', 'modules' (None: all trainable), 'lr' (optional)}`` gets one optimiser per
  update; every batch, each update's gradient is ``autograd.grad`` of its loss term w.r.t. its
  parameters, all from the same forward (pre-step parameters), then the optimisers step in order;
* optional model hooks besides ``on_epoch_end``: ``on_batch_end(batch, out, stage, epoch)`` after
  the backward of every batch (SUGRM's label update) and ``on_epoch_start(epoch, stage)``; state they
  keep in buffers is checkpointed with the model. ``stage.extra`` may set the stage's ``lr``,
  ``batch_size`` and ``weight_decay`` (passed to ``param_groups``), ``pred`` / ``pred_key`` (the output
  that is evaluated, default ``'pred'``) and ``patience`` / ``early_stop_patience``;
* **evaluation** every epoch on valid with :func:`msa_fast.metrics.compute` (dataset from the store),
  selection on the unrounded validation MAE (improvement > ``select_tol``), early stopping after
  ``patience`` epochs without one, the best weights restored at the end of a selecting stage, and
  the test split evaluated once with them;
* **checkpoints** (:mod:`msa_fast.train.checkpoint`): ``last.pt`` at every epoch end, every
  ``checkpoint_every`` steps, on SIGINT and at ``stop_after_steps``; ``best.pt`` on improvement.
  ``Trainer(..., resume=True)`` continues from ``last.pt`` to the same result as an uninterrupted
  run (exact in eager mode);
* **faults**: a non-finite loss term raises :class:`NonFiniteLoss` naming the step and the term
  (``last.pt`` stays the last good one); SIGINT checkpoints and raises :class:`TrainingInterrupted`;
  a model/store dim mismatch raises before training (``StoreReader.check_dims`` with the model's
  ``expected_dims()`` or ``dims``);
* **logging**: tqdm bars (epochs, batches), ``log.jsonl`` (every ``log_every`` steps: loss terms,
  lr; every epoch: mean train terms, validation metrics, best; the test metrics), optional
  TensorBoard (``tb/``), ``result.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from msa_fast.train.checkpoint import FORMAT, atomic_save, capture_rng, load_checkpoint, restore_rng
from msa_fast.train.configs import ENGINE_DEFAULTS
from msa_fast.train.distributed import (DistContext, ShardedBlockBatchSampler, all_gather_object,
                                        all_reduce_gradients, broadcast_parameters)

__all__ = ["Trainer", "NonFiniteLoss", "TrainingInterrupted", "StopTraining", "seed_everything",
           "environment", "predict", "evaluate_model"]

_METRIC_DATASETS = ("mosi", "mosei", "sims", "simsv2")


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN/inf; training stopped and the last good checkpoint was kept."""


class TrainingInterrupted(Exception):
    """Training stopped on request (SIGINT or ``stop_after_steps``) after writing ``last.pt``."""

    def __init__(self, message: str, checkpoint: Path | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopTraining(Exception):
    """Raise from a hook to stop like SIGINT: checkpoint, then :class:`TrainingInterrupted`."""


# --------------------------------------------------------------------------- helpers


def default_compile_options(device: torch.device) -> dict:
    """Inductor options of the compiled step when the config leaves ``compile_options`` at None.

    CPU: ``pick_loop_orders=False``. Inductor orders a pointwise kernel's loops (and so lays out its
    output) by its inputs' strides, and a broadcast input's stride-0 dimension ranks as innermost: the
    attention scores + key-padding mask ``[B, heads, T, T]`` came out heads-innermost, aten's CPU
    ``bmm`` then split every attention matmul of the backward into one ``mm`` per (sample, head) with a
    copy of each operand (9,216 clones per HyCon fine-tuning step at batch 64), and the compiled step
    was slower than eager. Without the heuristic the buffers stay row-major: bench_train's HyCon
    fine-tuning step went from 3.22 s to 2.82–2.94 s (eager 3.37 s). GPUs keep Inductor's default.
    """
    return {"pick_loop_orders": False} if device.type == "cpu" else {}


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """data.md §4 seeding: random, numpy, torch (+CUDA); deterministic algorithms (warn only)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)


def _git_commit() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Versions, threads, determinism flags, devices and the git commit (saved as ``env.json``)."""
    import platform

    import msa_fast

    env = {
        "python": sys.version.split()[0], "platform": platform.platform(), "hostname": platform.node(),
        "torch": torch.__version__, "numpy": np.__version__,
        "msa_fast": getattr(msa_fast, "__version__", None), "git_commit": _git_commit(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "argv": list(sys.argv),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        env["triton"] = None
    return env


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    if isinstance(x, Path):
        return str(x)
    return x


def _device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def metric_dataset(reader) -> str:
    name = str(reader.meta.get("dataset") or "").lower()
    if name not in _METRIC_DATASETS:
        raise ValueError(f"{reader.path}: dataset {name!r} has no MMSA metric definition "
                         f"(expected one of {list(_METRIC_DATASETS)})")
    return name


def check_model_dims(model, reader) -> None:
    """Raise (``StoreFormatError``, naming file and key) if the model was built for other dims."""
    dims = None
    if callable(getattr(model, "expected_dims", None)):
        dims = model.expected_dims()
    elif isinstance(getattr(model, "dims", None), dict):
        dims = model.dims
    elif hasattr(getattr(model, "dims", None), "d_a"):  # msa_fast.models.configs.DataDims
        d = model.dims
        dims = {"audio": d.d_a, "vision": d.d_v}
        if getattr(d, "d_t", None) is not None and "text_feat" in reader.keys("train"):
            dims["text"] = d.d_t
    if dims:
        allowed = ("audio", "vision", "text", "text_len", "audio_len", "vision_len")
        reader.check_dims(**{k: v for k, v in dims.items() if k in allowed})


def _strip(batch):
    """The batch without its python list of ids (a compiled function would guard on the strings)."""
    return dataclasses.replace(batch, id=[]) if dataclasses.is_dataclass(batch) else batch


def _term_values(terms: dict) -> list[float]:
    """The loss terms as floats with one host sync (a non-scalar term is logged as its mean)."""
    ts = [torch.as_tensor(t).detach().float().mean() for t in terms.values()]
    return torch.stack(ts).cpu().tolist() if ts else []


def _amp_dtype(amp):
    if amp in (None, False, "none", "fp32", "off"):
        return None
    if amp in ("bf16", "bfloat16"):
        return torch.bfloat16
    if amp in ("fp16", "float16"):
        return torch.float16
    raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _collect(model, loader, device, pred_key: str, fwd=None, amp_dtype=None, progress=None):
    was = model.training
    model.eval()
    preds, labels, ids = [], [], []
    try:
        for batch in loader:
            b = batch.to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                out = (fwd or model)(_strip(b))
            if pred_key not in out:
                raise KeyError(f"the model's forward returned no {pred_key!r} (keys: {sorted(out)})")
            preds.append(out[pred_key].detach().float().reshape(-1).cpu())
            labels.append(batch.y.float().reshape(-1))
            ids.extend(batch.id)
            if progress is not None:
                progress.update(1)
    finally:
        model.train(was)
    return torch.cat(preds).numpy(), torch.cat(labels).numpy(), ids


def evaluate_model(model, data, split: str, *, batch_size: int = 64, device="cpu", pred_key: str = "pred",
                   dataset: str | None = None, in_memory: bool = False, text_features=None) -> dict:
    """Metrics (rounded, MMSA) of ``model`` on ``split`` of the store ``data``, plus ``'MAE_raw'``."""
    from msa_fast import metrics
    from msa_fast.data.loader import make_loader
    from msa_fast.data.store import StoreReader

    reader = data if isinstance(data, StoreReader) else StoreReader(data)
    check_model_dims(model, reader)
    loader = make_loader(reader, split, batch_size, shuffle=False, in_memory=in_memory, text_features=text_features)
    p, y, _ = _collect(model, loader, torch.device(device), pred_key)
    ds = dataset or metric_dataset(reader)
    res = metrics.compute(p, y, ds)
    res["MAE_raw"] = metrics.compute(p, y, ds, raw=True)["MAE"]
    return res


def predict(model, data, split: str = "test", *, batch_size: int = 64, device="cpu", pred_key: str = "pred",
            text_features=None) -> tuple[list, np.ndarray, np.ndarray]:
    """``(ids, predictions, labels)`` of ``model`` on ``split`` of the store ``data``."""
    from msa_fast.data.loader import make_loader
    from msa_fast.data.store import StoreReader

    reader = data if isinstance(data, StoreReader) else StoreReader(data)
    check_model_dims(model, reader)
    loader = make_loader(reader, split, batch_size, shuffle=False, text_features=text_features)
    p, y, ids = _collect(model, loader, torch.device(device), pred_key)
    return ids, p, y


# --------------------------------------------------------------------------- trainer


@dataclasses.dataclass
class _Update:
    name: str
    loss: str
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    grads: list | None = None  # accumulated gradient buffers (multi-update stages)


class Trainer:
    """One training run. ``model``: an MSAModel; ``cfg``: resolved config (missing engine keys take
    :data:`ENGINE_DEFAULTS`); ``data``: a store path or ``StoreReader``; ``run_dir``: where
    ``log.jsonl``, ``last.pt``, ``best.pt`` and ``result.json`` go.

    ``resume=True`` continues from ``run_dir/last.pt``. ``hooks``: callables ``hook(trainer, event,
    info)`` with event in {'step', 'epoch', 'stage_end'}; raising :class:`StopTraining` stops like
    SIGINT. ``stop_after_steps``: stop (checkpoint + :class:`TrainingInterrupted`) after that many
    training batches in total (a resumed run counts from the start). ``dist``: a
    :class:`~msa_fast.train.distributed.DistContext` for DDP runs."""

    def __init__(self, model, cfg: dict, data, run_dir, *, seed: int = 1111, resume: bool = False,
                 hooks: list[Callable] | tuple = (), stop_after_steps: int | None = None,
                 dist: DistContext | None = None, handle_sigint: bool = True):
        from msa_fast.data.store import StoreReader

        self.cfg = {**ENGINE_DEFAULTS, **dict(cfg)}
        self.seed = int(seed)
        self.run_dir = Path(run_dir)
        self.dist = dist or DistContext()
        self.is_main = self.dist.is_main
        self.hooks = list(hooks)
        self.stop_after_steps = stop_after_steps
        self.handle_sigint = handle_sigint
        self.device = _device(self.cfg["device"])
        self.reader = data if isinstance(data, StoreReader) else StoreReader(data)
        self.dataset = metric_dataset(self.reader)
        check_model_dims(model, self.reader)   # before anything is trained
        self.model = model.to(self.device)
        self.amp_dtype = _amp_dtype(self.cfg["amp"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.stages = list(model.stages(self.cfg))
        if not self.stages:
            raise ValueError("the model's schedule (stages) is empty")
        self.state = {"stage": 0, "epoch": 0, "step": 0, "opt_steps": 0, "micro": 0, "best_mae": math.inf,
                      "best_epoch": None, "bad_epochs": 0, "epochs_run": 0, "sums": {}, "count": 0,
                      "history": [], "done": False, "stage_best": {}}
        self._interrupt = False
        self._resume_ckpt = None
        self._tb = None
        self._log_fh = None
        self._fwd_cache: dict[int, Callable] = {}
        self._compile_mode: dict[int, str] = {}
        if resume:
            path = self.run_dir / "last.pt"
            if not path.is_file():
                raise FileNotFoundError(f"cannot resume: no checkpoint {path}")
            self._resume_ckpt = load_checkpoint(path)
            if self._resume_ckpt.get("seed") not in (None, self.seed):
                raise ValueError(f"cannot resume {path}: it was written by seed {self._resume_ckpt['seed']}, "
                                 f"not {self.seed}")
        self._build_loaders()

    # -- data -----------------------------------------------------------------------------------------
    def _build_loaders(self):
        from msa_fast.data.loader import BlockBatchSampler, StoreDataset, StoreLoader

        c = self.cfg
        kw = dict(in_memory=bool(c["in_memory"]), text_features=c["text_features"])
        self.train_ds = StoreDataset(self.reader, "train", **kw)
        self.valid_ds = StoreDataset(self.reader, "valid", **kw)
        self.test_ds = StoreDataset(self.reader, "test", **kw)
        self._lkw = dict(num_workers=int(c["num_workers"]), pin_memory=self.device.type == "cuda")
        self.train_loader = None
        self._build_train_loader(int(c["batch_size"]))
        ebs = int(c["eval_batch_size"] or c["batch_size"])
        self.valid_loader = StoreLoader(self.valid_ds, BlockBatchSampler(len(self.valid_ds), ebs), **self._lkw)
        self.test_loader = StoreLoader(self.test_ds, BlockBatchSampler(len(self.test_ds), ebs), **self._lkw)
        # DataLoader draws each iterator's worker base seed from the *global* torch RNG unless it has its own
        # generator: a resumed run (one more iterator mid-epoch) would then shift the dropout stream
        for i, ld in enumerate((self.valid_loader, self.test_loader)):
            ld.dataloader.generator = torch.Generator().manual_seed(self.seed * 3 + 1 + i)

    def _build_train_loader(self, bs: int):
        """The shuffling train loader for (global) batch size ``bs`` (stages may set their own)."""
        from msa_fast.data.loader import BlockBatchSampler, StoreLoader, auto_block_size

        if self.train_loader is not None and self.train_loader.sampler.batch_size == bs:
            return
        c = self.cfg
        block = auto_block_size(self.train_ds, bs) if c["block_size"] == "auto" else int(c["block_size"])
        skw = dict(shuffle=True, seed=self.seed, drop_last=bool(c["drop_last"]), block_size=block)
        if self.dist.enabled:
            sampler = ShardedBlockBatchSampler(len(self.train_ds), bs, rank=self.dist.rank,
                                               world_size=self.dist.world_size, **skw)
        else:
            sampler = BlockBatchSampler(len(self.train_ds), bs, **skw)
        self.train_loader = StoreLoader(self.train_ds, sampler, **self._lkw)
        self.train_loader.dataloader.generator = torch.Generator().manual_seed(self.seed * 3)

    def _stage_cfg(self, stage) -> dict:
        """The config a stage runs with: its ``extra`` may set ``lr`` and ``batch_size`` (MGCL stage 1)."""
        extra = stage.extra if isinstance(stage.extra, dict) else {}
        c = dict(self.cfg)
        for k in ("lr", "batch_size", "weight_decay"):
            if extra.get(k) is not None:
                c[k] = extra[k]
        return c

    @staticmethod
    def _stage_opt(stage, *names, default=None):
        extra = stage.extra if isinstance(stage.extra, dict) else {}
        for n in names:
            if n in extra:
                return extra[n]
        return default

    # -- logging ----------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        if self._log_fh is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.run_dir / "log.jsonl", "a")
        rec = {"time": round(time.time(), 3), "seed": self.seed, **record}
        self._log_fh.write(json.dumps(_jsonable(rec)) + "\n")
        self._log_fh.flush()
        if self.cfg["tensorboard"]:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            step = record.get("step", self.state["step"])
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record.get('event', 'x')}/{k}", v, step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)) and not isinstance(vv, bool):
                            self._tb.add_scalar(f"{record.get('event', 'x')}/{k}/{kk}", vv, step)

    def _bar(self, total, desc, leave=True):
        if not (self.cfg["progress"] and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True, file=sys.stderr)

    # -- stage setup -----------------------------------------------------------------------------------------
    def _module_params(self, names):
        """Parameters (by id) of the named submodules (``None``: all)."""
        if names is None:
            return {id(p) for p in self.model.parameters()}
        ids = set()
        mods = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        for n in names:
            if n in mods:
                ids.update(id(p) for p in mods[n].parameters())
            elif n in params:
                ids.add(id(params[n]))
            else:
                raise ValueError(f"stage names an unknown submodule {n!r} (modules: "
                                 f"{sorted(k for k in mods if k and '.' not in k)})")
        return ids

    def _make_optimizer(self, groups, c):
        name = str(c["optimizer"]).lower()
        kw = {}
        if name in ("adam", "adamw"):
            kw = dict(betas=tuple(c["betas"]), eps=float(c["eps"]))
            cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        elif name == "sgd":
            cls, kw = torch.optim.SGD, dict(momentum=float(c["momentum"]))
        else:
            raise ValueError(f"unknown optimizer {c['optimizer']!r} (adamw, adam, sgd)")
        impl = str(c["optimizer_impl"]).lower()
        if impl == "fused":
            # One kernel per parameter instead of the for-loop's ~7 elementwise passes, each with its own
            # temporary: on CPU the for-loop's temporaries for a 30,522 x 384 word embedding are fresh
            # 47 MB mmaps whose page faults cost more than the arithmetic (HyCon fine-tuning: AdamW step
            # 120 ms for-loop, 23 ms fused).
            kw["fused"] = True
        elif impl != "torch":
            raise ValueError(f"unknown optimizer_impl {c['optimizer_impl']!r} (fused, torch)")
        return cls(groups, lr=float(c["lr"]), **kw)

    def _planned_steps(self, stage) -> int:
        per_epoch = len(self.train_loader) // int(self.cfg["grad_accum"])
        if self.cfg["accum_partial"] == "step" and len(self.train_loader) % int(self.cfg["grad_accum"]):
            per_epoch += 1
        return max(1, per_epoch * self._max_epochs(stage))

    def _make_scheduler(self, opt, stage):
        kind = str(self.cfg["scheduler"]).lower()
        if kind in ("none", "constant"):
            return None
        total = self._planned_steps(stage)
        warm = self.cfg["warmup_steps"]
        warm = int(warm) if warm is not None else int(round(float(self.cfg["warmup_ratio"]) * total))
        if kind == "linear":
            def f(s):
                if s < warm:
                    return (s + 1) / (warm + 1)
                return max(0.0, (total - s) / max(1, total - warm))
        elif kind == "warmup_constant":
            def f(s):
                return (s + 1) / (warm + 1) if s < warm else 1.0
        else:
            raise ValueError(f"unknown scheduler {self.cfg['scheduler']!r} (none, linear, warmup_constant)")
        return torch.optim.lr_scheduler.LambdaLR(opt, f)

    def _setup_stage(self, si: int):
        stage = self.stages[si]
        scfg = self._stage_cfg(stage)
        self._build_train_loader(int(scfg["batch_size"]))
        trainable = self._module_params(stage.trainable)
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trainable)
        groups = self.model.param_groups(scfg)
        seen = set()
        specs = stage.extra.get("updates") if isinstance(stage.extra, dict) else None
        self.updates: list[_Update] = []
        for spec in (specs or [{"name": "main", "loss": stage.loss, "modules": None}]):
            want = self._module_params(spec.get("modules")) & trainable
            gs = []
            for g in groups:
                ps = [p for p in g["params"] if id(p) in want and p.requires_grad]
                if ps:
                    ng = {k: v for k, v in g.items() if k != "params"}
                    if spec.get("lr") is not None:
                        ng["lr"] = float(spec["lr"])
                    gs.append({**ng, "params": ps})
                    seen.update(id(p) for p in ps)
            params = [p for g in gs for p in g["params"]]
            if not params:
                raise ValueError(f"stage {stage.name!r}, update {spec.get('name')!r}: no trainable parameters")
            opt = self._make_optimizer(gs, scfg)
            self.updates.append(_Update(str(spec.get("name", "main")), str(spec.get("loss", stage.loss)), params, opt,
                                        self._make_scheduler(opt, stage), None))
        missing = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing and not specs:
            warnings.warn(f"stage {stage.name!r}: trainable parameters not in any param_groups() group are not "
                          f"optimised: {missing[:5]}{' ...' if len(missing) > 5 else ''}", RuntimeWarning,
                          stacklevel=2)
        self.multi = bool(specs)
        self.model.zero_grad(set_to_none=True)

    def _max_epochs(self, stage) -> int:
        return int(stage.epochs) if stage.epochs is not None else int(
            self.cfg["epochs"] if self.cfg["epochs"] is not None else self.cfg["max_epochs"])

    # -- compiled forward -------------------------------------------------------------------------------------
    def _forward_fn(self, si: int) -> Callable:
        if si in self._fwd_cache:
            return self._fwd_cache[si]
        stage = self.stages[si]
        model, amp, dev = self.model, self.amp_dtype, self.device.type

        def forward_loss(batch):
            with torch.autocast(dev, dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(batch)
                terms = model.loss_terms(batch, out, stage)
            return out, terms

        if not self.cfg["compile"]:
            self._fwd_cache[si] = forward_loss
            self._compile_mode[si] = "eager"
            return forward_loss
        import torch._dynamo as dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, name) and getattr(dynamo.config, name) < 64:
                setattr(dynamo.config, name, 64)
        options = self.cfg["compile_options"]
        options = default_compile_options(self.device) if options is None else dict(options)
        compiled_full = torch.compile(forward_loss, fullgraph=bool(self.cfg["compile_fullgraph"]), options=options)
        state = {"fn": compiled_full, "checked": False}
        # the packed text encoder's kept-row count is data-dependent (text_packing.py): traced as an unbacked
        # size, so one graph serves every batch instead of a graph break (or a recompile per length)
        tracing = dynamo.config.patch(capture_dynamic_output_shape_ops=True)

        def call(batch):
            with tracing:
                return _call(batch)

        def _call(batch):
            if state["checked"]:
                return state["fn"](batch)
            try:
                res = state["fn"](batch)
                self._compile_mode[si] = "fullgraph" if self.cfg["compile_fullgraph"] else "compiled"
            except Exception as e:  # a graph break under fullgraph=True: compile with breaks instead
                if not self.cfg["compile_fullgraph"]:
                    raise
                warnings.warn(f"torch.compile(fullgraph=True) failed for stage {stage.name!r} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); compiling with graph breaks",
                              RuntimeWarning, stacklevel=2)
                dynamo.reset()
                state["fn"] = torch.compile(forward_loss, fullgraph=False, options=options)
                res = state["fn"](batch)
                self._compile_mode[si] = "compiled"
            state["checked"] = True
            return res

        self._fwd_cache[si] = call
        return call

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _engine_state(self):
        return {k: v for k, v in self.state.items()}

    def checkpoint(self, name: str = "last.pt", reason: str = "") -> Path | None:
        rngs = all_gather_object(capture_rng(), self.dist)
        if not self.is_main:
            self.dist.barrier()
            return None
        grads = None
        if self.state["micro"]:
            if self.multi:
                grads = [[None if g is None else g.detach().clone() for g in (u.grads or [])] for u in self.updates]
            else:
                grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}
        ck = {
            "format": FORMAT, "version": 1, "seed": self.seed, "reason": reason,
            "model": self.model.state_dict(),
            "optimizers": [u.optimizer.state_dict() for u in self.updates],
            "schedulers": [u.scheduler.state_dict() if u.scheduler is not None else None for u in self.updates],
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "sampler": self.train_loader.state_dict(),
            "engine": self._engine_state(),
            "grads": grads,
            "config": self.cfg,
        }
        path = atomic_save(ck, self.run_dir / name)
        self.dist.barrier()
        return path

    def _restore(self, ck: dict):
        self.model.load_state_dict(ck["model"])
        self.state.update(ck["engine"])
        self._setup_stage(self.state["stage"])
        for u, s in zip(self.updates, ck["optimizers"]):
            u.optimizer.load_state_dict(s)
        for u, s in zip(self.updates, ck["schedulers"]):
            if u.scheduler is not None and s is not None:
                u.scheduler.load_state_dict(s)
        self.scaler.load_state_dict(ck["scaler"])
        self.train_loader.load_state_dict(ck["sampler"])
        rngs = ck["rng"]
        restore_rng(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        g = ck.get("grads")
        if g is not None:
            if self.multi:
                for u, gl in zip(self.updates, g):
                    u.grads = gl
            else:
                params = dict(self.model.named_parameters())
                for n, t in g.items():
                    params[n].grad = t.to(self.device)

    # -- SIGINT ---------------------------------------------------------------------------------------------------
    def _install_sigint(self):
        if not self.handle_sigint or threading.current_thread() is not threading.main_thread():
            return None
        prev = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self._interrupt = True
            signal.signal(signal.SIGINT, prev if callable(prev) else signal.default_int_handler)
            if self.is_main:
                print("\nSIGINT: finishing the current step, then checkpointing (Ctrl-C again to abort now)",
                      file=sys.stderr, flush=True)

        signal.signal(signal.SIGINT, handler)
        return prev

    # -- the loop ---------------------------------------------------------------------------------------------------
    def _call_hooks(self, event, info):
        for h in self.hooks:
            h(self, event, info)

    def _stop(self, why: str):
        path = self.checkpoint("last.pt", reason=why)
        self.log({"event": "interrupted", "reason": why, "step": self.state["step"], "stage": self.state["stage"],
                  "epoch": self.state["epoch"]})
        raise TrainingInterrupted(f"training stopped ({why}) at step {self.state['step']}; checkpoint "
                                  f"{self.run_dir / 'last.pt'}; continue with --resume {self.run_dir}", path)

    def _optimizer_step(self):
        clip = self.cfg["clip_grad_norm"]
        for u in self.updates:
            if self.multi:
                for p, g in zip(u.params, u.grads or [None] * len(u.params)):
                    p.grad = g
            all_reduce_gradients(u.params, self.dist)
            if self.scaler.is_enabled():
                self.scaler.unscale_(u.optimizer)
            if clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(u.params, float(clip))
            elif self.cfg["nan_check"]:
                norm = torch.nn.utils.get_total_norm([p.grad for p in u.params if p.grad is not None])
            if self.cfg["nan_check"] and not bool(torch.isfinite(norm)):
                self._nonfinite_grad(u)
            if self.scaler.is_enabled():
                self.scaler.step(u.optimizer)
            else:
                u.optimizer.step()
            if u.scheduler is not None:
                u.scheduler.step()
            u.grads = None
        if self.scaler.is_enabled():
            self.scaler.update()
        self.model.zero_grad(set_to_none=True)
        self.state["opt_steps"] += 1

    def _nonfinite_grad(self, u):
        names = {id(p): n for n, p in self.model.named_parameters()}
        bad = [names.get(id(p), "?") for p in u.params if p.grad is not None and not torch.isfinite(p.grad).all()]
        st = self.state
        stage = self.stages[st["stage"]]
        msg = (f"non-finite gradient at step {st['step'] + 1} (stage {stage.name!r}, epoch {st['epoch'] + 1}): "
               f"the gradient of loss term {u.loss!r} is NaN/inf in {len(bad)} parameter(s) ({', '.join(bad[:5])}"
               f"{' ...' if len(bad) > 5 else ''}) although the loss is finite; training stopped, the last good "
               f"checkpoint is {self.run_dir / 'last.pt'}"
               + ("" if (self.run_dir / "last.pt").exists() else " (none was written yet)"))
        self.log({"event": "nonfinite_grad", "step": st["step"] + 1, "loss": u.loss, "params": bad})
        raise NonFiniteLoss(msg)

    def _backward(self, terms, scale):
        if not self.multi:
            loss = terms[self.updates[0].loss] * scale
            self.scaler.scale(loss).backward()
            return
        for i, u in enumerate(self.updates):
            loss = self.scaler.scale(terms[u.loss] * scale)
            gs = torch.autograd.grad(loss, u.params, retain_graph=i < len(self.updates) - 1, allow_unused=True)
            if u.grads is None:
                u.grads = [None if g is None else g.detach() for g in gs]
            else:
                u.grads = [a if g is None else (g.detach() if a is None else a + g) for a, g in zip(u.grads, gs)]

    def _check_finite(self, terms, si, batch_i):
        names = list(terms)
        vals = _term_values(terms)
        bad = [(n, v) for n, v in zip(names, vals) if not math.isfinite(v)]
        if bad:
            stage = self.stages[si]
            msg = (f"non-finite loss at step {self.state['step'] + 1} (stage {stage.name!r}, epoch "
                   f"{self.state['epoch'] + 1}, batch {batch_i + 1}): "
                   + ", ".join(f"term {n!r} = {v}" for n, v in bad)
                   + f"; training stopped, the last good checkpoint is {self.run_dir / 'last.pt'}"
                   + ("" if (self.run_dir / "last.pt").exists() else " (none was written yet)"))
            self.log({"event": "nonfinite", "step": self.state["step"] + 1, "terms": dict(zip(names, vals))})
            raise NonFiniteLoss(msg)
        return dict(zip(names, vals))

    def _train_epoch(self, si: int):
        stage = self.stages[si]
        fwd = self._forward_fn(si)
        accum = int(self.cfg["grad_accum"])
        scale = 1.0 / accum if self.cfg["accum_scale"] == "mean" else 1.0
        n_batches = len(self.train_loader)
        st = self.state
        start = self.train_loader.sampler.position
        bar = self._bar(n_batches, f"{stage.name} epoch {st['epoch'] + 1}", leave=False)
        if bar is not None:
            bar.update(start)
        hook_batch = getattr(self.model, "on_batch_end", None)
        self.model.train()
        try:
            if start < n_batches:
                for bi, batch in enumerate(self.train_loader, start=start):
                    b = batch.to(self.device, non_blocking=True)
                    out, terms = fwd(_strip(b))
                    for u in self.updates:
                        if u.loss not in terms:
                            raise KeyError(f"stage {stage.name!r}: loss_terms returned no {u.loss!r} term "
                                           f"(keys: {sorted(terms)})")
                    vals = self._check_finite(terms, si, bi) if self.cfg["nan_check"] else \
                        dict(zip(terms, _term_values(terms)))
                    self._backward(terms, scale)
                    if callable(hook_batch):
                        hook_batch(b, out, stage, st["epoch"] + 1)
                    st["micro"] += 1
                    last = bi == n_batches - 1
                    if st["micro"] == accum or (last and self.cfg["accum_partial"] == "step"):
                        self._optimizer_step()
                        st["micro"] = 0
                    elif last:  # trailing incomplete group: discarded (SUGRM)
                        self.model.zero_grad(set_to_none=True)
                        for u in self.updates:
                            u.grads = None
                        st["micro"] = 0
                    st["step"] += 1
                    for n, v in vals.items():
                        st["sums"][n] = st["sums"].get(n, 0.0) + v
                    st["count"] += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({stage.loss: f"{vals.get(stage.loss, float('nan')):.4f}"}, refresh=False)
                    if self.cfg["log_every"] and st["step"] % int(self.cfg["log_every"]) == 0:
                        self.log({"event": "step", "stage": stage.name, "epoch": st["epoch"] + 1, "step": st["step"],
                                  "lr": [g["lr"] for u in self.updates for g in u.optimizer.param_groups],
                                  "loss": vals})
                    try:
                        self._call_hooks("step", {"stage": si, "batch": bi, "terms": vals})
                    except StopTraining as e:
                        self._stop(f"stopped by hook: {e}")
                    if self.dist.enabled:  # every rank stops at the same step (torchrun forwards SIGINT to all)
                        flag = torch.tensor([int(self._interrupt)])
                        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                        self._interrupt = bool(flag.item())
                    if self._interrupt:
                        self._stop("SIGINT")
                    if self.stop_after_steps is not None and st["step"] >= self.stop_after_steps:
                        self._stop(f"stop_after_steps={self.stop_after_steps}")
                    ce = self.cfg["checkpoint_every"]
                    if ce and st["step"] % int(ce) == 0 and not last:
                        self.checkpoint("last.pt", reason="periodic")
        finally:
            if bar is not None:
                bar.close()

    def _evaluate(self, loader, si: int):
        from msa_fast import metrics

        stage = self.stages[si]
        key = self._stage_opt(stage, "pred_key", "pred", default="pred")
        p, y, ids = _collect(self.model, loader, self.device, key, amp_dtype=self.amp_dtype)
        res = metrics.compute(p, y, self.dataset)
        raw = metrics.compute(p, y, self.dataset, raw=True)
        return res, raw, p, ids

    def _best_state(self):
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def fit(self) -> dict:
        """Run (or continue) all stages, test with the best weights; returns the per-run record."""
        t0 = time.perf_counter()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        prev = self._install_sigint()
        try:
            if self._resume_ckpt is not None:
                self._restore(self._resume_ckpt)
                self.log({"event": "resume", "step": self.state["step"], "stage": self.state["stage"],
                          "epoch": self.state["epoch"], "position": self.train_loader.sampler.position})
                t0 -= float(self.state.get("wall_time", 0.0))
            else:
                broadcast_parameters(self.model, self.dist)
                self._setup_stage(0)
                self.log({"event": "start", "stages": [dataclasses.asdict(s) for s in self.stages],
                          "params": sum(p.numel() for p in self.model.parameters()),
                          "train_batches": len(self.train_loader)})
            result = self._run(t0)
        finally:
            if prev is not None:
                signal.signal(signal.SIGINT, prev)
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        return result

    def _run(self, t0) -> dict:
        st = self.state
        ebar = None
        while st["stage"] < len(self.stages):
            si = st["stage"]
            stage = self.stages[si]
            max_ep = self._max_epochs(stage)
            patience = self._stage_opt(stage, "patience", "early_stop_patience", default=self.cfg["patience"])
            ebar = self._bar(max_ep, f"stage {stage.name}")
            if ebar is not None:
                ebar.update(st["epoch"])
            while st["epoch"] < max_ep:
                sampler = self.train_loader.sampler
                sampler_epoch = si * 100_000 + st["epoch"]
                if sampler.epoch != sampler_epoch:  # a fresh epoch (a resumed one keeps its position)
                    self.train_loader.set_epoch(sampler_epoch)
                if hasattr(self.model, "on_epoch_start") and sampler.position == 0:
                    self.model.on_epoch_start(st["epoch"] + 1, stage)
                te = time.perf_counter()
                self._train_epoch(si)
                self.model.on_epoch_end(st["epoch"] + 1, stage)
                st["epoch"] += 1
                st["epochs_run"] += 1
                train_means = {k: v / max(1, st["count"]) for k, v in st["sums"].items()}
                st["sums"], st["count"] = {}, 0
                rec = {"event": "epoch", "stage": stage.name, "epoch": st["epoch"], "step": st["step"],
                       "train": train_means, "train_time": time.perf_counter() - te}
                stop = False
                if stage.select_on_valid:
                    res, raw, _, _ = self._evaluate(self.valid_loader, si)
                    mae = float(raw["MAE"])
                    improved = mae < st["best_mae"] - float(self.cfg["select_tol"])
                    if improved:
                        st["best_mae"], st["best_epoch"], st["bad_epochs"] = mae, st["epoch"], 0
                        if self.is_main:
                            atomic_save({"format": FORMAT, "model": self.model.state_dict(), "stage": si,
                                         "epoch": st["epoch"], "valid_mae": mae, "seed": self.seed},
                                        self.run_dir / "best.pt")
                    else:
                        st["bad_epochs"] += 1
                    stop = patience is not None and st["bad_epochs"] >= int(patience)
                    rec.update(valid=res, valid_mae_raw=mae, best_mae=st["best_mae"], best_epoch=st["best_epoch"],
                               improved=improved)
                st["history"].append({"stage": stage.name, "epoch": st["epoch"], "train": train_means,
                                      **({"valid_mae": rec["valid_mae_raw"]} if "valid_mae_raw" in rec else {})})
                st["wall_time"] = time.perf_counter() - t0
                self.log(rec)
                if ebar is not None:
                    ebar.update(1)
                    if "valid_mae_raw" in rec:
                        ebar.set_postfix(valid_mae=f"{rec['valid_mae_raw']:.4f}", best=f"{st['best_mae']:.4f}")
                if stop:
                    st["epoch"] = max_ep  # early stop: the stage is over
                self.checkpoint("last.pt", reason="epoch")
                try:
                    self._call_hooks("epoch", {"stage": si, "epoch": st["epoch"], "record": rec})
                except StopTraining as e:
                    self._stop(f"stopped by hook: {e}")
                if self._interrupt:
                    self._stop("SIGINT")
                if stop:
                    break
            if ebar is not None:
                ebar.close()
            # end of stage: restore the best weights of a selecting stage
            if stage.select_on_valid and st["best_epoch"] is not None:
                best = load_checkpoint(self.run_dir / "best.pt") if self.is_main else None
                best = all_gather_object(best, self.dist)[0] if self.dist.enabled else best
                self.model.load_state_dict(best["model"])
                st["stage_best"][stage.name] = {"epoch": st["best_epoch"], "valid_mae": st["best_mae"]}
            self._call_hooks("stage_end", {"stage": si})
            final_stage = si == len(self.stages) - 1
            if not final_stage:
                st["stage"] += 1
                st["epoch"], st["best_mae"], st["best_epoch"], st["bad_epochs"] = 0, math.inf, None, 0
                self._setup_stage(st["stage"])
                self.checkpoint("last.pt", reason="stage_end")
            else:
                break
        return self._finish(t0)

    def _finish(self, t0) -> dict:
        st = self.state
        si = len(self.stages) - 1
        sel = [i for i, s in enumerate(self.stages) if s.select_on_valid]
        res, raw, preds, ids = self._evaluate(self.test_loader, si)
        wall = time.perf_counter() - t0
        record = {
            "seed": self.seed, "epochs_run": st["epochs_run"], "steps": st["step"], "opt_steps": st["opt_steps"],
            "best_epoch": st["best_epoch"], "best_valid_mae": None if math.isinf(st["best_mae"]) else st["best_mae"],
            "selected_on_valid": bool(sel), "stage_best": st["stage_best"],
            "test": res, "test_raw": raw,
            "dataset": self.dataset, "data_file": os.path.abspath(self.reader.path),
            "data_sha256": file_sha256(self.reader.path),
            "pred_sha256": hashlib.sha256(np.ascontiguousarray(preds, dtype=np.float32).tobytes()).hexdigest(),
            "compile": {self.stages[k].name: v for k, v in self._compile_mode.items()},
            "wall_time": wall, "env": {k: v for k, v in environment().items() if k != "argv"},
        }
        st["done"] = True
        self.log({"event": "test", "step": st["step"], "test": res, "best_epoch": st["best_epoch"],
                  "best_valid_mae": record["best_valid_mae"], "wall_time": wall})
        if self.is_main:
            with open(self.run_dir / "result.json", "w") as fh:
                json.dump(_jsonable(record), fh, indent=1)
            with open(self.run_dir / "test_predictions.csv", "w") as fh:
                fh.write("id,pred\n")
                for i, p in zip(ids, preds.tolist()):
                    fh.write(f"{i},{p:.9g}\n")
        return record
