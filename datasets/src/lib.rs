//! # secateur-datasets
//!
//! Data sets: checked loaders for IDX (MNIST, Fashion-MNIST), CIFAR-10/100 binary batches, the
//! UCI digits and CSV regression tables; in-memory sets ([`ImageSet`], [`TableSet`]); seeded
//! shuffling, splitting, augmentation and batching into candle tensors; and named data sets
//! found along a fixed lookup order ([`load_images`], [`load_table`], [`describe`]);
//! [`ImageBatches`] and [`TableBatches`] feed them to the trainer as
//! [`Batches`](secateur_inference::batches::Batches). [`shift`] makes seeded, shifted copies of
//! image test sets (rotation, Gaussian noise, contrast at severities 1‥5, after CIFAR-10-C and
//! Ovadia et al. 2019) for accuracy and calibration under distribution shift.
//!
//! All randomness comes from a generator the caller passes (seed it, e.g. `ChaCha8Rng`), never
//! from candle. Loaders return [`DataError`], which always names the file at fault.

pub mod augment;
pub mod batch;
pub mod cifar;
pub mod csv;
pub mod digits;
pub mod error;
pub mod idx;
pub mod image_set;
pub mod loader;
pub mod lookup;
pub mod read;
pub mod shift;
pub mod table;
pub mod table_batches;

pub use augment::{Augment, AugmentDraw};
pub use batch::{image_batch, shuffled_indices, table_batch, Normalizer};
pub use cifar::{read_cifar_batch, read_cifar_files, CifarKind};
pub use csv::{read_csv_table, write_csv_table};
pub use digits::read_uci_digits;
pub use error::DataError;
pub use idx::{
    read_idx_images, read_idx_labels, read_idx_pair, write_idx_images_gz, write_idx_labels_gz, write_idx_pair_gz,
    IdxImages,
};
pub use image_set::{resize_bilinear, split_indices, ImageSet, PixelStats};
pub use loader::ImageBatches;
pub use lookup::{
    describe, load_images, load_table, search_dirs, LoadedImages, LoadedTable, DATA_ENV, IMAGE_DATASETS,
    SHIPPED_DATASETS, TABLE_DATASETS,
};
pub use table::{Standardizer, TableSet};
pub use table_batches::TableBatches;
