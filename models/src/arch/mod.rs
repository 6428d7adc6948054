//! Architectures and the registry that builds one by name.
//!
//! Every architecture is written once against a [`LayerFactory`]: its linear and convolution
//! weight layers come from the factory, while batch norm, layer norm, pooling and attention
//! arithmetic are deterministic code. Parameters are registered through a [`ParamBuilder`] under
//! PyTorch-style names that follow the reference implementation of each family, so weights can
//! be exchanged with PyTorch through safetensors.
//!
//! | name | family | reference |
//! |------|--------|-----------|
//! | `mlp` | [`mlp::Mlp`] (LeNet-300-100) | LeCun et al. 1998 |
//! | `lenet5` | [`lenet::LeNet5`] | LeCun et al. 1998 |
//! | `vgg11`, `vgg16` | [`vgg::Vgg`] with batch norm, CIFAR style | Simonyan & Zisserman 2015 |
//! | `resnet20`, `resnet32`, `resnet56` | [`resnet::ResNet`], option-A shortcuts | He et al. 2016 |
//! | `resnet18` | [`resnet::ResNet`], CIFAR stem, projection shortcuts | He et al. 2016 |
//! | `vit-tiny` | [`vit::VisionTransformer`], patch 4 | Dosovitskiy et al. 2021; Touvron et al. 2021 |

pub mod lenet;
pub mod mlp;
pub mod resnet;
pub mod vgg;
pub mod vit;
pub mod widths;

use crate::factory::LayerFactory;
use candle_core::{Result, Tensor};
use secateur_bayes::{Ctx, Module, ParamBuilder};
use serde::{Deserialize, Serialize};

pub use lenet::{LeNet5, LeNet5Config};
pub use mlp::{Mlp, MlpConfig};
pub use resnet::{BasicBlock, ResNet, ResNetConfig, Shortcut, ShortcutKind};
pub use vgg::{Vgg, VggConfig, VggItem};
pub use vit::{ViTConfig, VisionTransformer};
pub use widths::build_with_widths;

/// What to build: the architecture's name, the input shape `[C, H, W]` and the class count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Architecture name (see [`ARCHITECTURES`]).
    pub arch: String,
    /// Input shape `[channels, height, width]`.
    pub input: [usize; 3],
    /// Number of classes (output width).
    pub classes: usize,
}

impl ModelSpec {
    /// A spec for `arch` on inputs of shape `input = [C, H, W]` with `classes` outputs.
    pub fn new(arch: impl Into<String>, input: [usize; 3], classes: usize) -> Self {
        Self {
            arch: arch.into(),
            input,
            classes,
        }
    }

    /// Checks the fields that do not depend on the architecture: every input dimension and the
    /// class count must be positive. The error names the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.input.contains(&0) {
            candle_core::bail!(
                "model spec: field `input` must be [C, H, W] with positive entries, got {:?}",
                self.input
            );
        }
        if self.classes == 0 {
            candle_core::bail!("model spec: field `classes` must be at least 1, got 0");
        }
        Ok(())
    }
}

/// A built network: the root module, applied to inputs `[B, C, H, W]`, returning logits `[B, K]`.
pub struct Network {
    /// The architecture's name.
    pub arch: String,
    /// The root module.
    pub root: Box<dyn Module>,
}

impl Network {
    /// Wraps a root module (for architectures built directly from a family's config, e.g. the
    /// 224×224 patch-16 DeiT-Tiny).
    pub fn new(arch: impl Into<String>, root: Box<dyn Module>) -> Self {
        Self {
            arch: arch.into(),
            root,
        }
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

impl Module for Network {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.root.forward(x, ctx)
    }
    fn features(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.root.features(x, ctx)
    }
    fn head(&self) -> Option<String> {
        self.root.head()
    }
}

/// The names [`build`] accepts.
pub const ARCHITECTURES: &[&str] = &[
    "mlp", "lenet5", "vgg11", "vgg16", "resnet20", "resnet32", "resnet56", "resnet18", "vit-tiny",
];

/// The names [`build`] accepts (the same list as [`ARCHITECTURES`]).
pub fn architectures() -> &'static [&'static str] {
    ARCHITECTURES
}

/// Builds the architecture `spec.arch` with the layers of `factory`, registering every parameter
/// under `pb`. An unknown name is refused with the list of known ones; an input shape the
/// architecture cannot take (too small for its convolutions, a ViT patch that does not divide
/// the image) is refused with the reason.
///
/// ```
/// use secateur_models::{build, Deterministic, ModelSpec};
/// use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
/// use candle_core::{DType, Device};
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
/// let net = build(&ModelSpec::new("mlp", [1, 28, 28], 10), &Deterministic, &pb).unwrap();
/// assert_eq!(net.arch, "mlp");
/// assert_eq!(store.num_params(), 266_610);
/// ```
pub fn build(spec: &ModelSpec, factory: &dyn LayerFactory, pb: &ParamBuilder) -> Result<Network> {
    spec.validate()?;
    let (input, classes) = (spec.input, spec.classes);
    let root: Box<dyn Module> = match spec.arch.as_str() {
        "mlp" => Box::new(Mlp::new(&MlpConfig::lenet_300_100(), input, classes, factory, pb)?),
        "lenet5" => Box::new(LeNet5::new(input, classes, factory, pb)?),
        "vgg11" => Box::new(Vgg::new(&VggConfig::vgg11(), input, classes, factory, pb)?),
        "vgg16" => Box::new(Vgg::new(&VggConfig::vgg16(), input, classes, factory, pb)?),
        "resnet20" => Box::new(ResNet::new(&ResNetConfig::cifar(20)?, input, classes, factory, pb)?),
        "resnet32" => Box::new(ResNet::new(&ResNetConfig::cifar(32)?, input, classes, factory, pb)?),
        "resnet56" => Box::new(ResNet::new(&ResNetConfig::cifar(56)?, input, classes, factory, pb)?),
        "resnet18" => Box::new(ResNet::new(&ResNetConfig::resnet18(), input, classes, factory, pb)?),
        "vit-tiny" => Box::new(VisionTransformer::new(&ViTConfig::tiny(), input, classes, factory, pb)?),
        other => candle_core::bail!("unknown architecture `{other}`; known: {}", ARCHITECTURES.join(", ")),
    };
    Ok(Network::new(spec.arch.clone(), root))
}

/// Output side of a convolution (PyTorch's formula), or an error naming the layer when the
/// padded input is smaller than the kernel.
pub(crate) fn conv_out(layer: &str, size: usize, kernel: usize, stride: usize, padding: usize) -> Result<usize> {
    if size + 2 * padding < kernel || stride == 0 {
        candle_core::bail!(
            "layer `{layer}`: input side {size} (padding {padding}) is smaller than the kernel {kernel}; the input is too small for this architecture"
        );
    }
    Ok((size + 2 * padding - kernel) / stride + 1)
}

/// Checks that `x` is `[B, C, H, W]` with `[C, H, W] = expected`.
pub(crate) fn check_input(arch: &str, x: &Tensor, expected: [usize; 3]) -> Result<()> {
    let d = x.dims();
    if d.len() != 4 || d[1..] != expected {
        candle_core::bail!(
            "{arch}: expected input [B, {}, {}, {}], got {:?}",
            expected[0],
            expected[1],
            expected[2],
            d
        );
    }
    Ok(())
}
