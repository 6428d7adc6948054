#!/usr/bin/env python3
"""Cross-check the metrics of a `secateur report` against independent Python libraries.

Usage (from the repository root):

    python bench/report_metrics_check.py [REPORT_DIR]      # default: results/report-lenet5

For every run of the report, the script reads the arrays that secateur saved
(`arrays/<run>.safetensors`: `test.*`, `ood.*`, `shift.<kind>.<severity>.*`) and recomputes
the metrics of `metrics.csv` with torchmetrics, scikit-learn and netcal (when installed) on the
same float32 arrays. It prints, per metric and per library, the largest absolute difference
over the runs between secateur's value and the library's, as a Markdown table, and exits with
status 1 if any strict check exceeds its tolerance.

Conventions of secateur (inference/src/{metrics,calibration,selective,ood}.rs,
experiments/src/comparison/measure.rs) that the checks reproduce:

- prediction = arg-max (lowest index on ties), confidence = its probability;
- NLL = -mean log max(p_y, float32 tiny); Brier = mean over examples of the SUM over classes
  of (p_k - 1[k = y])^2 (range [0, 2], not divided by K);
- ECE/MCE: 15 equal-width bins (b/15, (b+1)/15], open below, closed above, boundaries in
  float64, a confidence of exactly 1.0 in the last bin; MCE = max gap over non-empty bins;
- adaptive ECE: examples sorted by confidence, cut into 15 groups of consecutive examples
  with the sizes of numpy.array_split; tied confidences straddling a cut share their group's
  mean accuracy;
- class-wise ECE: mean over classes k of the equal-width ECE of p_k against 1[y = k];
- AURC: mean selective risk over coverages k/N, ranking by predictive entropy ascending,
  ties by expected count;
- OOD scores, higher = more out of distribution: 1 - max p (in float64), predictive entropy,
  mutual information. AUROC with OOD positive; AUPR-out = average precision, OOD positive,
  by the score; AUPR-in = average precision, in-distribution positive, by -score; FPR@95TPR:
  in-distribution positive, the smallest FPR among thresholds with TPR >= 0.95, examples tied
  with the threshold kept.

Tolerances (absolute):

- TOL_F64 = 1e-9 where the library computes in float64 from the same float32 inputs: both
  sides sum at most 2000 x 10 float64 terms, so rounding is below 1e-12; 1e-9 leaves room
  and still sits five orders of magnitude below the 4 decimals the report prints.
- TOL_F32 = 1e-5 where the library works in float32 (torchmetrics casts calibration inputs
  to float32 and accumulates per-bin sums with float32 scatter_add; its rates are float32):
  a sum of n <= 2000 float32 terms has a relative rounding error of order sqrt(n) * 2^-24
  ~ 3e-6 in practice (n * 2^-24 ~ 1.2e-4 only in the worst case).
- TOL_NETCAL = 1e-6 for netcal on float32 input: it bins in float64 but first clips every
  probability to [eps32, 1 - eps32] (eps32 = 1.19e-7), which moves any bin's mean confidence
  by < 1.2e-7. On float64 input the clip is at 2.2e-16 and TOL_F64 applies.
- Rows marked "info" show a difference that comes from a documented convention difference;
  they do not fail the run, and each is paired with a strict row that reproduces the
  library's number from its own convention (so the difference is explained, not tolerated).

Where no installed library implements secateur's exact quantity (adaptive ECE with
numpy.array_split bins, the Murphy decomposition of the Brier score, AURC), the script
checks a short numpy re-implementation written from the definition instead, and says so.
The temperature-scaling columns are not checked: the fit/evaluation split of the test set is
drawn by secateur's seeded RNG and not saved with the arrays.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats
import sklearn
import sklearn.metrics as skm
import torch
import torchmetrics
from safetensors.numpy import load_file
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryCalibrationError,
    BinarySpecificityAtSensitivity,
    MulticlassAccuracy,
    MulticlassCalibrationError,
)
from torchmetrics.functional.classification.calibration_error import _ce_compute

try:
    import netcal
    from netcal.metrics import ECE as NetcalECE
    from netcal.metrics import MCE as NetcalMCE
except Exception:  # netcal is optional
    netcal = None

BINS = 15
TOL_F64 = 1e-9
TOL_F32 = 1e-5
TOL_NETCAL = 1e-6
TINY32 = float(np.finfo(np.float32).tiny)
SCORES = ("max-prob", "entropy", "mutual-info")

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# bookkeeping


@dataclass
class Check:
    metric: str
    source: str
    tol: float | None  # None: informational (explained convention difference)
    worst: float = 0.0
    worst_run: str = ""
    n: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, run: str, ours: float, theirs: float) -> None:
        d = abs(float(ours) - float(theirs))
        if math.isnan(d):
            d = math.inf
        self.n += 1
        if d > self.worst or not self.worst_run:
            self.worst, self.worst_run = d, run

    @property
    def ok(self) -> bool:
        return self.tol is None or self.worst <= self.tol


class Registry:
    def __init__(self) -> None:
        self.checks: dict[tuple[str, str], Check] = {}

    def add(self, metric: str, source: str, tol: float | None, run: str, ours: float, theirs: float) -> None:
        key = (metric, source)
        if key not in self.checks:
            self.checks[key] = Check(metric, source, tol)
        self.checks[key].add(run, ours, theirs)


# --------------------------------------------------------------------------------------------
# helpers


def top1(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max (numpy: first index on ties, as secateur) and its probability."""
    pred = p.argmax(axis=1)
    return pred, p[np.arange(len(p)), pred]


def ce_aligned(conf: np.ndarray, hit: np.ndarray, norm: str, dtype: torch.dtype) -> float:
    """torchmetrics' own binning/reduction (`_ce_compute`) with secateur's edge for 1.0.

    torchmetrics (1.9) bins with `torch.bucketize(c, edges, right=True) - 1`, i.e. bins
    [b/B, (b+1)/B), and a confidence of exactly 1.0 lands in an extra (B+1)-th bin of its own.
    Moving only the last edge to the next representable number above 1 puts 1.0 back in the
    last real bin. The interior edges are left as they are: in float64 they are b/15 exactly
    (secateur's), and no float32 confidence can equal b/15 (b = 1..14; not a dyadic
    fraction), so [a, b) and (a, b] select the same examples.
    """
    if dtype == torch.float64:
        edges = torch.tensor(np.arange(BINS + 1) / BINS, dtype=dtype)
        edges[-1] = float(np.nextafter(1.0, 2.0))
    else:
        edges = torch.linspace(0, 1, BINS + 1, dtype=dtype)
        edges[-1] = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(2.0, dtype=dtype))
    c = torch.as_tensor(conf.astype(np.float64)).to(dtype)
    a = torch.as_tensor(hit.astype(np.float64)).to(dtype)
    return float(_ce_compute(c, a, edges, norm=norm))


def ce_numpy(conf: np.ndarray, hit: np.ndarray, edges: np.ndarray, bin_of: np.ndarray, norm: str) -> float:
    """ECE (l1) or MCE (max) of given bin indices, float64."""
    nb = len(edges)
    cnt = np.bincount(bin_of, minlength=nb).astype(np.float64)
    cs = np.bincount(bin_of, weights=conf.astype(np.float64), minlength=nb)
    hs = np.bincount(bin_of, weights=hit.astype(np.float64), minlength=nb)
    ne = cnt > 0
    gap = np.abs(hs[ne] / cnt[ne] - cs[ne] / cnt[ne])
    return float(np.sum(gap * cnt[ne]) / cnt.sum()) if norm == "l1" else float(gap.max())


def ce_torchmetrics_shipped_model(conf: np.ndarray, hit: np.ndarray, norm: str) -> float:
    """A numpy model of torchmetrics 1.9's shipped binning: float32 edges from torch.linspace,
    bins [e_b, e_{b+1}), and 1.0 alone in bin B (the extra bin)."""
    edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float32).numpy()
    b = np.searchsorted(edges, conf.astype(np.float32), side="right") - 1
    return ce_numpy(conf, hit, edges, b, norm)


def netcal_quantile_model(conf: np.ndarray, hit: np.ndarray) -> float:
    """A numpy model of netcal's ECE(equal_intervals=False) on float64 input: clip to
    [eps64, 1 - eps64], bin edges at np.quantile(conf, linspace(0, 1, B + 1)) with the first set
    to 0 and the last to 1, bins [a, b) (the last closed), as np.histogramdd."""
    eps = np.finfo(np.float64).eps
    c = np.clip(conf.astype(np.float64), eps, 1 - eps)
    edges = np.quantile(c, q=np.linspace(0.0, 1.0, BINS + 1))
    edges[0], edges[-1] = 0.0, 1.0
    b = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, BINS - 1)
    return ce_numpy(c, hit, edges, b, "l1")


def array_split_sizes(n: int, bins: int) -> np.ndarray:
    return np.array([len(part) for part in np.array_split(np.arange(n), bins)])


def adaptive_ece_numpy(conf: np.ndarray, hit: np.ndarray) -> tuple[float, int]:
    """Equal-mass ECE, numpy.array_split group sizes over the confidence-sorted examples; each
    example counts its tie group's mean accuracy (so straddling ties are split pro rata).
    Returns the ECE and the number of tie groups that straddle a bin cut."""
    n = len(conf)
    order = np.argsort(conf, kind="stable")
    c = conf[order].astype(np.float64)
    h = hit[order].astype(np.float64)
    _, first, counts = np.unique(c, return_index=True, return_counts=True)
    group_mean = np.add.reduceat(h, first) / counts
    h_eff = np.repeat(group_mean, counts)
    sizes = array_split_sizes(n, BINS)
    bin_of = np.repeat(np.arange(BINS), sizes)
    cuts = np.cumsum(sizes)[:-1]
    last = first + counts  # exclusive end of each tie group
    straddle = int(sum(np.any((first < cut) & (cut < last)) for cut in cuts))
    cs = np.bincount(bin_of, weights=c, minlength=BINS)
    hs = np.bincount(bin_of, weights=h_eff, minlength=BINS)
    return float(np.abs(hs - cs).sum() / n), straddle


def aurc_numpy(correct: np.ndarray, unc: np.ndarray) -> tuple[float, int]:
    """Area under the risk-coverage curve: mean over k of 1 - accuracy of the k least uncertain,
    ties by the expected count in a random order. Returns AURC and the number of tie groups."""
    n = len(correct)
    order = np.argsort(unc, kind="stable")
    u = unc[order]
    h = correct[order].astype(np.float64)
    _, first, counts = np.unique(u, return_index=True, return_counts=True)
    r = np.add.reduceat(h, first)
    before = np.concatenate([[0.0], np.cumsum(r)[:-1]])
    grp = np.repeat(np.arange(len(first)), counts)
    m = np.arange(n) - first[grp] + 1
    right = before[grp] + m * r[grp] / counts[grp]
    acc = right / np.arange(1, n + 1)
    return float(np.mean(1.0 - acc)), int(np.sum(counts > 1))


def brier_decomposition_numpy(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Murphy decomposition over the cells 'predicted class = k' (TFP's estimator, on the
    [0, 2] Brier scale): reliability, resolution, uncertainty."""
    n, k = p.shape
    pred, _ = top1(p)
    onehot = np.eye(k)[y]
    ybar = onehot.mean(axis=0)
    cell_mean = np.zeros((k, k))
    resolution = 0.0
    for c in range(k):
        m = pred == c
        if m.any():
            cell_mean[c] = onehot[m].mean(axis=0)
            resolution += m.sum() / n * np.sum((cell_mean[c] - ybar) ** 2)
    reliability = np.sum((p.astype(np.float64) - cell_mean[pred]) ** 2) / n
    return float(reliability), float(resolution), float(1.0 - np.sum(ybar**2))


def brier_covariance_numpy(p: np.ndarray, y: np.ndarray) -> float:
    """(2/N) sum_i (p_i - ybar_{cell(i)}) . (ybar_{cell(i)} - e_{y_i}), cells by predicted class."""
    n, k = p.shape
    pred, _ = top1(p)
    onehot = np.eye(k)[y]
    cell_mean = np.zeros((k, k))
    for c in range(k):
        if (pred == c).any():
            cell_mean[c] = onehot[pred == c].mean(axis=0)
    m = cell_mean[pred]
    return float(2.0 * np.sum((p.astype(np.float64) - m) * (m - onehot)) / n)


def ood_scores(d: dict, prefix: str, score: str) -> np.ndarray:
    if score == "max-prob":
        return 1.0 - d[f"{prefix}.probs"].max(axis=1).astype(np.float64)
    if score == "entropy":
        return d[f"{prefix}.predictive_entropy"].astype(np.float64)
    return d[f"{prefix}.mutual_information"].astype(np.float64)


def to_unit(s: np.ndarray) -> np.ndarray:
    """Affine map of float64 scores onto [0, 1], so torchmetrics does not apply a sigmoid
    (which can merge tiny entropies into ties at 0.5). Checked to keep order and ties."""
    lo, hi = s.min(), s.max()
    t = (s - lo) / (hi - lo)
    o = np.argsort(s, kind="stable")
    assert np.all(np.diff(t[o]) >= 0) and len(np.unique(t)) == len(np.unique(s)), "order not kept"
    return t


def fpr_at_tpr_sklearn(in_s: np.ndarray, out_s: np.ndarray) -> tuple[float, float]:
    """In-distribution positive, scored by -score: the FPR at the first ROC point (thresholds
    from high to low) with TPR >= 0.95 (all points kept: drop_intermediate=False), and, for
    information, the linearly interpolated FPR at TPR = 0.95."""
    y = np.r_[np.ones(len(in_s)), np.zeros(len(out_s))]
    s = -np.r_[in_s, out_s]
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    step = float(fpr[np.argmax(tpr >= 0.95)])
    interp = float(np.interp(0.95, tpr, fpr))
    return step, interp


def csv_value(row: dict, key: str) -> float | None:
    v = row.get(key, "")
    return None if v == "" else float(v)


# --------------------------------------------------------------------------------------------
# per run


def check_run(reg: Registry, run: str, row: dict, d: dict, facts: dict) -> None:
    p = d["test.probs"]
    y = d["test.labels"].astype(np.int64)
    n, k = p.shape
    p64 = p.astype(np.float64)
    pred, conf = top1(p)
    hit = (pred == y).astype(np.float64)
    pt, yt = torch.from_numpy(p.copy()), torch.from_numpy(y)
    facts[run] = {
        "N": n,
        "conf==1.0": int((conf == 1.0).sum()),
        "p_k==1.0": int((p == 1.0).sum()),
        "conf on a torch f32 edge": int(np.isin(conf, torch.linspace(0, 1, BINS + 1).numpy()[1:-1]).sum()),
        "top-1 ties": int(((p == conf[:, None]).sum(axis=1) > 1).sum()),
    }

    # accuracy
    acc = float(row["accuracy"])
    reg.add("accuracy", "sklearn accuracy_score", TOL_F64, run, acc, skm.accuracy_score(y, pred))
    tm_acc = MulticlassAccuracy(num_classes=k, average="micro")(pt, yt)
    reg.add("accuracy", "torchmetrics MulticlassAccuracy (f32)", TOL_F32, run, acc, float(tm_acc))

    # NLL
    nll = float(row["nll"])
    logp = torch.log(torch.from_numpy(p64).clamp_min(TINY32))
    reg.add("nll", "torch nll_loss(log clamp(p, f32 tiny)), f64", TOL_F64, run, nll,
            float(torch.nn.functional.nll_loss(logp, yt)))
    reg.add("nll", "sklearn log_loss (f64, clip 2.2e-16)", TOL_F64, run, nll,
            skm.log_loss(y, p64, labels=np.arange(k)))

    # Brier (sum over classes, [0, 2])
    brier = float(row["brier"])
    reg.add("brier", "sklearn brier_score_loss(scale_by_half=False)", TOL_F64, run, brier,
            skm.brier_score_loss(y, p64, labels=np.arange(k), scale_by_half=False))
    onehot = torch.nn.functional.one_hot(yt, k).double()
    reg.add("brier", "torch ((p - onehot)^2).sum(1).mean(), f64", TOL_F64, run, brier,
            float(((torch.from_numpy(p64) - onehot) ** 2).sum(1).mean()))
    rel, res, unc = brier_decomposition_numpy(p, y)
    src = "numpy re-implementation (no library; TFP not used)"
    reg.add("brier_reliability", src, TOL_F64, run, float(row["brier_reliability"]), rel)
    reg.add("brier_resolution", src, TOL_F64, run, float(row["brier_resolution"]), res)
    reg.add("brier_uncertainty", src, TOL_F64, run, float(row["brier_uncertainty"]), unc)
    # Murphy's identity brier = uncertainty - resolution + reliability holds for this estimator
    # only up to twice the within-cell covariance (2/N) sum_i (p_i - ybar_cell) . (ybar_cell - e_y)
    # (calibration.rs documents it); report.md states the identity without that term.
    gap = brier - (float(row["brier_uncertainty"]) - float(row["brier_resolution"]) + float(row["brier_reliability"]))
    reg.add("brier - (unc - res + rel)", "Murphy identity without covariance term (0) [info]", None, run, gap, 0.0)
    reg.add("brier - (unc - res + rel)", "2 x within-cell covariance, numpy", TOL_F64, run, gap,
            brier_covariance_numpy(p, y))

    # ECE / MCE, 15 equal-width bins over top-1 confidence
    for metric, norm in (("ece", "l1"), ("mce", "max")):
        ours = float(row[metric])
        shipped = float(MulticlassCalibrationError(num_classes=k, n_bins=BINS, norm=norm)(pt, yt))
        reg.add(metric, "torchmetrics MulticlassCalibrationError as shipped (f32) [info: 1.0 in extra bin]",
                None, run, ours, shipped)
        reg.add(metric, "  explanation: torchmetrics shipped vs numpy model of its binning",
                TOL_F32, run, ce_torchmetrics_shipped_model(conf, hit, norm), shipped)
        reg.add(metric, "  convention effect alone: numpy f64 with torchmetrics' shipped binning [info]", None,
                run, ours, ce_torchmetrics_shipped_model(conf, hit, norm))
        reg.add(metric, "torchmetrics _ce_compute, last edge above 1 (f32)", TOL_F32, run, ours,
                ce_aligned(conf, hit, norm, torch.float32))
        reg.add(metric, "torchmetrics _ce_compute, last edge above 1 (f64)", TOL_F64, run, ours,
                ce_aligned(conf, hit, norm, torch.float64))
        if netcal is not None:
            cls = NetcalECE if norm == "l1" else NetcalMCE
            reg.add(metric, f"netcal {cls.__name__}(bins=15), f32 input", TOL_NETCAL, run, ours,
                    cls(bins=BINS).measure(p, y))
            reg.add(metric, f"netcal {cls.__name__}(bins=15), f64 input", TOL_F64, run, ours,
                    cls(bins=BINS).measure(p64, y))

    # adaptive (equal-mass) ECE
    ada = float(row["adaptive_ece"])
    val, straddle = adaptive_ece_numpy(conf, hit)
    facts[run]["adaptive: ties straddling a cut"] = straddle
    reg.add("adaptive_ece", "numpy re-implementation (np.array_split bins)", TOL_F64, run, ada, val)
    if netcal is not None:
        # float64 input: with float32 input netcal counts with np.histogramdd (float64 edges) but
        # averages with scipy's binned_statistic_dd, which casts the edges to float32, so an
        # example equal to the float32 rounding of a quantile edge is counted in one bin and
        # averaged in the next (ensemble-5-s0: one example, 3.7e-6 on the ECE).
        nc = NetcalECE(bins=BINS, equal_intervals=False).measure(p64, y)
        reg.add("adaptive_ece", "netcal ECE(equal_intervals=False), f64 input [info: np.quantile edges]", None,
                run, ada, nc)
        reg.add("adaptive_ece", "  explanation: netcal (f64 input) vs numpy model of its quantile bins", TOL_F64, run,
                netcal_quantile_model(conf, hit), nc)

    # class-wise ECE and its per-class terms: one-vs-rest equal-width ECE of p_k vs 1[y = k]
    per_class = {"shipped": [], "f32": [], "f64": [], "netcal": [], "model": []}
    for c in range(k):
        pc, yc = p[:, c], (y == c).astype(np.int64)
        ours_c = float(row[f"calibration_class_{c}"])
        shipped = float(BinaryCalibrationError(n_bins=BINS, norm="l1")(torch.from_numpy(pc.copy()),
                                                                        torch.from_numpy(yc)))
        f32 = ce_aligned(pc, yc, "l1", torch.float32)
        f64 = ce_aligned(pc, yc, "l1", torch.float64)
        model = ce_torchmetrics_shipped_model(pc, yc, "l1")
        per_class["shipped"].append(shipped)
        per_class["f32"].append(f32)
        per_class["f64"].append(f64)
        per_class["model"].append(model)
        reg.add("calibration_class_k (all k)", "torchmetrics BinaryCalibrationError as shipped (f32) [info]",
                None, run, ours_c, shipped)
        reg.add("calibration_class_k (all k)", "torchmetrics _ce_compute, last edge above 1 (f64)", TOL_F64,
                run, ours_c, f64)
        if netcal is not None:
            nc = NetcalECE(bins=BINS).measure(pc, yc)
            per_class["netcal"].append(nc)
            reg.add("calibration_class_k (all k)", "netcal ECE(bins=15), binary p_k vs 1[y=k]", TOL_NETCAL,
                    run, ours_c, nc)
    cw = float(row["classwise_ece"])
    reg.add("classwise_ece", "mean_k torchmetrics BinaryCalibrationError as shipped (f32) [info]", None, run,
            cw, np.mean(per_class["shipped"]))
    reg.add("classwise_ece", "  explanation: torchmetrics shipped vs numpy model of its binning", TOL_F32, run,
            np.mean(per_class["model"]), np.mean(per_class["shipped"]))
    reg.add("classwise_ece", "mean_k torchmetrics _ce_compute, last edge above 1 (f32)", TOL_F32, run, cw,
            np.mean(per_class["f32"]))
    reg.add("classwise_ece", "mean_k torchmetrics _ce_compute, last edge above 1 (f64)", TOL_F64, run, cw,
            np.mean(per_class["f64"]))
    if netcal is not None:
        reg.add("classwise_ece", "mean_k netcal ECE(bins=15) one-vs-rest", TOL_NETCAL, run, cw,
                np.mean(per_class["netcal"]))

    # per-class accuracy (recall)
    rec_sk = skm.recall_score(y, pred, average=None, labels=np.arange(k))
    rec_tm = MulticlassAccuracy(num_classes=k, average="none")(pt, yt).numpy()
    for c in range(k):
        ours_c = float(row[f"accuracy_class_{c}"])
        reg.add("accuracy_class_k (all k)", "sklearn recall_score(average=None)", TOL_F64, run, ours_c, rec_sk[c])
        reg.add("accuracy_class_k (all k)", "torchmetrics MulticlassAccuracy(average='none') (f32)", TOL_F32,
                run, ours_c, rec_tm[c])

    # AURC, ranking by predictive entropy
    val, tie_groups = aurc_numpy(hit, d["test.predictive_entropy"])
    facts[run]["entropy tie groups (test)"] = tie_groups
    reg.add("aurc", "numpy re-implementation (no library)", TOL_F64, run, float(row["aurc"]), val)

    # predictive entropy stored in the arrays vs the entropy of the stored (float32) probabilities
    for prefix in ("test", "ood"):
        h = scipy.stats.entropy(d[f"{prefix}.probs"].astype(np.float64), axis=1)
        diff = np.abs(h - d[f"{prefix}.predictive_entropy"].astype(np.float64)).max()
        reg.add("arrays: predictive_entropy = H(probs)", "scipy.stats.entropy of the float32 probs", TOL_F32,
                run, 0.0, diff)

    # OOD detection
    if "ood.probs" in d:
        for score in SCORES:
            cells = {m: csv_value(row, f"ood_{m}_{score}") for m in ("auroc", "aupr_in", "aupr_out", "fpr95")}
            if cells["auroc"] is None:
                continue
            s_in, s_out = ood_scores(d, "test", score), ood_scores(d, "ood", score)
            is_out = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
            s = np.r_[s_in, s_out]
            tag = f"ood {{}} ({score})"
            reg.add(tag.format("auroc"), "sklearn roc_auc_score(OOD positive, score)", TOL_F64, run,
                    cells["auroc"], skm.roc_auc_score(is_out, s))
            reg.add(tag.format("aupr_out"), "sklearn average_precision_score(OOD positive, score)", TOL_F64,
                    run, cells["aupr_out"], skm.average_precision_score(is_out, s))
            reg.add(tag.format("aupr_in"), "sklearn average_precision_score(in positive, -score)", TOL_F64,
                    run, cells["aupr_in"], skm.average_precision_score(1 - is_out, -s))
            step, interp = fpr_at_tpr_sklearn(s_in, s_out)
            reg.add(tag.format("fpr95"), "sklearn roc_curve(in positive, -score): first TPR >= 0.95", TOL_F64,
                    run, cells["fpr95"], step)
            reg.add(tag.format("fpr95"), "sklearn roc_curve, linear interpolation at TPR = 0.95 [info]", None,
                    run, cells["fpr95"], interp)
            # torchmetrics second opinion (float64 inputs mapped onto [0, 1])
            t_out = torch.from_numpy(to_unit(s))
            t_in = torch.from_numpy(to_unit(-s))
            lab_out = torch.from_numpy(is_out.astype(np.int64))
            lab_in = 1 - lab_out
            reg.add(tag.format("auroc"), "torchmetrics BinaryAUROC", TOL_F32, run, cells["auroc"],
                    float(BinaryAUROC()(t_out, lab_out)))
            reg.add(tag.format("aupr_out"), "torchmetrics BinaryAveragePrecision", TOL_F32, run,
                    cells["aupr_out"], float(BinaryAveragePrecision()(t_out, lab_out)))
            reg.add(tag.format("aupr_in"), "torchmetrics BinaryAveragePrecision", TOL_F32, run,
                    cells["aupr_in"], float(BinaryAveragePrecision()(t_in, lab_in)))
            spec, _ = BinarySpecificityAtSensitivity(min_sensitivity=0.95)(t_in, lab_in)
            reg.add(tag.format("fpr95"), "torchmetrics 1 - BinarySpecificityAtSensitivity(0.95)", TOL_F32, run,
                    cells["fpr95"], 1.0 - float(spec))

    # shifted test sets: accuracy and ECE columns
    for key in sorted(kk for kk in d if kk.startswith("shift.") and kk.endswith(".probs")):
        _, kind, sev, _ = key.split(".")
        ps, ys = d[key], d[key.replace(".probs", ".labels")].astype(np.int64)
        pr, cf = top1(ps)
        ht = (pr == ys).astype(np.float64)
        acc_c, ece_c = csv_value(row, f"accuracy_{kind}_{sev}"), csv_value(row, f"ece_{kind}_{sev}")
        if acc_c is None:
            continue
        reg.add("shift accuracy (all shifts)", "sklearn accuracy_score", TOL_F64, run, acc_c,
                skm.accuracy_score(ys, pr))
        tpp, tyy = torch.from_numpy(ps.copy()), torch.from_numpy(ys)
        reg.add("shift ece (all shifts)", "torchmetrics MulticlassCalibrationError as shipped (f32) [info]",
                None, run, ece_c, float(MulticlassCalibrationError(num_classes=k, n_bins=BINS)(tpp, tyy)))
        reg.add("shift ece (all shifts)", "torchmetrics _ce_compute, last edge above 1 (f64)", TOL_F64, run,
                ece_c, ce_aligned(cf, ht, "l1", torch.float64))
        if netcal is not None:
            reg.add("shift ece (all shifts)", "netcal ECE(bins=15)", TOL_NETCAL, run, ece_c,
                    NetcalECE(bins=BINS).measure(ps, ys))


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", nargs="?", default="results/report-lenet5", type=Path)
    args = ap.parse_args()
    with open(args.report / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    print("# secateur report metrics vs independent libraries\n")
    print(f"report: `{args.report}`, {len(rows)} runs\n")
    versions = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "torchmetrics": torchmetrics.__version__,
        "scikit-learn": sklearn.__version__,
        "netcal": getattr(netcal, "__version__", "not installed") if netcal else "not installed",
    }
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    reg = Registry()
    facts: dict[str, dict] = {}
    for row in rows:
        run = row["run"]
        d = load_file(str(args.report / "arrays" / f"{run}.safetensors"))
        with warnings.catch_warnings():
            # float32 rows sum to 1 within 3e-7; sklearn warns above 1.5e-8 (and does not
            # renormalise, so the warning changes nothing)
            warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
            check_run(reg, run, row, d, facts)

    print("## Facts about the arrays that decide the convention differences\n")
    cols = list(next(iter(facts.values())).keys())
    print("| run | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for run, fa in facts.items():
        print(f"| {run} | " + " | ".join(str(fa[c]) for c in cols) + " |")

    print("\n## Largest absolute difference over the runs\n")
    print("| metric | library / method | values | max abs diff | worst run | tolerance | status |")
    print("|---|---|---|---|---|---|---|")
    failed = []
    for c in reg.checks.values():
        tol = "info" if c.tol is None else f"{c.tol:.0e}"
        status = "info" if c.tol is None else ("ok" if c.ok else "FAIL")
        if not c.ok:
            failed.append(c)
        worst_run = c.worst_run if c.worst > 0 else "(none: all equal)"
        print(f"| {c.metric} | {c.source} | {c.n} | {c.worst:.3e} | {worst_run} | {tol} | {status} |")
    print("\nNot checked: `temperature`, `nll_before_t`, `nll_after_t`, `ece_before_t`, `ece_after_t` "
          "(fitted and evaluated on halves of the test set drawn by secateur's seeded RNG; the split is "
          "not saved in the arrays).")
    if failed:
        print(f"\n{len(failed)} strict check(s) FAILED:")
        for c in failed:
            print(f"- {c.metric} / {c.source}: {c.worst:.3e} > {c.tol:.0e} (run {c.worst_run})")
        return 1
    print("\nAll strict checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
