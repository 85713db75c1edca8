"""RUN/loss_curves.png from the seeds' log.jsonl (msa_fast.train.plots)."""

import json

from msa_fast.train.plots import _curves, plot_run, read_log


def _records():
    recs = [{"event": "start"}]
    for stage, epochs in (("unimodal_audio", 2), ("multimodal", 3)):
        for e in range(1, epochs + 1):
            for step in (1, 2):
                recs.append({"event": "step", "stage": stage, "epoch": e, "step": 10 * e + step,
                             "loss": {stage: 1.0 / e + 0.01 * step}})
            recs.append({"event": "epoch", "stage": stage, "epoch": e, "train": {stage: 1.0 / e},
                         "valid_mae_raw": 0.9 - 0.01 * e})
    return recs


def test_curves_count_epochs_across_stages():
    terms, steps, valid, starts = _curves(_records())
    assert starts == [(0, "unimodal_audio"), (2, "multimodal")]
    assert [x for x, _ in terms["unimodal_audio"]] == [1, 2]
    assert [x for x, _ in terms["multimodal"]] == [3, 4, 5]   # after the 2 epochs of stage 1
    assert [round(x, 3) for x, _ in steps["multimodal"][:2]] == [2.333, 2.667]  # inside epoch 3
    assert len(valid) == 5


def test_plot_run_writes_a_png_and_skips_runs_without_epochs(tmp_path):
    assert plot_run(tmp_path) is None
    for seed in (1, 2):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        with open(d / "log.jsonl", "w") as fh:
            for r in _records():
                fh.write(json.dumps(r) + "\n")
            fh.write('{"event": "step", "stag')  # torn last line (killed mid-write) is skipped
    assert len(read_log(tmp_path / "seed1" / "log.jsonl")) == len(_records())
    path = plot_run(tmp_path)
    assert path == tmp_path / "loss_curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
