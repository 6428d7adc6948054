#!/usr/bin/env python3
"""bayesian-torch side of the secateur quality comparison (issue 23), and its table.

One run of the recipe of ``experiments/configs/quality-lenet5-{mean-field,flipout,mc-dropout}.toml``
in PyTorch, printed as one JSON line:

    python bench/quality_compare.py --kind mean-field --seed 0 --threads 2 \\
        --data data/fashion-mnist-mini [--epochs 25] [--kl library|sum]

    {"library": "bayesian-torch", "kind": "mean-field", "seed": 0, "test_accuracy": ...,
     "test_nll": ..., "test_brier": ..., "test_ece": ..., "wall_seconds": ..., ...}

The table of a sweep (``bench/quality_compare.sh`` writes ``runs.jsonl``), standard library only:

    python3 bench/quality_compare.py --table runs/quality-compare/runs.jsonl

The recipe, as secateur runs it:

- data: the gzip IDX files in ``--data`` (10,000 train / 2,000 test), pixels ``p / 255``
  normalised by ONE mean and std over all training pixels (population std), computed from integer
  sums in float64 and applied in float32 as ``p * (1 / (255 std)) - mean / std``
  (``datasets/src/image_set.rs`` ``pixel_stats``, ``datasets/src/batch.rs`` ``image_batch``);
- LeNet-5 (``models/src/arch/lenet.rs``): conv1 6@5x5 pad 2 -> max-pool 2 -> ReLU -> conv2
  16@5x5 -> max-pool 2 -> ReLU -> flatten (400) -> fc1 120 -> ReLU -> fc2 84 -> ReLU -> fc3 10
  (ReLU after the pool, as secateur; the two orders give the same function);
- ``mean-field``: bayesian-torch ``Conv2dReparameterization`` / ``LinearReparameterization``;
  ``flipout``: ``Conv2dFlipout`` / ``LinearFlipout``; prior N(0, 1), ``posterior_mu_init`` 0,
  ``posterior_rho_init`` -3, Bayesian biases (bayesian-torch's own initialisation:
  mu ~ N(0, 0.1), rho ~ N(-3, 0.1));
- ``mc-dropout``: plain ``nn.Conv2d`` / ``nn.Linear`` (PyTorch's default initialisation), each
  preceded by inverted element-wise dropout p = 0.1 — all five layers, conv1 (on the pixels) and
  the classifier included (``models/src/bayes_factory.rs`` ``McDropoutFactory``); kept on at test;
- Adam lr 1e-3, batch 64, a fresh permutation per epoch from a ``torch.Generator`` seeded with the
  seed, last partial batch kept, one forward sample per step; loss = mean cross-entropy
  + KL / N_train (N_train = 10,000) for the Bayesian kinds, mean cross-entropy for MC dropout;
- test: softmax probabilities averaged over 10 forward samples (eval batch 1000), metrics as
  ``inference/src/metrics.rs`` ``classification_metrics``.

``--kl library`` (the default) takes the KL as bayesian-torch computes it
(``bayesian_torch.models.dnn_to_bnn.get_kl_loss``: per layer, the MEAN over the weight tensor's
elements plus the MEAN over the bias's elements, summed over layers). ``--kl sum`` takes the
closed-form KL summed over every weight and bias, which is what secateur's ELBO uses
(``bayes/src/divergence.rs`` ``kl_gaussian``); the runs are then labelled
``bayesian-torch/kl-sum``.
"""

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import struct
import sys
import time

KINDS = ("mean-field", "flipout", "mc-dropout")
N_BINS = 15  # secateur's CALIBRATION_BINS
F32_MIN_POSITIVE = 1.1754943508222875e-38  # f32::MIN_POSITIVE, secateur's NLL clamp


# --------------------------------------------------------------------------------------------
# data


def read_idx(path):
    """A gzip IDX file as (dims, raw bytes)."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", buf[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, buf[4 : 4 + 4 * ndim])
    body = buf[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise ValueError(f"{path}: {len(body)} bytes for dims {dims}")
    return dims, body


def load_split(data_dir, prefix):
    import numpy as np

    idims, ibody = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    ldims, lbody = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if len(idims) != 3 or ldims[0] != idims[0]:
        raise ValueError(f"{data_dir}/{prefix}: images {idims} vs labels {ldims}")
    images = np.frombuffer(ibody, dtype=np.uint8).reshape(idims[0], 1, idims[1], idims[2])
    labels = np.frombuffer(lbody, dtype=np.uint8).astype(np.int64)
    return images, labels


def normalizer(train_images):
    """(mean, std) of the training pixels scaled to [0, 1], as secateur's ``pixel_stats``:
    exact integer sums, float64 moments, population variance, then float32."""
    import numpy as np

    px = train_images.reshape(-1).astype(np.uint64)
    count = float(px.size)
    s = int(px.sum())
    sq = int((px * px).sum())
    m = s / count
    var = max(sq / count - m * m, 0.0)
    mean = np.float32(m / 255.0)
    std = np.float32(math.sqrt(var) / 255.0)
    if not (np.isfinite(std) and std > 0):
        std = np.float32(1.0)
    return mean, std


def normalise(images, mean, std):
    """``p * (1 / (255 std)) - mean / std`` in float32, as secateur's ``image_batch``."""
    import numpy as np

    scale = np.float32(1.0) / (np.float32(255.0) * std)
    shift = mean / std
    return images.astype(np.float32) * scale - shift


# --------------------------------------------------------------------------------------------
# model


def build_model(kind, dropout_p):
    import torch.nn as nn
    import torch.nn.functional as F

    if kind in ("mean-field", "flipout"):
        from bayesian_torch.layers import (
            Conv2dFlipout,
            Conv2dReparameterization,
            LinearFlipout,
            LinearReparameterization,
        )

        conv_cls, lin_cls = (
            (Conv2dReparameterization, LinearReparameterization)
            if kind == "mean-field"
            else (Conv2dFlipout, LinearFlipout)
        )
        prior = dict(prior_mean=0.0, prior_variance=1.0, posterior_mu_init=0.0, posterior_rho_init=-3.0, bias=True)

        def conv(cin, cout, k, pad=0):
            return conv_cls(cin, cout, k, padding=pad, **prior)

        def lin(i, o):
            return lin_cls(i, o, **prior)

    else:

        def conv(cin, cout, k, pad=0):
            return nn.Conv2d(cin, cout, k, padding=pad)

        def lin(i, o):
            return nn.Linear(i, o)

    bayesian = kind != "mc-dropout"

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            # in secateur's construction order (conv1, conv2, fc1, fc2, fc3)
            self.conv1 = conv(1, 6, 5, pad=2)
            self.conv2 = conv(6, 16, 5)
            self.fc1 = lin(16 * 5 * 5, 120)
            self.fc2 = lin(120, 84)
            self.fc3 = lin(84, 10)
            # MC dropout: on the input of every weight layer (identity for the Bayesian kinds)
            n = 5 if not bayesian else 0
            self.drops = nn.ModuleList([nn.Dropout(p=dropout_p) for _ in range(n)])

        def layer(self, i, module, x):
            if not bayesian:
                return module(self.drops[i](x))
            return module(x, return_kl=False)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.layer(0, self.conv1, x), 2))
            x = F.relu(F.max_pool2d(self.layer(1, self.conv2, x), 2))
            x = x.flatten(1)
            x = F.relu(self.layer(2, self.fc1, x))
            x = F.relu(self.layer(3, self.fc2, x))
            return self.layer(4, self.fc3, x)

    return LeNet5()


def kl_library(model):
    """bayesian-torch's own KL: ``get_kl_loss`` (the layers' ``kl_loss()`` summed)."""
    from bayesian_torch.models.dnn_to_bnn import get_kl_loss

    return get_kl_loss(model)


def kl_sum(model):
    """The closed-form KL(q || p) summed over every weight and bias element (secateur's)."""
    import torch

    total = None
    for m in model.modules():
        if not hasattr(m, "kl_loss"):
            continue
        pairs = []
        if hasattr(m, "mu_kernel"):
            pairs.append((m.mu_kernel, m.rho_kernel, m.prior_weight_mu, m.prior_weight_sigma))
        else:
            pairs.append((m.mu_weight, m.rho_weight, m.prior_weight_mu, m.prior_weight_sigma))
        if getattr(m, "mu_bias", None) is not None:
            pairs.append((m.mu_bias, m.rho_bias, m.prior_bias_mu, m.prior_bias_sigma))
        for mu, rho, pmu, psig in pairs:
            sig = torch.nn.functional.softplus(rho)
            kl = (torch.log(psig) - torch.log(sig) + (sig * sig + (mu - pmu) ** 2) / (2 * psig * psig) - 0.5).sum()
            total = kl if total is None else total + kl
    return total


# --------------------------------------------------------------------------------------------
# metrics (secateur's inference/src/metrics.rs classification_metrics)


def classification_metrics(probs, labels):
    """accuracy, NLL, Brier, ECE of float32 probabilities [N, K] against integer labels."""
    import numpy as np

    p = np.asarray(probs, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    n, k = p.shape
    pred = np.argmax(p, axis=1)  # first maximum: lowest index on ties, as secateur's top1
    conf = p[np.arange(n), pred].astype(np.float64)
    correct = pred == y
    accuracy = float(correct.sum()) / n
    py = np.maximum(p[np.arange(n), y].astype(np.float64), F32_MIN_POSITIVE)
    nll = float(-np.log(py).sum()) / n
    onehot = np.zeros((n, k), dtype=np.float64)
    onehot[np.arange(n), y] = 1.0
    brier = float(((p.astype(np.float64) - onehot) ** 2).sum()) / n
    # bins (b/B, (b+1)/B]; bin = number of interior edges b/B (b = 1..B-1) strictly below conf
    edges = np.arange(1, N_BINS, dtype=np.float64) / N_BINS
    b = np.searchsorted(edges, conf, side="left")
    ece = 0.0
    for i in range(N_BINS):
        sel = b == i
        c = int(sel.sum())
        if c == 0:
            continue
        gap = abs(correct[sel].sum() / c - conf[sel].sum() / c)
        ece += c / n * gap
    return {"test_accuracy": accuracy, "test_nll": nll, "test_brier": brier, "test_ece": float(ece)}


# --------------------------------------------------------------------------------------------
# one run


def run(args):
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)

    train_x, train_y = load_split(args.data, "train")
    test_x, test_y = load_split(args.data, "t10k")
    mean, std = normalizer(train_x)
    xtr = torch.from_numpy(normalise(train_x, mean, std))
    ytr = torch.from_numpy(train_y)
    xte = torch.from_numpy(normalise(test_x, mean, std))
    n_train = xtr.shape[0]

    model = build_model(args.kind, args.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator()
    gen.manual_seed(args.seed)
    bayesian = args.kind != "mc-dropout"
    kl_fn = (kl_library if args.kl == "library" else kl_sum) if bayesian else None

    t0 = time.perf_counter()
    model.train()
    last_loss = float("nan")
    for _epoch in range(args.epochs):
        perm = torch.randperm(n_train, generator=gen)
        for start in range(0, n_train, args.batch):
            idx = perm[start : start + args.batch]
            xb, yb = xtr[idx], ytr[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if kl_fn is not None:
                loss = loss + kl_fn(model) / n_train
            loss.backward()
            opt.step()
        last_loss = float(loss.detach())

    # test: model stays in train mode (dropout on); bayesian-torch layers sample in any mode
    model.train()
    probs = np.zeros((xte.shape[0], 10), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, xte.shape[0], args.eval_batch):
            xb = xte[start : start + args.eval_batch]
            acc = np.zeros((xb.shape[0], 10), dtype=np.float64)
            for _ in range(args.samples):
                acc += torch.softmax(model(xb), dim=1).numpy().astype(np.float64)
            probs[start : start + xb.shape[0]] = acc / args.samples
    metrics = classification_metrics(probs.astype(np.float32), test_y)
    wall = time.perf_counter() - t0

    import bayesian_torch  # noqa: F401  (version below)

    out = {
        "library": "bayesian-torch" if (not bayesian or args.kl == "library") else "bayesian-torch/kl-sum",
        "kind": args.kind,
        "seed": args.seed,
        **metrics,
        "wall_seconds": wall,
        "epochs": args.epochs,
        "kl": (args.kl if bayesian else "none"),
        "final_train_loss": last_loss,
        "threads": args.threads,
        "torch": torch.__version__,
        "bayesian_torch": _bt_version(),
    }
    print(json.dumps(out), flush=True)


def _bt_version():
    try:
        from importlib.metadata import version

        return version("bayesian-torch")
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------------------------
# table (standard library only)


def _ms(xs, digits):
    if not xs:
        return "–"
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    versions = {}
    for r in rows:
        for key in ("torch", "bayesian_torch", "secateur"):
            if r.get(key):
                versions.setdefault(key, set()).add(str(r[key]))
    epochs = sorted({r.get("epochs") for r in rows if r.get("epochs") is not None})
    print("## Quality comparison: secateur vs bayesian-torch, LeNet-5 on fashion-mnist-mini\n")
    print(f"- CPU: {_cpu_model()}")
    print(f"- torch {', '.join(sorted(versions.get('torch', {'?'})))}, "
          f"bayesian-torch {', '.join(sorted(versions.get('bayesian_torch', {'?'})))}, "
          f"secateur {', '.join(sorted(versions.get('secateur', {'?'})))}")
    if epochs:
        print(f"- epochs: {', '.join(str(e) for e in epochs)}; runs file: {path}")
    print("- mean ± sample std over seeds; metrics on 10-sample averaged test predictions (2,000 images);")
    print("  the bayesian-torch rows of mc-dropout are plain PyTorch (nn.Dropout)\n")
    print("| kind | library | accuracy | NLL | Brier | ECE | wall s | seeds |")
    print("|---|---|---|---|---|---|---|---|")
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    kinds += sorted({r["kind"] for r in rows} - set(kinds))
    libs_all = sorted({r["library"] for r in rows}, key=lambda l: (l != "secateur", l))
    by = {}
    for r in rows:
        by.setdefault((r["kind"], r["library"]), {})[r["seed"]] = r
    for k in kinds:
        for lib in libs_all:
            runs = by.get((k, lib))
            if not runs:
                continue
            rs = [runs[s] for s in sorted(runs)]
            col = lambda key: [float(r[key]) for r in rs]  # noqa: E731
            print(f"| {k} | {lib} | {_ms(col('test_accuracy'), 4)} | {_ms(col('test_nll'), 4)} | "
                  f"{_ms(col('test_brier'), 4)} | {_ms(col('test_ece'), 4)} | {_ms(col('wall_seconds'), 1)} | {len(rs)} |")
    print("\nPaired per-seed difference (secateur − bayesian-torch) between runs of one objective, "
          "mean ± sample std over the common seeds:\n")
    print("| kind | secateur | vs | Δ accuracy | Δ NLL | seeds |")
    print("|---|---|---|---|---|---|")
    # same objective: the ELBO's summed KL, or bayesian-torch's per-tensor mean (mc-dropout: no KL)
    pairs = [("secateur", "bayesian-torch/kl-sum"), ("secateur/tensor-mean", "bayesian-torch")]
    for k in kinds:
        for mine, lib in pairs + ([("secateur", "bayesian-torch")] if k == "mc-dropout" else []):
            sec = by.get((k, mine), {})
            other = by.get((k, lib), {})
            seeds = sorted(set(sec) & set(other))
            if not seeds:
                continue
            da = [float(sec[s]["test_accuracy"]) - float(other[s]["test_accuracy"]) for s in seeds]
            dn = [float(sec[s]["test_nll"]) - float(other[s]["test_nll"]) for s in seeds]
            print(f"| {k} | {mine} | {lib} | {_ms(da, 4)} | {_ms(dn, 4)} | {len(seeds)} |")


# --------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", metavar="RUNS_JSONL", help="print the Markdown table of a runs.jsonl and exit")
    ap.add_argument("--kind", choices=KINDS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="data/fashion-mnist-mini")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--kl", choices=("library", "sum"), default="library",
                    help="KL term: bayesian-torch's get_kl_loss (per-tensor means, default) or the full sum")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-batch", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=10, help="test forward samples")
    ap.add_argument("--dropout", type=float, default=0.1, help="MC-dropout p")
    args = ap.parse_args(argv)
    if args.table:
        table(args.table)
        return 0
    if not args.kind:
        ap.error("--kind is required (or --table)")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
