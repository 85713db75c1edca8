"""The Trainer with the toy model on a tiny synthetic store (eager unless a test says otherwise)."""

import json

import pytest
import torch

from msa_fast.data.store import StoreFormatError
from msa_fast.train.checkpoint import load_checkpoint
from msa_fast.train.engine import NonFiniteLoss, Trainer, TrainingInterrupted, seed_everything
from tests.train.toy_model import ToyModel, toy_for


def _run(store, cfg, run_dir, seed=1111, **kw):
    seed_everything(seed)
    model_kw = {k: kw.pop(k) for k in list(kw) if k in ("dropout", "pretrain_epochs", "nan_at_step", "updates",
                                                                "nan_grad")}
    model = toy_for(store, **model_kw)
    tr = Trainer(model, cfg, store, run_dir, seed=seed, **kw)
    return tr, tr.fit()


def _records(run_dir):
    return [json.loads(line) for line in open(run_dir / "log.jsonl")]


def test_fit_two_stages_logs_and_files(store, cfg, tmp_path):
    seen = {}

    def hook(tr, event, info):
        if event == "stage_end" and info["stage"] == 0:
            seen["after_stage0"] = {k: v.clone() for k, v in tr.model.state_dict().items()}

    seed_everything(1111)
    model = toy_for(store)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    tr = Trainer(model, cfg, store, tmp_path, seed=1111, hooks=[hook])
    rec = tr.fit()
    # stage 0 trains only audio + aux: everything else is frozen
    for k, v in seen["after_stage0"].items():
        if k.startswith(("audio.", "aux.")):
            assert not torch.equal(v, init[k]), k
        elif k in dict(model.named_parameters()):
            assert torch.equal(v, init[k]), k
    assert model.epoch_ends == [("unimodal", 1), ("multimodal", 1), ("multimodal", 2)]
    assert len(model.grad_at_batch_end) == 12 and all(model.grad_at_batch_end)  # the hook runs after backward
    assert int(model.has_label.sum()) == 64  # hook state lives in buffers (checkpointed)
    assert rec["epochs_run"] == 3 and rec["steps"] == 12 and rec["opt_steps"] == 12
    assert set(rec["test"]) == {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5",
                                "Mult_acc_7", "MAE", "Corr"}
    assert rec["best_epoch"] in (1, 2) and rec["stage_best"]["unimodal"]["epoch"] == 1
    assert len(rec["data_sha256"]) == 64 and len(rec["pred_sha256"]) == 64 and rec["dataset"] == "mosi"
    for f in ("log.jsonl", "last.pt", "best.pt", "result.json", "test_predictions.csv"):
        assert (tmp_path / f).is_file(), f
    logs = _records(tmp_path)
    steps = [r for r in logs if r["event"] == "step"]
    assert len(steps) == 12 and set(steps[0]["loss"]) == {"reg", "aux", "pen", "total", "pretrain"}
    epochs = [r for r in logs if r["event"] == "epoch"]
    assert [e["stage"] for e in epochs] == ["unimodal", "multimodal", "multimodal"]
    assert all("MAE" in e["valid"] and "total" in e["train"] for e in epochs)
    assert logs[-1]["event"] == "test"
    # the final model is the best checkpoint of the last stage, and it is what was tested
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == rec["best_epoch"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["model"][k]), k
    assert len(open(tmp_path / "test_predictions.csv").read().splitlines()) == 1 + 34


@pytest.mark.parametrize("stop,extra", [(2, {}), (4, {}),
                                        (6, {"grad_accum": 3, "scheduler": "linear", "warmup_ratio": 0.3,
                                             "clip_grad_norm": 0.5})])
def test_resume_is_exact(store, cfg, tmp_path, stop, extra):
    """Stop mid-epoch (or exactly at an epoch's last batch), resume in a new Trainer with a differently
    initialised model, and reach bit-identical weights and metrics."""
    cfg = {**cfg, **extra}
    _, full = _run(store, cfg, tmp_path / "full")
    with pytest.raises(TrainingInterrupted, match=f"step {stop}"):
        _run(store, cfg, tmp_path / "cut", stop_after_steps=stop)
    ck = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert ck["engine"]["step"] == stop
    if extra.get("grad_accum"):  # stopped inside an accumulation group: its gradients are in the checkpoint
        assert ck["engine"]["micro"] == 2 and ck["grads"]
    tr, resumed = _run(store, cfg, tmp_path / "cut", seed=1111, resume=True)
    assert resumed["test_raw"] == full["test_raw"] and resumed["pred_sha256"] == full["pred_sha256"]
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["best_valid_mae"] == full["best_valid_mae"]
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["engine"]["history"] == b["engine"]["history"]


def test_resume_requires_checkpoint_and_same_seed(store, cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(toy_for(store), cfg, store, tmp_path / "none", resume=True)
    with pytest.raises(TrainingInterrupted):
        _run(store, cfg, tmp_path / "r", stop_after_steps=1)
    with pytest.raises(ValueError, match="seed 1111"):
        Trainer(toy_for(store), cfg, store, tmp_path / "r", seed=7, resume=True)


def test_grad_accum_matches_big_batch(store, cfg, tmp_path):
    base = {**cfg, "optimizer": "sgd", "lr": 0.1, "epochs": 1}
    _run(store, {**base, "batch_size": 16}, tmp_path / "big", dropout=0.0, pretrain_epochs=0)
    tr, rec = _run(store, {**base, "batch_size": 8, "grad_accum": 2}, tmp_path / "acc", dropout=0.0,
                   pretrain_epochs=0)
    assert rec["opt_steps"] == 4 and rec["steps"] == 8
    a = load_checkpoint(tmp_path / "big" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "acc" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, check_dtype=False)


@pytest.mark.parametrize("partial,steps", [("discard", 1), ("step", 2)])
def test_accum_partial_group(store, cfg, tmp_path, partial, steps):
    _, rec = _run(store, {**cfg, "epochs": 1, "grad_accum": 3, "accum_partial": partial, "accum_scale": "sum"},
                  tmp_path, pretrain_epochs=0)
    assert rec["steps"] == 4 and rec["opt_steps"] == steps


def test_multi_optimizer_updates_use_pre_step_gradients(store, cfg, tmp_path):
    """M3SA-style: per batch the audio branch steps with grad(aux), then everything with grad(total),
    both gradients taken from the same forward."""
    c = {**cfg, "optimizer": "sgd", "lr": 0.05, "epochs": 1}
    seed_everything(1111)
    model = toy_for(store, dropout=0.0, pretrain_epochs=0, updates=True)
    ref = toy_for(store, dropout=0.0, pretrain_epochs=0)
    ref.load_state_dict(model.state_dict())
    tr = Trainer(model, c, store, tmp_path, seed=1111, stop_after_steps=1)
    batch_idx = tr.train_loader.sampler.batches(0)[0]
    with pytest.raises(TrainingInterrupted):
        tr.fit()
    assert [u.name for u in tr.updates] == ["audio", "all"]
    b = tr.train_ds[batch_idx.tolist()]
    out = ref(b)
    terms = ref.loss_terms(b, out, ref.stages(c)[0])
    params = dict(ref.named_parameters())
    g_all = dict(zip(params, torch.autograd.grad(terms["total"], list(params.values()), retain_graph=True,
                                                 allow_unused=True)))
    names_audio = [n for n in params if n.startswith(("audio.", "aux."))]
    g_aud = dict(zip(names_audio, torch.autograd.grad(terms["aux"], [params[n] for n in names_audio])))
    for n, p in params.items():
        want = p.detach() - 0.05 * (g_all[n] if g_all[n] is not None else 0)
        if n in g_aud:
            want = want - 0.05 * g_aud[n]
        torch.testing.assert_close(model.state_dict()[n], want, rtol=1e-5, atol=1e-7)


def test_linear_warmup_and_param_groups(store, cfg, tmp_path):
    class TwoGroups(ToyModel):
        def param_groups(self, cfg):
            text = list(self.text.parameters())
            rest = [p for n, p in self.named_parameters() if not n.startswith("text.")]
            return [{"params": text, "lr": cfg["lr"] / 10}, {"params": rest, "lr": cfg["lr"]}]

    c = {**cfg, "epochs": 2, "scheduler": "linear", "warmup_steps": 2, "lr": 0.01}
    seed_everything(1)
    model = TwoGroups({"audio": 5, "vision": 20}, pretrain_epochs=0)
    Trainer(model, c, store, tmp_path, seed=1).fit()
    lrs = [r["lr"] for r in _records(tmp_path) if r["event"] == "step"]
    total = 8  # 4 optimiser steps per epoch x 2 epochs

    def f(s):
        return (s + 1) / 3 if s < 2 else max(0.0, (total - s) / (total - 2))

    want = [[0.001 * f(s), 0.01 * f(s)] for s in range(1, 9)]
    for got, w in zip(lrs, want):
        assert got == pytest.approx(w)
    assert lrs[-1] == [0.0, 0.0]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(store, cfg, tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"step 6 \(stage 'multimodal', epoch 1, batch 2\): term 'pen' = nan"):
        _run(store, cfg, tmp_path, nan_at_step=6)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["engine"]["step"] == 4 and ck["engine"]["stage"] == 1  # written at the end of stage 0
    assert all(torch.isfinite(v.float()).all() for v in ck["model"].values())
    assert any(r["event"] == "nonfinite" for r in _records(tmp_path))


def test_nonfinite_gradient_stops_before_the_update(store, cfg, tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"non-finite gradient at step 5 \(stage 'multimodal', epoch 1\): the "
                                            r"gradient of loss term 'total' is NaN/inf in .*text\.weight"):
        _run(store, cfg, tmp_path, nan_at_step=6, nan_grad=True)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["engine"]["step"] == 4
    assert all(torch.isfinite(v.float()).all() for v in ck["model"].values())


def test_dim_mismatch_is_caught_before_training(store, cfg, tmp_path):
    model = ToyModel({"audio": 74, "vision": 20})
    with pytest.raises(StoreFormatError, match=r"key 'audio': feature dim is 5 in the store.*model expects 74"):
        Trainer(model, cfg, store, tmp_path)
    assert not (tmp_path / "log.jsonl").exists()


def test_selection_and_patience(store, cfg, tmp_path, monkeypatch):
    maes = iter([1.0, 0.9, 0.9 - 1e-7, 0.95, 0.5])
    real = Trainer._evaluate

    def scripted(self, loader, si):
        res, raw, p, ids = real(self, loader, si)
        if loader is self.valid_loader:
            raw = {**raw, "MAE": next(maes)}
        return res, raw, p, ids

    monkeypatch.setattr(Trainer, "_evaluate", scripted)
    _, rec = _run(store, {**cfg, "epochs": 10, "patience": 2}, tmp_path, pretrain_epochs=0)
    # epoch 3 is not an improvement (by less than 1e-6), epoch 4 neither: stop after 4 epochs
    assert rec["epochs_run"] == 4 and rec["best_epoch"] == 2 and rec["best_valid_mae"] == 0.9
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


def test_compiled_fullgraph_matches_eager(store, cfg, tmp_path):
    c = {**cfg, "epochs": 1, "drop_last": True}
    _, eager = _run(store, c, tmp_path / "e", dropout=0.0, pretrain_epochs=0)
    _, comp = _run(store, {**c, "compile": True}, tmp_path / "c", dropout=0.0, pretrain_epochs=0)
    assert comp["compile"] == {"multimodal": "fullgraph"} and eager["compile"] == {"multimodal": "eager"}
    a = load_checkpoint(tmp_path / "e" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "c" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options, expected", [(None, {"pick_loop_orders": False}), ({"max_autotune": False},
                                                                                      {"max_autotune": False})])
def test_compile_options_reach_torch_compile(store, cfg, tmp_path, monkeypatch, options, expected):
    seen = []
    real = torch.compile

    def spy(fn, **kw):
        seen.append(kw)
        return real(fn, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    c = {**cfg, "epochs": 1, "drop_last": True, "compile": True, "compile_options": options}
    _, res = _run(store, c, tmp_path / "c", dropout=0.0, pretrain_epochs=0)
    assert res["compile"] == {"multimodal": "fullgraph"}
    assert seen and all(kw["options"] == expected for kw in seen)


def test_compiled_step_traces_data_dependent_sizes(store, cfg, tmp_path, monkeypatch):
    """The packed text encoder's row count comes from nonzero(): the engine's compiled call lets Dynamo
    capture it (one graph for every padding pattern) and leaves the global setting as it was."""
    import torch._dynamo

    flags = []

    def spy(fn, **kw):
        def call(*a, **k):
            flags.append(torch._dynamo.config.capture_dynamic_output_shape_ops)
            return fn(*a, **k)
        return call

    monkeypatch.setattr(torch, "compile", spy)
    c = {**cfg, "epochs": 1, "drop_last": True, "compile": True}
    _run(store, c, tmp_path / "c", dropout=0.0, pretrain_epochs=0)
    assert flags and all(flags)
    assert torch._dynamo.config.capture_dynamic_output_shape_ops is False


def test_default_compile_options_per_device():
    from msa_fast.train.engine import default_compile_options

    assert default_compile_options(torch.device("cpu")) == {"pick_loop_orders": False}
    assert default_compile_options(torch.device("cuda")) == {}


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_optimizer_impl_fused_matches_torch_default(store, cfg, tmp_path, optimizer):
    c = {**cfg, "epochs": 1, "optimizer": optimizer, "momentum": 0.9, "weight_decay": 0.01}
    runs = {}
    for impl in ("fused", "torch"):
        tr, res = _run(store, {**c, "optimizer_impl": impl}, tmp_path / impl, dropout=0.0)
        assert bool(tr.updates[0].optimizer.defaults.get("fused")) == (impl == "fused")
        runs[impl] = tr.model.state_dict()
    for k, v in runs["torch"].items():
        torch.testing.assert_close(runs["fused"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_unknown_optimizer_impl_is_named(store, cfg, tmp_path):
    with pytest.raises(ValueError, match="optimizer_impl 'fast'.*fused, torch"):
        _run(store, {**cfg, "optimizer_impl": "fast"}, tmp_path)


def test_bf16_autocast_and_tensorboard(store, cfg, tmp_path):
    _, rec = _run(store, {**cfg, "epochs": 1, "amp": "bf16", "tensorboard": True,
                                    "progress": True}, tmp_path, pretrain_epochs=0)
    assert all(v == v for v in rec["test_raw"].values() if isinstance(v, float))
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_checkpoint_failure_stops_training_and_keeps_previous(store, cfg, tmp_path, monkeypatch):
    import errno

    from msa_fast.train import checkpoint as ckmod

    writes = {"n": 0}
    real = ckmod._write

    def flaky(obj, fh):
        writes["n"] += 1
        if writes["n"] >= 3:
            fh.write(b"xx")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, fh)

    monkeypatch.setattr(ckmod, "_write", flaky)
    with pytest.raises(ckmod.CheckpointError, match="disk full"):
        _run(store, cfg, tmp_path, pretrain_epochs=0)
    ck = load_checkpoint(tmp_path / "last.pt")  # the first epoch's checkpoint, intact
    assert ck["engine"]["epoch"] == 1


def test_stage_extra_sets_lr_batch_size_and_pred(store, cfg, tmp_path):
    """MGCL-style stage 1: its own lr and batch size (Stage.extra), evaluated on its own output."""
    class StageOpts(ToyModel):
        def stages(self, cfg):
            st = super().stages(cfg)
            st[0].extra.update(lr=0.5, batch_size=32, pred="uni_pred", early_stop_patience=None)
            return st

    seen = []

    def hook(tr, event, info):
        if event == "step":
            seen.append((info["stage"], tr.train_loader.sampler.batch_size,
                         tr.updates[0].optimizer.param_groups[0]["lr"]))

    seed_everything(0)
    Trainer(StageOpts({"audio": 5, "vision": 20}), {**cfg, "epochs": 1}, store, tmp_path, hooks=[hook]).fit()
    assert seen[:2] == [(0, 32, 0.5), (0, 32, 0.5)] and seen[2:] == [(1, 16, 0.01)] * 4
