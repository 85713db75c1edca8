"""MMSA-exact regression metrics and aggregation over seeds.

Specification: ``../shared/spec/data.md`` §3 (metric definitions, real-label fixture with expected
values) and §4 (evaluation protocol, aggregation over seeds). This module reproduces
``MMSA.utils.metricsTop.MetricsTop`` (regression mode) of thuiar/MMSA 2.2.1 without depending on
scikit-learn:

* inputs are flattened and cast to float32, as MMSA sees them; all class assignments (clipping,
  ``np.round`` = round half to even, ``>= 0`` / ``> 0``, exact-zero test, SIMS bin edges) are made on
  the float32 values, with the SIMS bin edges themselves taken as float32 (MMSA compares float32
  arrays with Python floats, which NumPy does in float32);
* MAE is MMSA's own float32 computation, ``np.mean(np.abs(pred - truth))`` on the float32 arrays,
  then widened to float64 (a float64 mean differs by ~1e-7, which is enough to flip the 4th decimal
  on grid-valued inputs such as SIMS labels); Corr is ``np.corrcoef``, which works in float64;
* weighted F1 follows ``sklearn.metrics.f1_score(y_true=truth, y_pred=pred, average='weighted')``:
  classes are the union of both arrays and each class is weighted by its *true* support, so a class
  that appears only in the predictions has weight 0 (its F1 is 0, sklearn's zero-division result);
* every value is rounded as MMSA does, ``round(np.float64(v), 4)``: NumPy's rounding (scale by 1e4,
  round half to even), because with MMSA's pinned numpy 1.17 / scikit-learn 0.21 every metric is a
  ``np.float64``. (scikit-learn >= 1.6 returns Python floats, whose ``round`` is correctly rounded;
  the two differ only on exact ties such as 0.43125, i.e. for tiny sample counts.)
* a constant side makes Pearson r undefined: Corr is NaN and a ``UserWarning`` is emitted (§3.3).

Public API: :func:`compute` (alias :func:`mmsa_regression`), :func:`weighted_f1`,
:func:`aggregate`, :func:`format_table`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["compute", "mmsa_regression", "weighted_f1", "aggregate", "format_table", "KEYS"]

#: Keys returned by :func:`compute`, in MMSA's order, per dataset family.
KEYS = {
    "mosi": ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
             "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"),
    "sims": ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"),
}
_FAMILY = {"mosi": "mosi", "mosei": "mosi", "sims": "sims", "simsv2": "sims"}

# SIMS bin edges (left-open, right-closed), compared in float32 like MMSA.
_SIMS_EDGES = {
    2: np.array([-1.01, 0.0, 1.01], dtype=np.float32),
    3: np.array([-1.01, -0.1, 0.1, 1.01], dtype=np.float32),
    5: np.array([-1.01, -0.7, -0.1, 0.1, 0.7, 1.01], dtype=np.float32),
}


# ----------------------------------------------------------------------------------------- helpers
def _as_float32(x, name: str) -> np.ndarray:
    """Flatten a tensor / array / list into a float32 numpy vector."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().float().numpy()
    try:
        with np.errstate(over="ignore"):  # overflow -> inf, reported by _check
            arr = np.asarray(x, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot convert to a float32 array ({exc})") from None
    return arr


def _check(pred: np.ndarray, truth: np.ndarray, pred_shape, truth_shape) -> None:
    if pred.size == 0 or truth.size == 0:
        raise ValueError(f"empty input: {pred.size} predictions and {truth.size} labels")
    if pred.size != truth.size:
        raise ValueError(
            f"length mismatch: {pred.size} predictions (shape {tuple(pred_shape)}) vs "
            f"{truth.size} labels (shape {tuple(truth_shape)})")
    for name, arr in (("labels", truth), ("predictions", pred)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{bad.size} non-finite {name} (NaN or inf after the float32 cast) of {arr.size}; "
                f"first at sample index {i} (value {arr[i]})")


def _mmsa_round(v) -> float:
    return float(round(np.float64(v), 4))


def _accuracy(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def weighted_f1(y_true, y_pred) -> float:
    """scikit-learn's ``f1_score(y_true, y_pred, average='weighted')`` for discrete labels.

    Classes are the union of the values in both arrays; F1_c = 2·tp / (true_c + pred_c), weighted by
    the true support of c. A class that is only predicted has F1 0 (sklearn's zero-division result
    for its recall) and weight 0. Argument order matters (data.md §3.1).
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.size == 0 or y_true.size != y_pred.size:
        raise ValueError(f"weighted_f1: need equal non-zero lengths, got {y_true.size} and {y_pred.size}")
    classes = np.union1d(y_true, y_pred)
    t = (y_true[None, :] == classes[:, None])
    p = (y_pred[None, :] == classes[:, None])
    tp = (t & p).sum(1).astype(np.float64)
    true_sum = t.sum(1).astype(np.float64)
    f1 = 2.0 * tp / (true_sum + p.sum(1))  # > 0 denominators: every class of the union occurs
    return float(np.average(f1, weights=true_sum))


def _corr(pred: np.ndarray, truth: np.ndarray) -> float:
    for name, arr in (("predictions", pred), ("labels", truth)):
        if arr.size < 2 or np.all(arr == arr[0]):
            warnings.warn(f"Corr is undefined (NaN): the {name} are constant", UserWarning, stacklevel=4)
            return float("nan")
    return float(np.corrcoef(pred, truth)[0, 1])


def _bins(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Class index of each float32 value for bins (e0, e1], (e1, e2], ... (MMSA's loop)."""
    out = np.full(x.shape, -1, dtype=np.int64)
    for i in range(len(edges) - 1):
        out[(x > edges[i]) & (x <= edges[i + 1])] = i
    return out


# ------------------------------------------------------------------------------------------ metrics
def _mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - truth)))  # float32 arithmetic, exactly as MMSA


def _mosi(pred: np.ndarray, truth: np.ndarray, extras: bool) -> dict:
    p64, t64 = pred.astype(np.float64), truth.astype(np.float64)  # exact: float32 ⊂ float64

    def mult(c: float) -> float:
        return _accuracy(np.round(np.clip(p64, -c, c)), np.round(np.clip(t64, -c, c)))

    nz = truth != 0  # float32 exact-zero test
    if nz.any():
        non0_acc = _accuracy(pred[nz] > 0, truth[nz] > 0)
        non0_f1 = weighted_f1(truth[nz] > 0, pred[nz] > 0)
    else:
        warnings.warn("Non0_acc_2 / Non0_F1_score are undefined (NaN): every label is exactly 0",
                      UserWarning, stacklevel=3)
        non0_acc = non0_f1 = float("nan")
    res = {
        "Has0_acc_2": _accuracy(pred >= 0, truth >= 0),
        "Has0_F1_score": weighted_f1(truth >= 0, pred >= 0),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": mult(2.0),
        "Mult_acc_7": mult(3.0),
        "MAE": _mae(pred, truth),
        "Corr": _corr(p64, t64),
    }
    if extras:
        res["Mult_acc_3_extra"] = mult(1.0)
    return res


def _sims(pred: np.ndarray, truth: np.ndarray) -> dict:
    pred = np.clip(pred, np.float32(-1), np.float32(1))
    truth = np.clip(truth, np.float32(-1), np.float32(1))
    a2p, a2t = _bins(pred, _SIMS_EDGES[2]), _bins(truth, _SIMS_EDGES[2])
    return {
        "Mult_acc_2": _accuracy(a2p, a2t),
        "Mult_acc_3": _accuracy(_bins(pred, _SIMS_EDGES[3]), _bins(truth, _SIMS_EDGES[3])),
        "Mult_acc_5": _accuracy(_bins(pred, _SIMS_EDGES[5]), _bins(truth, _SIMS_EDGES[5])),
        "F1_score": weighted_f1(a2t, a2p),
        "MAE": _mae(pred, truth),
        "Corr": _corr(pred.astype(np.float64), truth.astype(np.float64)),
    }


def compute(preds, labels, dataset: str, *, raw: bool = False, extras: bool = False) -> dict:
    """MMSA's regression metrics for ``dataset`` in {'mosi', 'mosei', 'sims', 'simsv2'}.

    ``preds`` and ``labels`` may be torch tensors, numpy arrays or (nested) lists; they are
    flattened. Returns exactly MMSA's keys (see :data:`KEYS`), each rounded to 4 decimals as MMSA
    does, or unrounded with ``raw=True``. ``extras=True`` adds ``Mult_acc_3_extra`` (Acc-3, which MMSA
    computes but does not return) for MOSI/MOSEI. Raises ``ValueError`` for an unknown dataset,
    empty input, a length mismatch or a non-finite value.
    """
    key = str(dataset).lower()
    if key not in _FAMILY:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_FAMILY)}")
    pred, truth = _as_float32(preds, "predictions"), _as_float32(labels, "labels")
    _check(pred, truth, np.shape(preds), np.shape(labels))
    res = _mosi(pred, truth, extras) if _FAMILY[key] == "mosi" else _sims(pred, truth)
    return res if raw else {k: _mmsa_round(v) for k, v in res.items()}


mmsa_regression = compute  # name used in data.md §3


# ------------------------------------------------------------------------------ aggregation (§4)
def aggregate(results: Sequence[Mapping[str, float]]) -> dict:
    """Summarise per-seed metric dicts (all with the same keys).

    Returns ``{key: {'mean', 'std' (sample, ddof=1; NaN for one run), 'std_pop' (ddof=0, what
    MMSA's run.py writes), 'mmsa': (round(mean*100, 2), round(std_pop*100, 2)), 'n'}}`` in the key
    order of the first result. NaN values (e.g. an undefined Corr) propagate.
    """
    results = list(results)
    if not results:
        raise ValueError("aggregate: no results given")
    keys = list(results[0])
    for i, r in enumerate(results):
        if set(r) != set(keys):
            raise ValueError(f"aggregate: result {i} has keys {sorted(r)}, result 0 has {sorted(keys)}")
    out = {}
    for k in keys:
        v = np.array([float(r[k]) for r in results], dtype=np.float64)
        mean = float(np.mean(v))
        std = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
        std_pop = float(np.std(v, ddof=0))
        out[k] = {"mean": mean, "std": std, "std_pop": std_pop,
                  "mmsa": (round(mean * 100, 2), round(std_pop * 100, 2)), "n": int(v.size)}
    return out


def format_table(summary, title: str | None = None) -> str:
    """Printable table of :func:`aggregate` output (a list of per-seed dicts is aggregated first).

    Columns: mean ± sample std (ddof=1), population std (ddof=0), and MMSA's style
    ``mean×100 ± std_pop×100`` (2 decimals), plus the number of runs.
    """
    if not isinstance(summary, Mapping):
        summary = aggregate(summary)

    def f(x: float, nd: int) -> str:
        return "nan" if math.isnan(x) else f"{x:.{nd}f}"

    header = ("metric", "mean ± std (ddof=1)", "std (ddof=0)", "MMSA ×100 (ddof=0)", "n")
    rows = [(k, f"{f(s['mean'], 4)} ± {f(s['std'], 4)}", f(s["std_pop"], 4),
             f"{f(s['mmsa'][0], 2)} ± {f(s['mmsa'][1], 2)}", str(s["n"])) for k, s in summary.items()]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    lines = ([title] if title else []) + [line(header), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [line(r) for r in rows])
