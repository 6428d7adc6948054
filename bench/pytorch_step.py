#!/usr/bin/env python3
"""PyTorch side of the secateur side-by-side benchmark (issue 3, "Benchmarks").

Times full training steps of the same models secateur builds, with the same shapes, parameter
names and counts, in plain PyTorch on the CPU (or on a GPU with ``--device cuda``):

    python bench/pytorch_step.py --model lenet5 --batch 128 --steps 50 --warmup 5 --threads 2 [--json]

A step: ``optimizer.zero_grad(set_to_none=True)``, forward in train mode, cross-entropy (plus
KL / N for the Bayesian models), ``backward()``, SGD with momentum 0.9, ``loss.item()``.
Reports median and mean ms per step and the process peak RSS (``ru_maxrss``) as one JSON line.

Models: ``mlp`` (LeNet-300-100, 266,610 parameters), ``lenet5`` (61,706), ``resnet20`` (CIFAR
ResNet-20 with option-A zero-padding shortcuts, 269,722), and the local-reparameterisation
Bayesian ``bayes-mlp`` / ``bayes-lenet5`` (mean-field Gaussian weights, twice the parameters),
written the way bayesian-torch-style libraries write them.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# Deterministic models (names as in secateur: fc1.weight, conv1.weight, layer1.0.bn1.weight, ...)
# --------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """LeNet-300-100: 784-300-100-10, ReLU."""

    def __init__(self, inp=784, hidden=(300, 100), classes=10):
        super().__init__()
        dims = [inp, *hidden, classes]
        for i in range(len(dims) - 1):
            setattr(self, f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))
        self.n = len(dims) - 1

    def forward(self, x):
        x = x.flatten(1)
        for i in range(1, self.n + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n:
                x = F.relu(x)
        return x


class LeNet5(nn.Module):
    """conv1 6@5x5 pad 2 -> ReLU -> maxpool 2 -> conv2 16@5x5 -> ReLU -> maxpool 2 -> 120 -> 84 -> 10."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class ZeroPadShortcut(nn.Module):
    """Option A (He et al. 2016): x[:, :, ::s, ::s], zero-pad channels on both sides."""

    def __init__(self, stride, left, right):
        super().__init__()
        self.stride, self.left, self.right = stride, left, right

    def forward(self, x):
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.left, self.right))


class BasicBlock(nn.Module):
    def __init__(self, in_ch, out_ch, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride != 1 or in_ch != out_ch:
            left = (out_ch - in_ch) // 2
            self.shortcut = ZeroPadShortcut(stride, left, out_ch - in_ch - left)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2) as in akamaster/pytorch_resnet_cifar10: 16-32-64, option A, Kaiming normal."""

    def __init__(self, depth=20, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        ch = 16
        for k, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if k > 0 and j == 0 else 1
                blocks.append(BasicBlock(ch, width, stride))
                ch = width
            setattr(self, f"layer{k + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(ch, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --------------------------------------------------------------------------------------------
# Local-reparameterisation Bayesian layers (mean-field Gaussian, bayesian-torch style)
# --------------------------------------------------------------------------------------------


def gaussian_kl(mu, sigma, prior_sigma=1.0):
    """KL(N(mu, sigma^2) || N(0, prior_sigma^2)), summed."""
    return (
        torch.log(prior_sigma / sigma) + (sigma**2 + mu**2) / (2 * prior_sigma**2) - 0.5
    ).sum()


class _LrtBase(nn.Module):
    def _init_posterior(self, weight_shape, bias_dim, fan_in, rho_init=-5.0):
        self.weight_mu = nn.Parameter(torch.empty(weight_shape))
        self.weight_rho = nn.Parameter(torch.full(weight_shape, rho_init))
        self.bias_mu = nn.Parameter(torch.empty(bias_dim))
        self.bias_rho = nn.Parameter(torch.full((bias_dim,), rho_init))
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))  # PyTorch's default
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(self.bias_mu, -bound, bound)

    def kl_loss(self):
        return gaussian_kl(self.weight_mu, F.softplus(self.weight_rho)) + gaussian_kl(
            self.bias_mu, F.softplus(self.bias_rho)
        )


class LinearLRT(_LrtBase):
    """y = x mu_W^T + mu_b + sqrt(x^2 sigma_W^2T + sigma_b^2 + 1e-16) * eps."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self._init_posterior((out_features, in_features), out_features, in_features)

    def forward(self, x):
        w_sigma = F.softplus(self.weight_rho)
        b_sigma = F.softplus(self.bias_rho)
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        var = F.linear(x * x, w_sigma * w_sigma, b_sigma * b_sigma)
        return mean + torch.sqrt(var + 1e-16) * torch.randn_like(mean)


class Conv2dLRT(_LrtBase):
    """mean = conv(x, mu) + mu_b, var = conv(x^2, sigma^2) + sigma_b^2, out = mean + sqrt(var + 1e-16) * eps."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, padding=0):
        super().__init__()
        self.stride, self.padding = stride, padding
        self._init_posterior((out_ch, in_ch, kernel, kernel), out_ch, in_ch * kernel * kernel)

    def forward(self, x):
        w_sigma = F.softplus(self.weight_rho)
        b_sigma = F.softplus(self.bias_rho)
        mean = F.conv2d(x, self.weight_mu, self.bias_mu, self.stride, self.padding)
        var = F.conv2d(x * x, w_sigma * w_sigma, b_sigma * b_sigma, self.stride, self.padding)
        return mean + torch.sqrt(var + 1e-16) * torch.randn_like(mean)


class BayesMlp(Mlp):
    def __init__(self, inp=784, hidden=(300, 100), classes=10):
        nn.Module.__init__(self)
        dims = [inp, *hidden, classes]
        for i in range(len(dims) - 1):
            setattr(self, f"fc{i + 1}", LinearLRT(dims[i], dims[i + 1]))
        self.n = len(dims) - 1


class BayesLeNet5(LeNet5):
    def __init__(self, classes=10):
        nn.Module.__init__(self)
        self.conv1 = Conv2dLRT(1, 6, 5, padding=2)
        self.conv2 = Conv2dLRT(6, 16, 5)
        self.fc1 = LinearLRT(16 * 5 * 5, 120)
        self.fc2 = LinearLRT(120, 84)
        self.fc3 = LinearLRT(84, classes)


def kl_of(model):
    return sum(m.kl_loss() for m in model.modules() if isinstance(m, _LrtBase))


# --------------------------------------------------------------------------------------------

MODELS = {
    # name: (constructor, input [C, H, W], Bayesian, expected parameter count)
    "mlp": (Mlp, (1, 28, 28), False, 266_610),
    "lenet5": (LeNet5, (1, 28, 28), False, 61_706),
    "resnet20": (lambda: ResNetCifar(20), (3, 32, 32), False, 269_722),
    "bayes-mlp": (BayesMlp, (1, 28, 28), True, 2 * 266_610),
    "bayes-lenet5": (BayesLeNet5, (1, 28, 28), True, 2 * 61_706),
}


def rss_mib(peak=True):
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def quantile(v, q):
    """The q-quantile of v by nearest rank (the smallest value with at least q·n values at or below it)."""
    if not v:
        return float("nan")
    s = sorted(v)
    return s[min(max(math.ceil(q * len(s)), 1), len(s)) - 1]


def gemm_rate(n, threads, reps=20):
    """Best rate of ``reps`` n×n f32 matrix products (after two untimed ones), in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return {"mode": "gemm_rate", "n": n, "threads": threads, "gflops": 2 * n**3 / best / 1e9, "torch": torch.__version__}


def step_flops(step):
    """Floating-point operations of one call of ``step`` as torch's flop counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--train-size", type=int, default=60_000, help="N in the KL / N term")
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    ap.add_argument(
        "--gemm-rate",
        type=int,
        metavar="N",
        help="instead of a model: time N×N by N×N f32 matrix products on --threads threads and "
        "print the best GFLOP/s (2N³ per product) as JSON, the host's floor rate",
    )
    ap.add_argument(
        "--flops",
        action="store_true",
        help="count the floating-point operations of one step (torch.utils.flop_counter: matrix "
        "products and convolutions, forward and backward, 2 per multiply-add) before timing",
    )
    ap.add_argument("--print-params", action="store_true", help="list parameter names and shapes")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (each step ends with loss.item(), a sync)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.gemm_rate:
        print(json.dumps(gemm_rate(args.gemm_rate, args.threads)))
        return
    base_rss = rss_mib(peak=False)

    ctor, (c, h, w), bayes, expected = MODELS[args.model]
    dev = torch.device(args.device)
    model = ctor().float().train().to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    if args.print_params:
        for name, p in model.named_parameters():
            print(f"{name}\t{tuple(p.shape)}", file=sys.stderr)
    if nparams != expected:
        print(f"warning: {args.model} has {nparams} parameters, expected {expected}", file=sys.stderr)

    x = torch.randn(args.batch, c, h, w).to(dev)
    y = torch.randint(0, 10, (args.batch,)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if bayes:
            loss = loss + kl_of(model) / args.train_size
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    flops = step_flops(step) if args.flops else None
    times = []
    loss = float("nan")
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append((time.perf_counter() - t0) * 1e3)

    out = {
        "impl": "pytorch",
        "mode": "train_step",
        "model": args.model,
        "supported": True,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "params": nparams,
        "params_expected": expected,
        "median_ms": statistics.median(times) if times else float("nan"),
        "p90_ms": quantile(times, 0.9),
        "mean_ms": statistics.fmean(times) if times else float("nan"),
        "min_ms": min(times) if times else float("nan"),
        "peak_rss_mib": rss_mib(peak=True),
        "base_rss_mib": base_rss,
        "final_loss": loss,
        "flops_per_step": flops,
        "torch": torch.__version__,
        "omp_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    if dev.type == "cuda":
        out["peak_gpu_alloc_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    if not args.json:
        print(json.dumps(out, indent=2), file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
