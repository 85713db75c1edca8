"""Multi-seed runs, the summary files and the train/eval/predict CLI (toy model by import path)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from msa_fast.cli import main
from msa_fast.train.runs import run_seeds
from tests.train.toy_model import toy_for

REPO = Path(__file__).resolve().parents[2]
TOY = "tests.train.toy_model:build"


def test_run_seeds_summary_and_resume(store, cfg, tmp_path):
    out = []
    res = run_seeds(lambda c: toy_for(store), {**cfg, "epochs": 1}, store, tmp_path, seeds=[1, 2], print_fn=out.append)
    assert [r["seed"] for r in res["records"]] == [1, 2]
    assert "mean ± std" in res["table"] and res["table"] in out
    assert res["summary"]["MAE"]["n"] == 2
    for f in ("config.json", "env.json", "runs.jsonl", "summary.json", "summary.csv", "summary.txt",
              "loss_curves.png"):
        assert (tmp_path / f).is_file(), f
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["metric"] for r in rows][-2:] == ["MAE", "Corr"] and rows[0]["n"] == "2"
    env = json.load(open(tmp_path / "env.json"))
    assert {"torch", "torch_threads", "git_commit", "numpy"} <= set(env)
    assert len(open(tmp_path / "runs.jsonl").read().splitlines()) == 2
    rec = json.load(open(tmp_path / "seed1" / "result.json"))
    assert {"seed", "epochs_run", "best_epoch", "best_valid_mae", "test", "data_sha256", "pred_sha256",
            "wall_time", "env"} <= set(rec)
    # resuming a finished run re-uses the results
    again = run_seeds(lambda c: toy_for(store), {**cfg, "epochs": 1}, store, tmp_path, seeds=[1, 2], resume=True,
                      print_fn=lambda s: None)
    assert [r["test"] for r in again["records"]] == [r["test"] for r in res["records"]]


def test_cli_train_eval_predict(store, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--model", TOY, "--data", str(store), "--seeds", "1111", "1112", "--epochs", "1",
               "--no-compile", "--no-progress", "--out", str(run), "--set", "hidden=4", "--set", "patience=2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mean ± std (ddof=1)" in text and "MAE" in text
    cfg = json.load(open(run / "config.json"))
    assert cfg["hidden"] == 4 and cfg["patience"] == 2 and cfg["seeds"] == [1111, 1112] and cfg["compile"] is False
    assert cfg["data_dims"]["d_a"] == 5 and cfg["dataset"] == "mosi"
    summary = json.load(open(run / "summary.json"))
    assert rc == 0 and main(["eval", "--run", str(run)]) == 0
    ev = capsys.readouterr().out
    mae = summary["summary"]["MAE"]["mean"]
    assert f"{mae:.4f}" in ev  # eval of the best checkpoints reproduces the training run's test metrics
    preds = tmp_path / "p.csv"
    assert main(["predict", "--run", str(run), "--data", str(store), "--out", str(preds)]) == 0
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 34 and set(rows[0]) == {"id", "label", "pred", "pred_seed1111", "pred_seed1112"}
    # a store with other dims: a clear error before anything runs
    from tests.train.toy_model import tiny_store

    other = tiny_store(tmp_path / "mosei.h5", like="mosei", scale=0.002)
    assert main(["eval", "--run", str(run), "--data", str(other)]) == 1
    assert "key 'audio': feature dim is 74 in the store (mosei), but the model expects 5" in capsys.readouterr().err
    # a second train into the same directory is refused
    assert main(["train", "--model", TOY, "--data", str(store), "--out", str(run)]) == 1


def test_cli_errors(store, tmp_path, capsys):
    assert main(["train", "--model", TOY, "--data", str(store), "--set", "pateince=3", "--out",
                 str(tmp_path / "a")]) == 1
    assert "unknown config key 'pateince'; did you mean: patience" in capsys.readouterr().err
    assert main(["train", "--model", "no_such_model", "--data", str(store), "--out", str(tmp_path / "b")]) == 1
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path / "nothing")]) == 1
    assert "not a run directory" in capsys.readouterr().err


def test_cli_sigint_checkpoints_and_resume_matches(store, tmp_path):
    """SIGINT to a training subprocess: it checkpoints, exits with 130, and --resume reaches the same
    metrics as an uninterrupted run."""
    args = ["train", "--model", TOY, "--data", str(store), "--seeds", "1111", "--epochs", "2", "--no-compile",
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = tmp_path / "cut"
    p = subprocess.Popen([sys.executable, "-m", "msa_fast.cli", *args, "--out", str(run), "--set", "step_sleep=0.15"],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = 0
        deadline = time.time() + 90
        while time.time() < deadline:
            line = p.stdout.readline()
            if "batch done" in line:
                seen += 1
                if seen == 6:  # mid-epoch of the second stage
                    p.send_signal(signal.SIGINT)
                    break
            if not line and p.poll() is not None:
                break
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "SIGINT" in err and f"--resume {run}" in err
    from msa_fast.train.checkpoint import load_checkpoint

    ck = load_checkpoint(run / "seed1111" / "last.pt")
    assert ck["reason"] == "SIGINT" and 6 <= ck["engine"]["step"] < 12
    assert not (run / "summary.json").exists()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    a = json.load(open(run / "summary.json"))["per_seed"]
    b = json.load(open(tmp_path / "full" / "summary.json"))["per_seed"]
    assert a == b


def test_cli_train_without_data_uses_the_default_dataset(store, tmp_path, monkeypatch, capsys):
    import msa_fast.data.default as default

    calls = []

    def fake_default(*a, **k):
        calls.append(k)
        return store

    monkeypatch.setattr(default, "default_dataset", fake_default)
    assert main(["train", "--model", TOY, "--seeds", "1", "--epochs", "1", "--no-compile", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 0
    cfg = json.load(open(tmp_path / "r" / "config.json"))
    assert calls and cfg["data"] == os.path.abspath(store)
    # no data: the quick preset, on the word-aligned default set with cached text features
    assert cfg["preset"] == "quick" and calls[0]["aligned"] is True and calls[0]["text_features"] is True
    calls.clear()
    assert main(["train", "--model", TOY, "--preset", "paper", "--seeds", "1", "--epochs", "1", "--no-compile",
                 "--no-progress", "--out", str(tmp_path / "p")]) == 0
    assert json.load(open(tmp_path / "p" / "config.json"))["preset"] == "paper"
    assert "aligned" not in calls[0] and "text_features" not in calls[0]


def test_presets_set_only_known_keys_and_paper_is_the_registry():
    from msa_fast.models.configs import PRESETS, default_config, preset_config
    from msa_fast.train.configs import ENGINE_DEFAULTS

    for model in ("hycon", "mgcl"):
        assert preset_config("paper", model) == {}
        quick = preset_config("quick", model)
        known = set(default_config(model, "mosei")) | set(ENGINE_DEFAULTS)
        assert quick and set(quick) <= known, set(quick) - known
        assert quick["text_features"] is True and quick["seeds"] == [1111, 1112, 1113]
    assert set(PRESETS) == {"quick", "paper"}
    import pytest

    with pytest.raises(ValueError, match="unknown preset 'fast'.*paper"):
        preset_config("fast", "hycon")
