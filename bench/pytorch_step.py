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

Layer kinds (the Rust ``bench_kind`` rows): ``--layers KIND`` builds ``mlp`` or ``lenet5`` with
every linear and convolution layer replaced by a plain-PyTorch version of secateur's layer kind
KIND, as ``factory(KIND, &FactoryOptions::default())`` makes it, and the loss is cross-entropy +
(the kind's divergence) / N:

    python bench/pytorch_step.py --model lenet5 --layers mean-field --sampling flipout --json

``mean-field`` (Gaussian weights and biases, KL to N(0, 1)), ``sparse-vd`` (Molchanov et al.
2017), ``variational-dropout`` (Kingma et al. 2015), ``mc-dropout`` (no divergence), ``gsm-gates``
(Bernoulli input gates, GSM prior) and ``deterministic``; ``--sampling local|weight|flipout`` picks
the estimator of the three Gaussian-weight kinds (default local). The JSON line then has
``"layers"`` and ``"sampling"`` (null where it does not apply).

``--hvp`` times what ``bench_step --hvp`` times, on the deterministic models: one gradient
(forward + backward, no optimiser), one Hessian-vector product by double backprop (gradient with
``create_graph=True``, then the gradient of its dot product with a Rademacher vector), and one
Hutchinson probe (that second backward pass alone, from one gradient kept with its graph), as
medians and their ratios to the gradient.
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
    """LeNet-300-100: 784-300-100-10, ReLU. ``linear(in, out)`` makes the layers (``nn.Linear``,
    or a layer kind of ``layer_factory``)."""

    def __init__(self, inp=784, hidden=(300, 100), classes=10, linear=nn.Linear):
        super().__init__()
        dims = [inp, *hidden, classes]
        for i in range(len(dims) - 1):
            setattr(self, f"fc{i + 1}", linear(dims[i], dims[i + 1]))
        self.n = len(dims) - 1

    def forward(self, x):
        x = x.flatten(1)
        for i in range(1, self.n + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n:
                x = F.relu(x)
        return x


class LeNet5(nn.Module):
    """conv1 6@5x5 pad 2 -> ReLU -> maxpool 2 -> conv2 16@5x5 -> ReLU -> maxpool 2 -> 120 -> 84 -> 10.

    ``conv(in, out, kernel, padding=)`` and ``linear(in, out)`` make the layers (``nn.Conv2d`` and
    ``nn.Linear``, or a layer kind of ``layer_factory``)."""

    def __init__(self, classes=10, linear=nn.Linear, conv=nn.Conv2d):
        super().__init__()
        self.conv1 = conv(1, 6, 5, padding=2)
        self.conv2 = conv(6, 16, 5)
        self.fc1 = linear(16 * 5 * 5, 120)
        self.fc2 = linear(120, 84)
        self.fc3 = linear(84, classes)

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

    def __init__(self, depth=20, classes=10, in_ch=3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_ch, 16, 3, padding=1, bias=False)
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
# secateur's layer kinds (`--layers`), in plain PyTorch: the layers of `bayes/src/layers/` as the
# factories of `models/src/kind.rs` make them with `FactoryOptions::default()`, each with its
# divergence term (`Variational::divergence` with `Divergence::Kl`, summed over the weights).
# --------------------------------------------------------------------------------------------

#: `LRT_VAR_EPS`: added to the pre-activation variance before the square root.
LRT_VAR_EPS = 1e-16
#: `mean_field::DEFAULT_INIT_STD`, the initial posterior σ of `FactoryOptions::default()`.
MEAN_FIELD_INIT_STD = 1e-3
#: `sparse_vd::DEFAULT_INIT_LOG_SIGMA2` and `LOG_ALPHA_CLIP`, `THETA_SQ_EPS`.
SVD_INIT_LOG_SIGMA2, SVD_LOG_ALPHA_CLIP, SVD_THETA_SQ_EPS = -10.0, 8.0, 1e-16
#: `bayes.sparse_vd_threshold`'s default: weights with log α at or above it are zero at test time.
SVD_THRESHOLD = 3.0
#: Molchanov, Ashukha & Vetrov 2017, eq. (14) (`divergence::MOLCHANOV_K*`).
MOLCHANOV_K1, MOLCHANOV_K2, MOLCHANOV_K3 = 0.63576, 1.87320, 1.48695
#: `variational_dropout::DEFAULT_INIT_LOG_ALPHA` and the clip `[VD_LOG_ALPHA_MIN, VD_LOG_ALPHA_MAX]`.
VD_INIT_LOG_ALPHA, VD_LOG_ALPHA_MIN, VD_LOG_ALPHA_MAX = -2.0, -8.0, 0.0
#: Kingma, Salimans & Welling 2015, eq. (14) (`divergence::KINGMA_C*`).
KINGMA_C1, KINGMA_C2, KINGMA_C3 = 1.16145124, -1.50204118, 0.58629921
#: `FactoryOptions::default().dropout`.
MC_DROPOUT_P = 0.1
#: `GsmGatePrior::default()` (shape a, scale b, unit cost λ), `DEFAULT_INIT_INCLUSION`, `DEFAULT_LR_SCALE`.
GSM_SHAPE, GSM_SCALE, GSM_UNIT_COST, GSM_INIT_INCLUSION, GSM_LR_SCALE = 1.0, 1.0, 0.0, 0.9, 1.0
#: `bayes.gate_threshold`'s default: a unit is removed at test time iff θ < it.
GSM_THRESHOLD = 0.5


def inv_softplus(sigma):
    """ρ with softplus(ρ) = σ (`math::inv_softplus`)."""
    return sigma if sigma > 30.0 else math.log(math.expm1(sigma))


def rademacher(shape, like):
    """Independent ±1 entries of ``shape`` in ``like``'s dtype and device (Flipout's sign vectors)."""
    return torch.randint(0, 2, shape, dtype=like.dtype, device=like.device).mul_(2).sub_(1)


def gaussian_forward(x, mu, sigma, b_mu, b_sigma, sampling, conv=None):
    """A layer with Gaussian weights ``N(mu, sigma²)`` and bias ``N(b_mu, b_sigma²)`` (``b_sigma``
    None: deterministic bias; ``b_mu`` None: no bias), as secateur's ``gaussian_linear`` /
    ``gaussian_conv2d`` with one sample (``conv``: None for a linear layer, else ``(stride,
    padding)``):

    - ``weight``: one draw ``W = mu + sigma ε`` and ``b = b_mu + b_sigma ε'`` per step, shared by the batch;
    - ``local``: ``op(x, mu) + b_mu + sqrt(op(x², sigma²) + b_sigma² + 1e-16) ⊙ ε``, ε per output
      element;
    - ``flipout`` (Wen et al. 2018): ``op(x, mu) + op(x ⊙ s_in, ΔW) ⊙ s_out + b``, ``ΔW = sigma ⊙ ε``
      and ``b`` one draw per step, sign vectors per example and feature (per example and channel
      for a convolution: ``s_in [N, C, 1, 1]``, ``s_out [N, O, 1, 1]``).
    """
    if conv is None:
        op = F.linear
    else:
        stride, padding = conv

        def op(inp, w, b=None):
            return F.conv2d(inp, w, b, stride, padding)

    def bias_draw():
        if b_mu is None or b_sigma is None:
            return b_mu
        return b_mu + b_sigma * torch.randn_like(b_mu)

    if sampling == "weight":
        return op(x, mu + sigma * torch.randn_like(mu), bias_draw())
    if sampling == "local":
        mean = op(x, mu, b_mu)
        var = op(x * x, sigma * sigma, None if b_sigma is None else b_sigma * b_sigma)
        return mean + torch.sqrt(var + LRT_VAR_EPS) * torch.randn_like(mean)
    if sampling == "flipout":
        mean = op(x, mu)
        delta = sigma * torch.randn_like(sigma)
        b = bias_draw()
        if conv is None:
            s_in, s_out = rademacher(x.shape, x), rademacher(mean.shape, x)
        else:
            s_in = rademacher((x.shape[0], x.shape[1], 1, 1), x)
            s_out = rademacher((x.shape[0], mean.shape[1], 1, 1), x)
        out = mean + op(x * s_in, delta) * s_out
        if b is not None:
            out = out + (b if conv is None else b.view(1, -1, 1, 1))
        return out
    raise ValueError(f"unknown sampling {sampling!r}")


class _Variational(nn.Module):
    """A layer with a divergence term (secateur's ``Variational``); ``conv`` is None for a linear
    layer, ``(stride, padding)`` for a convolution; ``weight_shape`` is ``[out, in]`` or
    ``[out, in, k, k]``."""

    def __init__(self, in_features, out_features, kernel=None, stride=1, padding=0):
        super().__init__()
        if kernel is None:
            self.conv, self.weight_shape = None, (out_features, in_features)
        else:
            self.conv, self.weight_shape = (stride, padding), (out_features, in_features, kernel, kernel)
        self.in_units = in_features  # input features, or input channels
        self.fan_in = math.prod(self.weight_shape[1:])

    def _torch_weight(self):
        """``U(±1/√fan_in)``, PyTorch's default ``nn.Linear``/``nn.Conv2d`` init (``Init::TorchDefault``)."""
        bound = 1 / math.sqrt(self.fan_in)
        return nn.Parameter(torch.empty(self.weight_shape).uniform_(-bound, bound))

    def _torch_bias(self):
        """``U(±1/√fan_in)`` (``Init::torch_bias``)."""
        bound = 1 / math.sqrt(self.fan_in)
        return nn.Parameter(torch.empty(self.weight_shape[0]).uniform_(-bound, bound))

    def divergence(self):
        raise NotImplementedError


class _GaussianLayer(_Variational):
    """A layer whose forward pass is ``gaussian_forward`` of ``self.posterior()`` with ``self.sampling``."""

    sampling = "local"

    def posterior(self):
        """``(mu, sigma, b_mu, b_sigma)`` as the forward pass uses them."""
        raise NotImplementedError

    def forward(self, x):
        if getattr(self, "mean_mode", False):
            return self.mean_forward(x)
        mu, sigma, b_mu, b_sigma = self.posterior()
        return gaussian_forward(x, mu, sigma, b_mu, b_sigma, self.sampling, self.conv)

    def mean_weights(self):
        """``(weight, bias)`` of the posterior-mean network (secateur's ``Sampling::Mean``)."""
        mu, _, b_mu, _ = self.posterior()
        return mu, b_mu

    def mean_forward(self, x):
        w, b = self.mean_weights()
        if self.conv is None:
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, *self.conv)


class MeanFieldLayer(_GaussianLayer):
    """`mean-field` (`BayesLinear` / `BayesConv2d`, Blundell et al. 2015): weight and bias both
    Gaussian, ``σ = softplus(ρ)``; μ as PyTorch initialises the layer, every ρ at
    ``softplus⁻¹(init_std)``; divergence: analytic ``KL(q ‖ N(0, 1))`` summed over weights and
    biases (``gaussian_kl``). Parameters: ``weight_mu``, ``weight_rho``, ``bias_mu``, ``bias_rho``."""

    def __init__(self, *shape, init_std=MEAN_FIELD_INIT_STD, sampling="local", **geom):
        super().__init__(*shape, **geom)
        self.sampling = sampling
        rho = inv_softplus(init_std)
        self.weight_mu = self._torch_weight()
        self.weight_rho = nn.Parameter(torch.full(self.weight_shape, rho))
        self.bias_mu = self._torch_bias()
        self.bias_rho = nn.Parameter(torch.full((self.weight_shape[0],), rho))

    def posterior(self):
        return self.weight_mu, F.softplus(self.weight_rho), self.bias_mu, F.softplus(self.bias_rho)

    #: σ of the N(0, σ²) prior (secateur's ``bayes.prior.std``, default 1).
    prior_std = 1.0

    def divergence(self):
        p = self.prior_std
        return gaussian_kl(self.weight_mu, F.softplus(self.weight_rho), p) + gaussian_kl(
            self.bias_mu, F.softplus(self.bias_rho), p
        )


class SparseVdLayer(_GaussianLayer):
    """`sparse-vd` (`SvdLinear` / `SvdConv2d`, Molchanov, Ashukha & Vetrov 2017): ``w = θ + σ ε``
    with θ (``weight_mu``, PyTorch's init) and ``log σ²`` (``weight_log_sigma2``, −10) trained, a
    deterministic ``bias``; ``log α = clip(log σ² − log(θ² + 1e−16), −8, 8)``; divergence: the
    paper's approximation to the KL from the log-uniform prior,
    ``Σ −(k1 sigmoid(k2 + k3 log α) − ½ softplus(−log α) − k1)``. Training mode only (no test-time
    mask)."""

    def __init__(self, *shape, sampling="local", **geom):
        super().__init__(*shape, **geom)
        self.sampling = sampling
        self.weight_mu = self._torch_weight()
        self.weight_log_sigma2 = nn.Parameter(torch.full(self.weight_shape, SVD_INIT_LOG_SIGMA2))
        self.bias = self._torch_bias()

    def posterior(self):
        return self.weight_mu, torch.exp(0.5 * self.weight_log_sigma2), self.bias, None

    def log_alpha(self):
        la = self.weight_log_sigma2 - torch.log(self.weight_mu * self.weight_mu + SVD_THETA_SQ_EPS)
        return la.clamp(-SVD_LOG_ALPHA_CLIP, SVD_LOG_ALPHA_CLIP)

    def mean_weights(self):
        """θ with the weights of ``log α ≥ threshold`` (3) set to zero, as at test time."""
        keep = (self.log_alpha() < SVD_THRESHOLD).to(self.weight_mu.dtype)
        return self.weight_mu * keep, self.bias

    def divergence(self):
        la = self.log_alpha()
        neg_kl = MOLCHANOV_K1 * torch.sigmoid(MOLCHANOV_K2 + MOLCHANOV_K3 * la) - 0.5 * F.softplus(-la)
        return (MOLCHANOV_K1 - neg_kl).sum()


class VariationalDropoutLayer(_GaussianLayer):
    """`variational-dropout` (`VdLinear` / `VdConv2d`, Kingma, Salimans & Welling 2015):
    ``W ~ N(θ, α θ²)``, θ (``weight_mu``, PyTorch's init), ``log α`` (``weight_log_alpha``, −2)
    per weight (θ's shape) or per input unit (``[in]`` / ``[in_ch]``), clipped to ``[−8, 0]``,
    ``σ = √α |θ|``, a deterministic ``bias``; divergence: Kingma et al.'s approximation to the KL
    from the log-uniform prior without its constant, ``Σ −(½ log α + c1 α + c2 α² + c3 α³)`` over
    the noise variables (weights or units)."""

    def __init__(self, *shape, granularity="weight", sampling="local", **geom):
        super().__init__(*shape, **geom)
        self.sampling = sampling
        self.weight_mu = self._torch_weight()
        la_shape = self.weight_shape if granularity == "weight" else (self.in_units,)
        self.weight_log_alpha = nn.Parameter(torch.full(la_shape, VD_INIT_LOG_ALPHA))
        self.bias = self._torch_bias()
        self.per_unit_conv = granularity == "unit" and self.conv is not None

    def log_alpha(self):
        return self.weight_log_alpha.clamp(VD_LOG_ALPHA_MIN, VD_LOG_ALPHA_MAX)

    def posterior(self):
        la = self.log_alpha()
        if self.per_unit_conv:
            la = la.view(1, -1, 1, 1)  # per input channel (one group); a linear layer's [in] broadcasts as is
        return self.weight_mu, torch.exp(0.5 * la) * self.weight_mu.abs(), self.bias, None

    def divergence(self):
        la = self.log_alpha()
        a = torch.exp(la)
        return (-(0.5 * la + ((KINGMA_C3 * a + KINGMA_C2) * a + KINGMA_C1) * a)).sum()


class McDropoutLinear(nn.Linear):
    """`mc-dropout` (Gal & Ghahramani 2016): inverted dropout with rate ``p`` on the layer's input,
    on in training (secateur draws the mask whenever sampling is not ``Mean``), then the
    deterministic layer (same parameters); no divergence term (the KL of the Gaussian-process
    view is weight decay, left to the optimiser, as in secateur)."""

    def __init__(self, *args, p=MC_DROPOUT_P, **kw):
        super().__init__(*args, **kw)
        self.p = p

    def forward(self, x):
        if getattr(self, "mean_mode", False):
            return super().forward(x)
        return super().forward(F.dropout(x, self.p, training=True))


class McDropoutConv2d(nn.Conv2d):
    """`mc-dropout` for a convolution: elementwise inverted dropout on the input, then ``nn.Conv2d``."""

    def __init__(self, *args, p=MC_DROPOUT_P, **kw):
        super().__init__(*args, **kw)
        self.p = p

    def forward(self, x):
        if getattr(self, "mean_mode", False):
            return super().forward(x)
        return super().forward(F.dropout(x, self.p, training=True))


class GsmGateLayer(_Variational):
    """`gsm-gates` (`GateLinear` / `GateConv2d`, after Guenter & Sideris 2022): a Bernoulli gate
    ``ξ_j ~ Bern(θ_j)`` on every input unit (input channel of a convolution), drawn per example,
    with the straight-through gradient ``ξ + θ − stop_grad(θ)``; ``θ = clamp(κ · gate_theta, 0, 1)``
    with the gradient passed straight through the clamp (``gate_theta`` starts at θ₀/κ = 0.9);
    weights ``weight_mu`` (point estimates, PyTorch's init) and a deterministic ``bias``.
    Divergence: ``Σ_j θ_j [λ + (a + n_j/2) log(1 + ‖μ_j‖² / (2b))]``, ``μ_j`` the ``n_j`` weights
    gate j feeds (column j of a linear weight; ``[out, k, k]`` of a convolution)."""

    def __init__(self, *shape, **geom):
        super().__init__(*shape, **geom)
        self.weight_mu = self._torch_weight()
        self.bias = self._torch_bias()
        self.gate_theta = nn.Parameter(torch.full((self.in_units,), GSM_INIT_INCLUSION / GSM_LR_SCALE))

    def theta(self):
        g = GSM_LR_SCALE * self.gate_theta
        return g + (g.clamp(0.0, 1.0) - g).detach()

    def forward(self, x):
        theta = self.theta()
        t = theta.detach()
        if getattr(self, "mean_mode", False):
            # test time: θ·[θ ≥ threshold] for every example
            gate = (t * (t >= GSM_THRESHOLD).to(x.dtype)).expand(x.shape[0], -1)
        else:
            xi = (torch.rand(x.shape[0], t.numel(), dtype=x.dtype, device=x.device) < t).to(x.dtype)
            gate = xi + (theta - t)
        if self.conv is None:
            return F.linear(x * gate, self.weight_mu, self.bias)
        stride, padding = self.conv
        return F.conv2d(x * gate[:, :, None, None], self.weight_mu, self.bias, stride, padding)

    def divergence(self):
        sq = self.weight_mu * self.weight_mu
        sumsq = sq.sum(0) if self.conv is None else sq.sum((0, 2, 3))  # [in] / [in_ch]
        n = self.weight_shape[0] * math.prod(self.weight_shape[2:])
        cost = (GSM_SHAPE + n / 2) * torch.log1p(sumsq / (2 * GSM_SCALE)) + GSM_UNIT_COST
        return (self.theta() * cost).sum()


def divergence_of(model):
    """Σ of the layers' divergences (secateur's ``ParamStore::divergence`` with ``Divergence::Kl``)."""
    return sum(m.divergence() for m in model.modules() if isinstance(m, _Variational))


#: Layer kinds of ``--layers``: kind -> (whether ``--sampling`` applies, expected parameter count per
#: model). The counts follow the Rust layers: with W the weights and B the biases of the
#: deterministic network (mlp: W = 784·300 + 300·100 + 100·10 = 266,200, B = 410; lenet5:
#: W = 150 + 2,400 + 48,000 + 10,080 + 840 = 61,470, B = 236) and U the input units of its
#: weight layers (mlp: 784 + 300 + 100 = 1,184; lenet5: 1 + 6 + 400 + 120 + 84 = 611):
#: mean-field 2(W + B) (μ and ρ for every weight and bias), sparse-vd 2W + B (θ, log σ², a
#: deterministic bias), variational-dropout 2W + B per weight or W + B + U per unit (θ, log α,
#: bias), mc-dropout W + B (no parameters of its own), gsm-gates W + B + U (one gate per input unit).
LAYER_KINDS = {
    "deterministic": (False, {"mlp": 266_610, "lenet5": 61_706}),
    "mean-field": (True, {"mlp": 533_220, "lenet5": 123_412}),
    "sparse-vd": (True, {"mlp": 532_810, "lenet5": 123_176}),
    "variational-dropout": (True, {"mlp": 532_810, "lenet5": 123_176}),
    "variational-dropout/unit": (True, {"mlp": 267_794, "lenet5": 62_317}),
    "mc-dropout": (False, {"mlp": 266_610, "lenet5": 61_706}),
    "gsm-gates": (False, {"mlp": 267_794, "lenet5": 62_317}),
}


def layer_factory(
    kind, sampling="local", init_std=MEAN_FIELD_INIT_STD, vd_granularity="weight", dropout=MC_DROPOUT_P
):
    """``(linear(in, out), conv(in, out, kernel, stride=1, padding=0))`` of the layer kind ``kind``."""
    if kind == "deterministic":
        return nn.Linear, nn.Conv2d
    if kind == "mc-dropout":
        return (
            lambda i, o: McDropoutLinear(i, o, p=dropout),
            lambda *a, **kw: McDropoutConv2d(*a, p=dropout, **kw),
        )
    make, opts = {
        "mean-field": (MeanFieldLayer, {"init_std": init_std, "sampling": sampling}),
        "sparse-vd": (SparseVdLayer, {"sampling": sampling}),
        "variational-dropout": (
            VariationalDropoutLayer,
            {"granularity": vd_granularity, "sampling": sampling},
        ),
        "gsm-gates": (GsmGateLayer, {}),
    }[kind]

    def conv(in_ch, out_ch, kernel, stride=1, padding=0):
        return make(in_ch, out_ch, kernel=kernel, stride=stride, padding=padding, **opts)

    return (lambda i, o: make(i, o, **opts)), conv


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


def run_fields(args, mode, nparams):
    """The fields every JSON line of this script starts with (as bench_step's)."""
    return {
        "impl": "pytorch",
        "mode": mode,
        "model": args.model,
        "supported": True,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "params": nparams,
    }


def hvp_bench(model, x, y, args, nparams, base_rss):
    """Gradient, Hessian-vector product and Hutchinson probe timings (``--hvp``), medians in ms."""
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(3)
    v = [(torch.randint(0, 2, p.shape, generator=gen).to(p) * 2 - 1) for p in params]

    def sync():
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        for _ in range(args.warmup):
            fn()
        sync()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    def gradient(create_graph=False):
        loss = F.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, params, create_graph=create_graph)

    def dot(g):
        return sum((gi * vi).sum() for gi, vi in zip(g, v))

    def hvp():
        return torch.autograd.grad(dot(gradient(create_graph=True)), params)

    grad_times = timed(gradient)
    hvp_times = timed(hvp)
    gv = dot(gradient(create_graph=True))
    probe = lambda: torch.autograd.grad(gv, params, retain_graph=True)  # noqa: E731
    probe_times = timed(probe)
    g, hv, pr = (statistics.median(t) for t in (grad_times, hvp_times, probe_times))
    # With --flops: the FLOPs of each (matrix products and convolutions), whose ratios are the
    # floor of the HVP's and the probe's ratios to a gradient.
    flops = {k: step_flops(f) for k, f in (("grad", gradient), ("hvp", hvp), ("probe", probe))} if args.flops else {}
    return {
        **run_fields(args, "hvp", nparams),
        "grad_median_ms": g,
        "hvp_median_ms": hv,
        "hvp_over_grad": hv / g,
        "probe_median_ms": pr,
        "probe_over_grad": pr / g,
        "grad_flops": flops.get("grad"),
        "hvp_flops": flops.get("hvp"),
        "probe_flops": flops.get("probe"),
        "peak_rss_mib": rss_mib(peak=True),
        "base_rss_mib": base_rss,
        "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--train-size", type=int, default=60_000, help="N in the divergence / N term")
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
    ap.add_argument(
        "--layers",
        metavar="KIND",
        choices=[k for k in LAYER_KINDS if "/" not in k],
        help="with --model mlp or lenet5: build it with secateur's layer kind KIND (as "
        "`factory(KIND, &FactoryOptions::default())` makes it) and add the kind's divergence / N "
        "to the loss: " + ", ".join(k for k in LAYER_KINDS if "/" not in k) + " (default: the "
        "model as named)",
    )
    ap.add_argument(
        "--sampling",
        choices=["local", "weight", "flipout"],
        help="estimator of the Gaussian-weight kinds (mean-field, sparse-vd, variational-dropout): "
        "local reparameterisation, one weight draw per step, or Flipout (default local); the other "
        "kinds ignore it",
    )
    ap.add_argument(
        "--init-std",
        type=float,
        default=MEAN_FIELD_INIT_STD,
        help="initial posterior σ of --layers mean-field (secateur's bayes.init_std, default 1e-3)",
    )
    ap.add_argument(
        "--vd-granularity",
        choices=["weight", "unit"],
        default="weight",
        help="--layers variational-dropout: log α per weight (the default) or per input unit",
    )
    ap.add_argument(
        "--dropout",
        type=float,
        default=MC_DROPOUT_P,
        help="--layers mc-dropout: drop probability (default 0.1, FactoryOptions::default())",
    )
    ap.add_argument(
        "--hvp",
        action="store_true",
        help="time a gradient, a Hessian-vector product by double backprop and one Hutchinson probe "
        "(as bench_step --hvp) instead of training steps; deterministic models only",
    )
    ap.add_argument("--print-params", action="store_true", help="list parameter names and shapes")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (each step ends with loss.item(), a sync)")
    args = ap.parse_args()
    if args.layers is not None and args.model not in ("mlp", "lenet5"):
        ap.error(f"--layers needs --model mlp or lenet5, not {args.model}")
    if args.sampling is not None and args.layers is None:
        ap.error("--sampling needs --layers")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.gemm_rate:
        print(json.dumps(gemm_rate(args.gemm_rate, args.threads)))
        return
    base_rss = rss_mib(peak=False)

    ctor, (c, h, w), bayes, expected = MODELS[args.model]
    divergence = kl_of if bayes else None
    # as bench_step reports them: "layers" as given (null without --layers), the estimator used
    layers, sampling = args.layers, ("local" if bayes else None)
    if layers is not None:
        sampled, counts = LAYER_KINDS[layers]
        if layers == "variational-dropout" and args.vd_granularity == "unit":
            sampled, counts = LAYER_KINDS["variational-dropout/unit"]
        sampling = (args.sampling or "local") if sampled else None
        if args.sampling is not None and not sampled:
            print(f"note: --layers {layers} does not use --sampling; ignored", file=sys.stderr)
        linear, conv = layer_factory(
            layers, sampling, init_std=args.init_std, vd_granularity=args.vd_granularity, dropout=args.dropout
        )
        if args.model == "mlp":
            ctor = lambda: Mlp(linear=linear)  # noqa: E731
        else:
            ctor = lambda: LeNet5(linear=linear, conv=conv)  # noqa: E731
        expected = counts[args.model]
    dev = torch.device(args.device)
    model = ctor().float().train().to(dev)
    if args.layers is not None and any(isinstance(m, _Variational) for m in model.modules()):
        divergence = divergence_of
    nparams = sum(p.numel() for p in model.parameters())
    if args.print_params:
        for name, p in model.named_parameters():
            print(f"{name}\t{tuple(p.shape)}", file=sys.stderr)
    if nparams != expected:
        print(f"warning: {args.model} has {nparams} parameters, expected {expected}", file=sys.stderr)

    x = torch.randn(args.batch, c, h, w).to(dev)
    y = torch.randint(0, 10, (args.batch,)).to(dev)
    if args.hvp:
        if bayes or args.layers is not None:
            ap.error("--hvp times the deterministic models only (as bench_step --hvp)")
        print(json.dumps(hvp_bench(model, x, y, args, nparams, base_rss)))
        return
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if divergence is not None:
            loss = loss + divergence(model) / args.train_size
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
        **run_fields(args, "train_step", nparams),
        "layers": layers,
        "sampling": sampling,
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
