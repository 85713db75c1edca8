"""Tests of msa_fast.metrics against ../shared/spec/data.md §3 (MMSA-exact metrics) and §4 (aggregation)."""

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from msa_fast import metrics

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mosei_regression_lav.csv"

# data.md §3.4, expected MMSA-exact values on (pred, label) of the real-label fixture.
EXPECTED_FIXTURE = {
    "Has0_acc_2": 0.7900, "Has0_F1_score": 0.7952, "Non0_acc_2": 0.8341, "Non0_F1_score": 0.8338,
    "Mult_acc_5": 0.4736, "Mult_acc_7": 0.4656, "MAE": 0.6368, "Corr": 0.7068,
}
MOSI_KEYS = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]
SIMS_KEYS = ["Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"]


@pytest.fixture(scope="module")
def fixture_arrays():
    if not FIXTURE.is_file():
        pytest.skip(f"real-label fixture not found at {FIXTURE} (data.md §3.4)")
    with FIXTURE.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    label = np.array([float(r["label"]) for r in rows], dtype=np.float32)
    pred = np.array([float(r["pred"]) for r in rows], dtype=np.float32)
    return pred, label


def _half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# ------------------------------------------------------------------------------------ real fixture
def test_fixture_facts(fixture_arrays):
    pred, label = fixture_arrays
    assert label.size == 19050
    assert int((label == 0).sum()) == 4173
    assert int((label != 0).sum()) == 14877
    on_half = np.abs(label - np.trunc(label)) == 0.5
    assert int(on_half.sum()) == 8
    assert set(np.unique(label[on_half]).tolist()) == {-0.5, 0.5, 1.5}
    # data.md says "3 of them change Acc-7 class"; measured: the four at +-0.5 change class, and of the
    # eight, 3 are scored correct only under half-to-even and 1 only under half-away (net 2 samples).
    assert int((np.round(label[on_half]) != _half_away(label[on_half])).sum()) == 4
    p, t = np.clip(pred[on_half], -3, 3), np.clip(label[on_half], -3, 3)
    ok_even, ok_away = np.round(p) == np.round(t), _half_away(p) == _half_away(t)
    assert int((ok_even & ~ok_away).sum()) == 3 and int((ok_away & ~ok_even).sum()) == 1


def test_fixture_expected_values(fixture_arrays):
    pred, label = fixture_arrays
    res = metrics.compute(pred, label, "mosei")
    assert list(res) == MOSI_KEYS
    assert res == EXPECTED_FIXTURE
    assert all(type(v) is float for v in res.values())
    assert metrics.compute(pred, label, "mosi") == EXPECTED_FIXTURE  # same function for MOSI
    assert metrics.mmsa_regression(pred, label, "MOSEI") == EXPECTED_FIXTURE  # data.md name, any case


def test_fixture_acc3_extra_and_raw(fixture_arrays):
    pred, label = fixture_arrays
    res = metrics.compute(pred, label, "mosei", extras=True)
    assert res["Mult_acc_3_extra"] == 0.6215
    assert {k: v for k, v in res.items() if k != "Mult_acc_3_extra"} == EXPECTED_FIXTURE
    raw = metrics.compute(pred, label, "mosei", raw=True)
    assert list(raw) == MOSI_KEYS
    assert raw["Non0_acc_2"] == 12409 / 14877  # count-exact
    for k, v in EXPECTED_FIXTURE.items():
        assert abs(raw[k] - v) <= 5e-5
        assert round(np.float64(raw[k]), 4) == v


def test_fixture_rounding_trap(fixture_arrays):
    """Acc-7 is 0.4656 with np.round (half to even) and 0.4655 with half-away-from-zero."""
    pred, label = fixture_arrays
    p, t = np.clip(pred, -3, 3), np.clip(label, -3, 3)
    assert round(float(np.mean(_half_away(p) == _half_away(t))), 4) == 0.4655
    assert metrics.compute(pred, label, "mosei")["Mult_acc_7"] == 0.4656


def test_fixture_argument_order_trap(fixture_arrays):
    """MulT passes (pred, truth) to f1_score; MMSA passes (truth, pred) — data.md §3.1."""
    pred, label = fixture_arrays
    nz = label != 0
    assert round(metrics.weighted_f1(label[nz] > 0, pred[nz] > 0), 4) == 0.8338
    assert round(metrics.weighted_f1(pred[nz] > 0, label[nz] > 0), 4) == 0.8345
    assert round(metrics.weighted_f1(label >= 0, pred >= 0), 4) == 0.7952
    assert round(metrics.weighted_f1(pred >= 0, label >= 0), 4) == 0.7848


def test_weighted_f1_matches_sklearn(fixture_arrays):
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed (optional cross-check)")
    pred, label = fixture_arrays
    nz = label != 0
    pairs = [(label >= 0, pred >= 0), (label[nz] > 0, pred[nz] > 0), (pred >= 0, label >= 0)]
    rng = np.random.default_rng(0)
    for _ in range(200):  # small random multi-class cases, including classes present on one side only
        n = int(rng.integers(1, 12))
        pairs.append((rng.integers(0, 3, n), rng.integers(0, 4, n)))
    pairs.append((np.ones(5, bool), np.array([1, 0, 1, 1, 0], bool)))  # only-predicted class
    for y_true, y_pred in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = skm.f1_score(y_true, y_pred, average="weighted")
        assert metrics.weighted_f1(y_true, y_pred) == pytest.approx(ref, rel=0, abs=1e-12)


# -------------------------------------------------------------------------------- hand-made cases
def test_half_labels_round_half_to_even():
    labels = [0.5, -0.5, 2.5, 1.5, -2.5, 3.5]
    preds = [0.4, -0.4, 2.4, 1.6, -2.4, 2.6]  # rounded: 0, 0, 2, 2, -2, 3
    res = metrics.compute(preds, labels, "mosi")
    # half to even: labels -> 0, 0, 2, 2, -2, 3 (3.5 clipped to 3) -> all match for Acc-7
    assert res["Mult_acc_7"] == 1.0
    # Acc-5 clips to [-2, 2]: labels 0, 0, 2, 2, -2, 2 vs preds 0, 0, 2, 2, -2, 2
    assert res["Mult_acc_5"] == 1.0
    # half away from zero would give labels 1, -1, 3, 2, -3, 3 -> only 2 of 6 matches
    p, t = np.clip(preds, -3, 3), np.clip(labels, -3, 3)
    assert np.mean(_half_away(p) == _half_away(t)) == pytest.approx(2 / 6)


def test_exact_zero_labels_has0_non0():
    labels = [0.0, 0.0, 1.0, -1.0, 2.0]
    preds = [-0.1, 0.2, 0.5, -0.5, 0.0]
    res = metrics.compute(preds, labels, "mosi", raw=True)
    # Has0 (>= 0): truth T T T F T, pred F T T F T -> 4/5
    assert res["Has0_acc_2"] == pytest.approx(0.8, abs=1e-15)
    # class T: tp 3, true 4, pred 3 -> 6/7; class F: tp 1, true 1, pred 2 -> 2/3; weights 4 and 1
    assert res["Has0_F1_score"] == pytest.approx((6 / 7 * 4 + 2 / 3) / 5, abs=1e-15)
    # Non0 drops the two zero labels; (> 0): truth T F T, pred T F F (prediction 0.0 is negative)
    assert res["Non0_acc_2"] == pytest.approx(2 / 3, abs=1e-15)
    # class T: tp 1, true 2, pred 1 -> 2/3; class F: tp 1, true 1, pred 2 -> 2/3
    assert res["Non0_F1_score"] == pytest.approx(2 / 3, abs=1e-15)
    assert metrics.compute(preds, labels, "mosi")["Has0_acc_2"] == 0.8


def test_negative_zero_prediction_is_non_negative():
    res = metrics.compute([-0.0, 1.0], [0.5, -1.0], "mosi", raw=True)
    assert res["Has0_acc_2"] == 0.5  # -0.0 >= 0 like +0.0


def test_all_positive_labels_f1_weights_true_support():
    labels = [1.0, 2.0, 3.0, 0.5]
    preds = [1.0, -1.0, 2.0, 3.0]
    res = metrics.compute(preds, labels, "mosei")
    # only class T has true support: F1_T = 2*3 / (4 + 3) = 6/7; class F (only predicted) weighs 0
    assert res["Has0_acc_2"] == 0.75 and res["Non0_acc_2"] == 0.75
    assert res["Has0_F1_score"] == 0.8571 and res["Non0_F1_score"] == 0.8571
    # the swapped (MulT) order weights F by its predicted support: (0*1 + 6/7*3) / 4
    assert round(metrics.weighted_f1(np.array(preds) > 0, np.array(labels) > 0), 4) == 0.6429


def test_constant_predictions_corr_nan_with_warning():
    labels = [-1.0, 0.0, 1.0, 2.0]
    with pytest.warns(UserWarning, match="Corr is undefined.*predictions are constant"):
        res = metrics.compute([0.5] * 4, labels, "mosi")
    assert math.isnan(res["Corr"])
    assert res["MAE"] == 1.0  # other metrics are still computed
    assert res["Has0_acc_2"] == 0.75
    with pytest.warns(UserWarning, match="labels are constant"):
        res = metrics.compute([0.1, 0.2, 0.3], [1.0, 1.0, 1.0], "sims")
    assert math.isnan(res["Corr"])
    with pytest.warns(UserWarning, match="Corr is undefined"):
        assert math.isnan(metrics.compute([1.0], [2.0], "mosi")["Corr"])  # one sample


def test_corr_value_unclipped_for_mosi():
    preds = np.array([-5.0, 0.0, 1.0, 4.0])
    labels = np.array([-3.0, 0.5, 0.0, 3.0])
    res = metrics.compute(preds, labels, "mosi", raw=True)
    assert res["Corr"] == pytest.approx(np.corrcoef(preds, labels)[0, 1], abs=1e-15)
    assert res["MAE"] == pytest.approx(np.mean(np.abs(preds - labels)), abs=1e-7)  # unclipped: 1.125


def test_all_zero_labels_non0_nan_with_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = metrics.compute([0.1, -0.2, 0.3], [0.0, 0.0, 0.0], "mosi")
    messages = [str(w.message) for w in caught]
    assert any("every label is exactly 0" in m for m in messages)
    assert any("labels are constant" in m for m in messages)  # and Corr is NaN as well
    assert all(w.filename == __file__ for w in caught)  # warnings point at the caller
    assert math.isnan(res["Non0_acc_2"]) and math.isnan(res["Non0_F1_score"])
    assert res["Has0_acc_2"] == 0.6667


def test_rounding_is_mmsa_numpy_rounding():
    # 69/160 = 0.43125: NumPy's round (MMSA: np.float64 values) gives 0.4312, Python's float round 0.4313
    labels = np.linspace(0.5, 2.0, 160, dtype=np.float32)
    preds = np.where(np.arange(160) < 69, 1.0, -1.0).astype(np.float32)
    res = metrics.compute(preds, labels, "mosi")
    assert res["Has0_acc_2"] == 0.4312
    assert round(69 / 160, 4) == 0.4313  # the alternative this test guards against


def test_accepts_torch_numpy_lists_and_flattens():
    torch = pytest.importorskip("torch")
    labels = [-2.0, -0.5, 0.0, 0.7, 1.5, 2.9]
    preds = [-1.8, 0.1, 0.2, 0.4, 1.2, 3.3]
    ref = metrics.compute(preds, labels, "mosi")
    assert metrics.compute(torch.tensor(preds).view(-1, 1), torch.tensor(labels, dtype=torch.float64), "mosi") == ref
    assert metrics.compute(np.array(preds, dtype=np.float64)[:, None], np.array(labels), "MOSI") == ref
    assert metrics.compute(torch.tensor(preds, requires_grad=True), labels, "mosi") == ref
    assert metrics.compute(torch.tensor(preds, dtype=torch.bfloat16), labels, "mosi")["Has0_acc_2"] == ref["Has0_acc_2"]


# --------------------------------------------------------------------------------------------- SIMS
def test_sims_keys_and_values():
    truth = [-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0, 1.5, -2.0]
    pred = [-0.8, -0.65, -0.05, 0.01, 0.05, 0.75, 0.71, 3.0, -0.9]
    res = metrics.compute(pred, truth, "sims")
    assert list(res) == SIMS_KEYS
    # Acc-2 (zero is negative): truth 0 0 0 0 1 1 1 1 0, pred 0 0 0 1 1 1 1 1 0
    assert res["Mult_acc_2"] == 0.8889
    # Acc-3: only -0.1 (class 0) vs -0.05 (class 1) differs
    assert res["Mult_acc_3"] == 0.8889
    # Acc-5: -0.7 vs -0.65, -0.1 vs -0.05 and 0.7 vs 0.75 differ
    assert res["Mult_acc_5"] == 0.6667
    # class 0: tp 4, true 5, pred 4 -> 8/9; class 1: tp 4, true 4, pred 5 -> 8/9
    assert res["F1_score"] == 0.8889
    # MAE on clipped values: (0.2+0.05+0.05+0.01+0.05+0.05+0.29+0+0.1)/9
    assert res["MAE"] == 0.0889
    c = np.clip(np.array([pred, truth], dtype=np.float32), -1, 1).astype(np.float64)
    assert res["Corr"] == round(np.corrcoef(c[0], c[1])[0, 1], 4)
    assert metrics.compute(pred, truth, "simsv2") == res
    assert metrics.compute(pred, truth, "SIMS") == res


def test_mae_is_mmsa_float32_mean():
    # MMSA averages |pred - truth| in float32: 0.76875 (float32) rounds to 0.7688, while the float64
    # mean of the same float32 values is 0.76874999... and would round to 0.7687.
    truth = [-0.1, 0.0, 0.5, 0.9, -1.0, -0.7, 0.7, 0.9, -0.5, -0.4, 0.8, -0.2, -0.5, 0.7, -0.5, -0.2]
    pred = [0.3, 0.1, -0.9, -1.0, 0.8, 0.5, 0.7, 0.1, 0.7, -0.4, -0.1, 0.6, -0.8, -0.4, -0.8, -0.1]
    assert metrics.compute(pred, truth, "sims")["MAE"] == 0.7688
    assert metrics.compute(pred, truth, "mosi")["MAE"] == 0.7688
    t64, p64 = np.float32(truth).astype(np.float64), np.float32(pred).astype(np.float64)
    assert round(np.mean(np.abs(p64 - t64)), 4) == 0.7687  # the alternative this test guards against


def test_sims_bin_edges_compared_in_float32():
    # float32(0.1) > 0.1 and float32(-0.7) > -0.7 in float64; MMSA compares in float32, where both sit
    # exactly on the right-closed edge: 0.1 -> middle class, -0.7 -> lowest class.
    res = metrics.compute([0.09, -0.75], [0.1, -0.7], "sims", raw=True)
    assert res["Mult_acc_3"] == 1.0
    assert res["Mult_acc_5"] == 1.0


def test_sims_zero_is_negative_and_clipping():
    res = metrics.compute([0.0, 5.0, -5.0], [-0.3, 1.0, -1.0], "sims", raw=True)
    assert res["Mult_acc_2"] == 1.0
    assert res["MAE"] == pytest.approx(0.1, abs=1e-7)  # |0 - -0.3| / 3 after clipping to [-1, 1]


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("preds, labels, match", [
    ([0.1, 0.2], [0.1, 0.2, 0.3], r"length mismatch: 2 predictions .* 3 labels"),
    ([], [], "empty input"),
    ([0.1, 0.2, 0.3], [0.0, 1.0, float("nan")], r"1 non-finite labels .* sample index 2"),
    ([float("nan"), 0.2, float("nan")], [0.0, 1.0, 2.0], r"2 non-finite predictions .* sample index 0"),
    ([0.1, float("inf")], [0.0, 1.0], r"non-finite predictions .* sample index 1"),
    ([0.1, 1e39], [0.0, 1.0], r"non-finite predictions .* sample index 1"),  # overflows float32
    (["a", "b"], [0.0, 1.0], "predictions: cannot convert"),
])
def test_bad_input_raises(preds, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.compute(preds, labels, "mosi")


def test_unknown_dataset_raises():
    with pytest.raises(ValueError, match=r"unknown dataset 'iemocap'.*mosei"):
        metrics.compute([0.1], [0.2], "iemocap")


# ------------------------------------------------------------------------------------- aggregation
def _runs():
    acc = [0.80, 0.82, 0.81, 0.79, 0.83]
    mae = [0.53, 0.54, 0.52, 0.55, 0.51]
    return [{"Non0_acc_2": a, "MAE": m} for a, m in zip(acc, mae)]


def test_aggregate_mean_and_both_stds():
    agg = metrics.aggregate(_runs())
    assert list(agg) == ["Non0_acc_2", "MAE"]
    a = agg["Non0_acc_2"]
    assert a["n"] == 5
    assert a["mean"] == pytest.approx(0.81, abs=1e-12)
    assert a["std"] == pytest.approx(math.sqrt(0.001 / 4), abs=1e-12)  # ddof=1
    assert a["std_pop"] == pytest.approx(math.sqrt(0.001 / 5), abs=1e-12)  # ddof=0 (MMSA)
    assert a["mmsa"] == (81.0, 1.41)
    assert agg["MAE"]["mmsa"] == (53.0, 1.41)  # MAE also ×100, like MMSA's tables


def test_aggregate_edge_cases():
    one = metrics.aggregate([{"MAE": 0.5}])["MAE"]
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and one["std_pop"] == 0.0
    with pytest.raises(ValueError, match="no results"):
        metrics.aggregate([])
    with pytest.raises(ValueError, match="result 1 has keys"):
        metrics.aggregate([{"MAE": 0.5, "Corr": 0.7}, {"MAE": 0.5}])


def test_format_table():
    table = metrics.format_table(metrics.aggregate(_runs()), title="MOSEI, 5 seeds")
    lines = table.splitlines()
    assert lines[0] == "MOSEI, 5 seeds"
    assert "ddof=1" in lines[1] and "ddof=0" in lines[1]
    acc_line = next(line for line in lines if line.startswith("Non0_acc_2"))
    assert "0.8100 ± 0.0158" in acc_line and "0.0141" in acc_line and "81.00 ± 1.41" in acc_line
    assert acc_line.rstrip().endswith("5")
    assert metrics.format_table(_runs()) == metrics.format_table(metrics.aggregate(_runs()))
    nan_table = metrics.format_table([{"Corr": float("nan")}, {"Corr": 0.5}])
    assert "nan ± nan" in nan_table
