#!/usr/bin/env python3
"""PyTorch side of the end-to-end epoch comparison (issue 24): one shipped secateur config's
recipe, trained for a few epochs in plain PyTorch on the CPU, each epoch timed with its
evaluation:

    python bench/pytorch_epoch.py --config experiments/configs/sparse-vd-lenet300.toml \\
        --epochs 3 --threads 2 [--beta-max] [--json]

    {"impl": "pytorch", "config": "...", "epochs": [{"epoch": 1, "train_s": ..., "eval_s": ...,
     "train_loss": ..., "test_accuracy": ...}, ...], ...}

``bench/epoch_compare.sh`` runs it beside ``secateur train`` (whose ``history.csv`` has the same
two times per epoch, ``seconds`` and ``eval_seconds``) and writes the table.

What is reproduced from the config (``experiments/src/config.rs``), and how:

- data: ``fashion-mnist-mini`` (the gzip IDX files, pixels normalised by one mean and std over
  the training pixels, as ``bench/quality_compare.py``); ``wine-quality-red`` and ``diabetes``
  (the CSV, a random ``test_fraction`` of the rows held out, features and target standardised
  by the training rows' mean and std). A fresh permutation of the training set per epoch, the
  last partial batch kept;
- ``model.arch`` ``mlp`` (``model.hidden``, default 300-100), ``lenet5``, ``resnet20`` (one input
  channel, option-A shortcuts) and ``vgg11`` (CIFAR form with batch norm, the pools that would
  shrink a side below 1 skipped, global average pool, one linear classifier, as
  ``models/src/arch/vgg.rs``);
- ``model.layers``: ``deterministic``, ``mean-field`` (``bayes.init_std``; prior N(0, σ_p) with
  ``bayes.prior.std``), ``sparse-vd``, ``variational-dropout``, ``mc-dropout``
  (``bayes.mc_dropout_p``) and ``gsm-gates`` (``bayes.gate_*``), the plain-PyTorch layers of
  ``bench/pytorch_step.py``, with ``bayes.sampling`` (local, weight, flipout);
- loss: mean NLL + β · T · divergence / N (cross-entropy, or the Gaussian NLL on standardised
  targets with ``likelihood.noise``: ``σ = softplus(raw) + min_std`` from the net's second output,
  one learned log σ starting at ``std / y_std``, or ``std / y_std`` fixed), β from ``bayes.beta``
  at the epoch (``--beta-max``: its largest value from the first step); one forward sample per
  step (configs with ``mc_samples > 1`` are refused);
- mean-field posteriors start as ``bayes.posterior_init`` says (``torch``, ``bayesian-torch``,
  ``blundell``), with the KL to N(0, ``bayes.prior.std``²); other priors are refused;
- optimiser: ``sgd`` (``torch.optim.SGD`` with momentum, Nesterov, coupled weight decay) or
  ``adamw`` (``torch.optim.AdamW``); ``train.schedule`` ``constant`` or ``cosine`` (per epoch);
- the epoch's evaluation: the posterior-mean network (``bayes.eval_every_epoch = "mean"``, the
  default) in one pass over the test set at ``data.eval_batch_size``, then accuracy, NLL, Brier
  and ECE (or RMSE and NLL for a regression) as secateur's ``history.csv`` records them.

A config whose recipe is outside this list (a layer kind without a PyTorch version here, a
training hook, a study) is reported with ``"supported": false`` and the reason, not run.
"""

import argparse
import json
import math
import os
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_step as ps  # noqa: E402
from quality_compare import classification_metrics, load_split, normalise, normalizer  # noqa: E402

KINDS = ("deterministic", "mean-field", "sparse-vd", "variational-dropout", "mc-dropout", "gsm-gates")
ARCHS = ("mlp", "lenet5", "resnet20", "vgg11")
#: Config sections that change what a run does beyond the recipe above (training hooks, studies).
HOOK_SECTIONS = ("greg", "posterior", "pruning", "scl", "study", "runs", "compression")


class Vgg(nn.Module):
    """VGG with batch norm, CIFAR form (``models/src/arch/vgg.rs``): 3×3 convolutions with bias,
    padding 1, each followed by batch norm and ReLU; a 2×2 max pool that would shrink a side
    below 1 is skipped; global average pool; ``Linear(last width, classes)``."""

    CFG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, cfg=CFG11, in_ch=1, side=28, classes=10):
        super().__init__()
        layers, ch = [], in_ch
        for item in cfg:
            if item == "M":
                if side // 2 >= 1:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
            else:
                layers += [nn.Conv2d(ch, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                ch = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(ch, classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def unsupported(reason):
    return {"impl": "pytorch", "supported": False, "reason": reason}


def recipe_problem(cfg):
    """Why the recipe of ``cfg`` is outside what this script reproduces, or None."""
    for sec in HOOK_SECTIONS:
        if sec in cfg:
            return f"[{sec}] shapes the run (a hook or a study), not reproduced here"
    if "runs" in cfg or "data" not in cfg or "model" not in cfg:
        return "not a single `train` run"
    data = cfg["data"].get("name", "")
    if data not in ("fashion-mnist-mini", "wine-quality-red", "diabetes"):
        return f"dataset {data!r} is not shipped in data/"
    if cfg["data"].get("augment", False):
        return "augmentation is not reproduced"
    arch, kind = cfg["model"].get("arch"), cfg["model"].get("layers", "deterministic")
    if arch not in ARCHS:
        return f"arch {arch!r} has no PyTorch version here"
    if kind not in KINDS:
        return f"layer kind {kind!r} has no PyTorch version here"
    if kind != "deterministic" and arch not in ("mlp", "lenet5"):
        return f"layer kind {kind!r} on {arch} has no PyTorch version here"
    if cfg["data"].get("val_fraction", 0.0) > 0:
        return "a validation split is not reproduced"
    if cfg["model"].get("widths") is not None or cfg["model"].get("dtype", "f32") != "f32":
        return "model.widths / model.dtype are not reproduced"
    bayes = cfg.get("bayes", {})
    prior = bayes.get("prior", {"kind": "gaussian"})
    if prior.get("kind", "gaussian") != "gaussian" or prior.get("mean", 0.0) != 0.0 or bayes.get("layer_priors"):
        return "a prior other than one zero-mean Gaussian is not reproduced"
    if bayes.get("kl_reduction", "sum") != "sum":
        return "bayes.kl_reduction other than `sum` is not reproduced"
    if bayes.get("mc_samples", 1) != 1:
        return "mc_samples > 1 (secateur: one pass over the batch tiled S times) is not reproduced"
    if bayes.get("divergence", "kl") != "kl":
        return f"divergence {bayes['divergence']!r} is not reproduced"
    if bayes.get("eval_every_epoch", "mean") != "mean":
        return "a Monte Carlo evaluation every epoch is not reproduced"
    if bayes.get("init_from") is not None:
        return "empirical-Bayes initialisation is not reproduced"
    if cfg.get("optim", {}).get("kind", "sgd") not in ("sgd", "adamw"):
        return f"optimiser {cfg['optim']['kind']!r} is not reproduced"
    sched = cfg.get("train", {}).get("schedule", {"kind": "constant"})
    if sched.get("kind", "constant") not in ("constant", "cosine") or sched.get("warmup", 0):
        return f"schedule {sched} is not reproduced"
    return None


def load_table(path, test_fraction, gen):
    """A CSV of numbers (last column the target) split at random; standardised by the training
    rows. Returns the four tensors and the target's standard deviation (its unit)."""
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    n = raw.shape[0]
    n_test = max(1, round(n * test_fraction))
    perm = torch.randperm(n, generator=gen).numpy()
    tr, te = raw[perm[n_test:]], raw[perm[:n_test]]
    mean, std = tr.mean(0), tr.std(0)
    std[std == 0] = 1.0
    z = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    ztr, zte = z(tr), z(te)
    return ztr[:, :-1], ztr[:, -1], zte[:, :-1], zte[:, -1], float(std[-1])


def beta_at(spec, epoch, top=False):
    """β of ``bayes.beta`` at the start of ``epoch`` (from 0), or its largest value with ``top``."""
    kind = spec.get("kind", "constant")
    if kind == "constant":
        return spec.get("value", 1.0)
    mx = spec.get("max", 1.0)
    if top:
        return mx
    if kind == "linear":
        w = spec.get("warmup", 0.0)
        t = epoch - spec.get("delay", 0.0)
        return mx * (1.0 if w == 0 and t >= 0 else min(max(t / w, 0.0), 1.0) if w else 0.0)
    if kind == "cyclical":
        tau = (epoch % spec["period"]) / spec["period"]
        return mx * min(1.0, tau / spec.get("ratio", 0.5))
    raise ValueError(f"bayes.beta kind {kind!r}")


def lr_at(cfg, epoch):
    base = cfg.get("optim", {}).get("lr", 0.05)
    s = cfg.get("train", {}).get("schedule", {"kind": "constant"})
    if s.get("kind", "constant") == "cosine":
        total, lo = s["total"], s.get("min_lr", 0.0)
        if epoch >= total:
            return lo
        return lo + (base - lo) * (1 + math.cos(math.pi * epoch / total)) / 2
    return base


def build(cfg, in_shape, outputs):
    arch = cfg["model"]["arch"]
    kind = cfg["model"].get("layers", "deterministic")
    bayes = cfg.get("bayes", {})
    sampling = bayes.get("sampling", "local")
    ps.GSM_SHAPE = bayes.get("gate_shape", ps.GSM_SHAPE)
    ps.GSM_SCALE = bayes.get("gate_scale", ps.GSM_SCALE)
    ps.GSM_UNIT_COST = bayes.get("gate_unit_cost", ps.GSM_UNIT_COST)
    ps.GSM_INIT_INCLUSION = bayes.get("gate_init_inclusion", ps.GSM_INIT_INCLUSION)
    ps.GSM_LR_SCALE = bayes.get("gate_lr_scale", ps.GSM_LR_SCALE)
    ps.GSM_THRESHOLD = bayes.get("gate_threshold", ps.GSM_THRESHOLD)
    ps.SVD_THRESHOLD = bayes.get("sparse_vd_threshold", ps.SVD_THRESHOLD)
    linear, conv = ps.layer_factory(
        kind,
        sampling,
        init_std=bayes.get("init_std", ps.MEAN_FIELD_INIT_STD),
        vd_granularity=bayes.get("vd_granularity", "weight"),
        dropout=bayes.get("mc_dropout_p", ps.MC_DROPOUT_P),
    )
    if arch == "mlp":
        hidden = tuple(cfg["model"].get("hidden", (300, 100)))
        model = ps.Mlp(inp=math.prod(in_shape), hidden=hidden, classes=outputs, linear=linear)
    elif arch == "lenet5":
        model = ps.LeNet5(classes=outputs, linear=linear, conv=conv)
    elif arch == "resnet20":
        model = ps.ResNetCifar(20, classes=outputs, in_ch=in_shape[0])
    else:
        model = Vgg(in_ch=in_shape[0], side=in_shape[1], classes=outputs)
    init_posterior(model, bayes)
    return model


def init_posterior(model, bayes):
    """The mean-field layers' prior σ and ``bayes.posterior_init`` (``PosteriorInit`` of
    ``bayes/src/layers``): ``torch`` keeps PyTorch's μ and ρ = ρ₀; ``bayesian-torch`` draws
    μ ~ N(0, 0.1) and ρ ~ N(ρ₀, 0.1); ``blundell`` μ ~ U(±0.2) and ρ ~ U(ρ₀ ± ½)."""
    how = bayes.get("posterior_init", "torch")
    rho0 = ps.inv_softplus(bayes.get("init_std", ps.MEAN_FIELD_INIT_STD))
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, ps.MeanFieldLayer):
                continue
            m.prior_std = bayes.get("prior", {}).get("std", 1.0)
            for mu, rho in ((m.weight_mu, m.weight_rho), (m.bias_mu, m.bias_rho)):
                if how == "bayesian-torch":
                    mu.normal_(0.0, 0.1)
                    rho.normal_(rho0, 0.1)
                elif how == "blundell":
                    mu.uniform_(-0.2, 0.2)
                    rho.uniform_(rho0 - 0.5, rho0 + 0.5)
                elif how != "torch":
                    raise ValueError(f"bayes.posterior_init {how!r}")


def set_mean_mode(model, on):
    for m in model.modules():
        m.mean_mode = on


def run(args):
    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    why = recipe_problem(cfg)
    if why is not None:
        return {**unsupported(why), "config": args.config}

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    seed = cfg.get("seed", 0)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)

    data = cfg["data"]
    dname = data["name"]
    root = os.path.join(args.data_root, dname)
    lik = cfg.get("likelihood", {})
    regression = lik.get("kind", "categorical") == "gaussian"
    if dname == "fashion-mnist-mini":
        train_x, train_y = load_split(root, "train")
        test_x, test_y = load_split(root, "t10k")
        mean, std = normalizer(train_x)
        xtr, ytr = torch.from_numpy(normalise(train_x, mean, std)), torch.from_numpy(train_y)
        xte, yte = torch.from_numpy(normalise(test_x, mean, std)), torch.from_numpy(test_y)
        outputs = 10
    else:
        csv = {"wine-quality-red": "winequality-red.csv", "diabetes": "diabetes.csv"}[dname]
        xtr, ytr, xte, yte, y_unit = load_table(os.path.join(root, csv), data.get("test_fraction", 0.1), gen)
        outputs = 2 if lik.get("noise", "heteroscedastic") == "heteroscedastic" else 1
        if not regression:
            return {**unsupported("a table dataset with a categorical likelihood"), "config": args.config}
    min_std = lik.get("min_std", 1e-3)

    model = build(cfg, tuple(xtr.shape[1:]), outputs).float()
    variational = any(isinstance(m, ps._Variational) for m in model.modules())
    params = list(model.parameters())
    noise = lik.get("noise", "heteroscedastic")
    log_std = None
    if regression and noise == "homoscedastic":
        # one learned log σ on standardised targets, starting at std / y_std
        log_std = nn.Parameter(torch.tensor(math.log(lik.get("std", 1.0) / y_unit)))
        params.append(log_std)
    o = cfg.get("optim", {})
    if o.get("kind", "sgd") == "sgd":
        opt = torch.optim.SGD(
            params,
            lr=o.get("lr", 0.05),
            momentum=o.get("momentum", 0.9),
            nesterov=o.get("nesterov", False),
            weight_decay=o.get("weight_decay", 5e-4),
        )
    else:
        opt = torch.optim.AdamW(
            params,
            lr=o.get("lr", 0.05),
            betas=(o.get("beta1", 0.9), o.get("beta2", 0.999)),
            weight_decay=o.get("weight_decay", 5e-4),
            eps=o.get("eps", 1e-8),
        )
    bayes = cfg.get("bayes", {})
    samples = bayes.get("mc_samples", 1)
    temp = bayes.get("temperature", 1.0)
    beta_spec = bayes.get("beta", {"kind": "constant", "value": 1.0})
    n_train, batch, eval_batch = xtr.shape[0], data["batch_size"], data.get("eval_batch_size", 1000)

    # the noise σ on standardised targets, as `LikelihoodConfig::noise`: the net's second output
    # (heteroscedastic), the learned log σ (homoscedastic) or std / y_std (fixed)
    def nll(out, y):
        if not regression:
            return F.cross_entropy(out, y)
        mu = out[:, 0]
        if noise == "heteroscedastic":
            sd = F.softplus(out[:, 1]) + min_std
        elif log_std is not None:
            sd = log_std.exp().expand_as(mu)
        else:
            sd = torch.full_like(mu, lik.get("std", 1.0) / y_unit)
        return (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2 + 0.5 * math.log(2 * math.pi)).mean()

    epochs = []
    for epoch in range(args.epochs):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(cfg, epoch)
        beta = beta_at(beta_spec, epoch, top=args.beta_max)
        t0 = time.perf_counter()
        model.train()
        set_mean_mode(model, False)
        perm = torch.randperm(n_train, generator=gen)
        loss_sum, steps = 0.0, 0
        for start in range(0, n_train, batch):
            idx = perm[start : start + batch]
            xb, yb = xtr[idx], ytr[idx]
            opt.zero_grad(set_to_none=True)
            loss = sum(nll(model(xb), yb) for _ in range(samples)) / samples
            if variational and beta > 0:
                loss = loss + beta * temp * ps.divergence_of(model) / n_train
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            steps += 1
        train_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        model.eval()
        set_mean_mode(model, True)
        outs = []
        with torch.no_grad():
            for start in range(0, xte.shape[0], eval_batch):
                outs.append(model(xte[start : start + eval_batch]))
        out = torch.cat(outs)
        if regression:
            mu = out[:, 0]
            # in the target's units, as secateur's history.csv (`Trainer::with_target_units`)
            metrics = {
                "test_rmse": float(((mu - yte) ** 2).mean().sqrt()) * y_unit,
                "test_nll": float(nll(out, yte).detach()) + math.log(y_unit),
            }
        else:
            metrics = classification_metrics(torch.softmax(out, 1).numpy(), yte.numpy())
        eval_s = time.perf_counter() - t1
        epochs.append(
            {"epoch": epoch + 1, "train_s": train_s, "eval_s": eval_s, "train_loss": loss_sum / steps, "beta": beta, **metrics}
        )

    return {
        "impl": "pytorch",
        "supported": True,
        "config": args.config,
        "arch": cfg["model"]["arch"],
        "layers": cfg["model"].get("layers", "deterministic"),
        "sampling": bayes.get("sampling", "local") if variational else None,
        "batch": batch,
        "train_size": n_train,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "epochs": epochs,
    }


def _median(v):
    v = sorted(v)
    n = len(v)
    return float("nan") if n == 0 else (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2)


def _timed(epochs):
    """Median train and eval seconds over the epochs after the first (all of one if only one)."""
    timed = epochs[1:] or epochs
    return _median([e["train_s"] for e in timed]), _median([e["eval_s"] or 0.0 for e in timed])


def table(path):
    """The Markdown table of an ``epoch_compare.sh`` runs.jsonl (standard library only)."""
    rows = {}
    for line in open(path):
        if line.strip():
            try:
                d = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            rows.setdefault(d["name"], {})[d["impl"]] = d
    out = [
        "| config | model | batch × steps | secateur s/epoch (train + eval) | PyTorch s/epoch (train + eval) | ratio | last epoch's test accuracy (or RMSE), secateur / PyTorch |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name, r in rows.items():
        py, se = r.get("pytorch", {}), r.get("secateur")
        if not py.get("supported") or se is None or not se.get("supported"):
            why = py.get("reason") if not py.get("supported") else (se or {}).get("reason", "no secateur run")
            out.append(f"| {name} | — | — | — | — | — | {why} |")
            continue
        model = f"{py['arch']}, {py['layers']}" + (f" ({py['sampling']})" if py.get("sampling") else "")
        steps = math.ceil(py["train_size"] / py["batch"])
        st, sv = _timed(se["epochs"])
        pt, pv = _timed(py["epochs"])
        key = "test_accuracy" if py["epochs"][-1].get("test_accuracy") is not None else "test_rmse"
        qa, qb = se["epochs"][-1].get(key), py["epochs"][-1].get(key)
        q = f"{qa:.4f} / {qb:.4f}" + (" (RMSE)" if key == "test_rmse" else "")
        out.append(
            f"| {name} | {model} | {py['batch']} × {steps} | {st + sv:.3g} ({st:.3g} + {sv:.2g}) | "
            f"{pt + pv:.3g} ({pt:.3g} + {pv:.2g}) | {(st + sv) / (pt + pv):.2f}× | {q} |"
        )
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", metavar="RUNS_JSONL", help="print the Markdown table of a runs.jsonl and exit")
    ap.add_argument("--config", help="a secateur config (TOML)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default="data", help="the folder holding the shipped datasets")
    ap.add_argument(
        "--beta-max",
        action="store_true",
        help="β at the schedule's largest value from the first step (the timed epochs then have "
        "their divergence on, as `secateur train --set bayes.beta=…` of epoch_compare.sh)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.config is None:
        ap.error("--config is required (or --table)")
    if args.epochs < 1:
        ap.error("--epochs must be at least 1")
    out = run(args)
    if not args.json:
        print(json.dumps(out, indent=2), file=sys.stderr)
    print(json.dumps(out))
    if not out.get("supported", False):
        sys.exit(3)


if __name__ == "__main__":
    main()
