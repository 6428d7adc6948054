//! Loaders, checks, lookup and batching of `secateur_experiments::data`, on files crafted in a
//! temporary directory and on the sets shipped in `data/`.

use std::path::{Path, PathBuf};

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use secateur_experiments::data::idx::{encode_idx_images, encode_idx_labels};
use secateur_experiments::data::{
    cifar::encode_cifar_batch, describe, image_batch, load_images, load_table, read_cifar_batch, read_csv_table,
    read_idx_images, read_idx_pair, shuffled_indices, table_batch, write_idx_images_gz, write_idx_labels_gz, Augment,
    AugmentDraw, CifarKind, DataError, ImageSet, Normalizer,
};

type R = Result<(), Box<dyn std::error::Error>>;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}

/// The error's message must name the file.
fn names_file(err: &DataError, file: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "{msg:?} does not name {}",
        file.display()
    );
}

fn three_images() -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|v| (v * 7 % 256) as u8).collect();
    (pixels, vec![2, 0, 9])
}

#[test]
fn idx_round_trip_gzip_and_raw() -> R {
    let dir = tempfile::tempdir()?;
    let (pixels, labels) = three_images();
    let img = dir.path().join("imgs.gz");
    let lab = dir.path().join("labs.gz");
    write_idx_images_gz(&img, 3, 4, 5, &pixels)?;
    write_idx_labels_gz(&lab, &labels)?;
    // The writer really compresses: the file starts with the gzip magic.
    assert_eq!(&std::fs::read(&img)?[..2], &[0x1f, 0x8b]);
    let set = read_idx_pair("t", &img, &lab, 10, Some((4, 5)))?;
    assert_eq!((set.len(), set.channels, set.height, set.width), (3, 1, 4, 5));
    assert_eq!(set.pixels, pixels);
    assert_eq!(set.labels, vec![2, 0, 9]);
    // Raw (uncompressed) files with no suffix read the same.
    let raw_img = write(dir.path(), "imgs", &encode_idx_images(3, 4, 5, &pixels)?);
    let raw_lab = write(dir.path(), "labs", &encode_idx_labels(&labels)?);
    assert_eq!(read_idx_pair("t", &raw_img, &raw_lab, 10, None)?, set);
    Ok(())
}

#[test]
fn idx_truncated_file() -> R {
    let dir = tempfile::tempdir()?;
    let (pixels, _) = three_images();
    let mut bytes = encode_idx_images(3, 4, 5, &pixels)?;
    bytes.truncate(bytes.len() - 1);
    let p = write(dir.path(), "trunc", &bytes);
    let err = read_idx_images(&p).expect_err("truncated file must fail");
    match &err {
        DataError::LengthMismatch {
            path, actual, expected, ..
        } => {
            assert_eq!(path, &p);
            assert_eq!((*actual, *expected), (16 + 59, 16 + 60));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    names_file(&err, &p);
    assert!(err.to_string().contains("truncated"));
    Ok(())
}

#[test]
fn idx_truncated_gzip_stream() -> R {
    let dir = tempfile::tempdir()?;
    let (pixels, _) = three_images();
    let p = dir.path().join("imgs.gz");
    write_idx_images_gz(&p, 3, 4, 5, &pixels)?;
    let bytes = std::fs::read(&p)?;
    std::fs::write(&p, &bytes[..bytes.len() / 2])?;
    let err = read_idx_images(&p).expect_err("cut gzip must fail");
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    names_file(&err, &p);
    Ok(())
}

#[test]
fn idx_wrong_magic() -> R {
    let dir = tempfile::tempdir()?;
    // A labels file where images are expected.
    let p = write(dir.path(), "labels-as-images", &encode_idx_labels(&[1, 2, 3])?);
    let err = read_idx_images(&p).expect_err("wrong magic must fail");
    match &err {
        DataError::BadMagic { found, expected, .. } => {
            assert_eq!((*found, *expected), (0x801, 0x803));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    names_file(&err, &p);
    Ok(())
}

#[test]
fn idx_count_mismatch() -> R {
    let dir = tempfile::tempdir()?;
    let (pixels, _) = three_images();
    let img = write(dir.path(), "imgs", &encode_idx_images(3, 4, 5, &pixels)?);
    let lab = write(dir.path(), "labs", &encode_idx_labels(&[1, 2])?);
    let err = read_idx_pair("t", &img, &lab, 10, None).expect_err("3 images, 2 labels");
    match &err {
        DataError::CountMismatch {
            n_images,
            n_labels,
            labels,
            ..
        } => {
            assert_eq!((*n_images, *n_labels), (3, 2));
            assert_eq!(labels, &lab);
        }
        other => panic!("wrong variant: {other:?}"),
    }
    names_file(&err, &img);
    names_file(&err, &lab);
    Ok(())
}

#[test]
fn idx_label_out_of_range() -> R {
    let dir = tempfile::tempdir()?;
    let (pixels, _) = three_images();
    let img = write(dir.path(), "imgs", &encode_idx_images(3, 4, 5, &pixels)?);
    let lab = write(dir.path(), "labs", &encode_idx_labels(&[1, 10, 2])?);
    let err = read_idx_pair("t", &img, &lab, 10, None).expect_err("label 10 of 10 classes");
    match &err {
        DataError::LabelOutOfRange {
            index,
            label,
            n_classes,
            ..
        } => {
            assert_eq!((*index, *label, *n_classes), (1, 10, 10));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    names_file(&err, &lab);
    Ok(())
}

#[test]
fn idx_empty_and_wrong_dims() -> R {
    let dir = tempfile::tempdir()?;
    let p = write(dir.path(), "empty", &encode_idx_images(0, 28, 28, &[])?);
    let err = read_idx_images(&p).expect_err("0 images");
    assert!(matches!(err, DataError::Empty { .. }), "{err:?}");
    names_file(&err, &p);

    let (pixels, labels) = three_images();
    let img = write(dir.path(), "imgs", &encode_idx_images(3, 4, 5, &pixels)?);
    let lab = write(dir.path(), "labs", &encode_idx_labels(&labels)?);
    let err = read_idx_pair("t", &img, &lab, 10, Some((28, 28))).expect_err("4×5 is not 28×28");
    assert!(matches!(err, DataError::BadDims { .. }), "{err:?}");
    names_file(&err, &img);
    Ok(())
}

#[test]
fn cifar_batches() -> R {
    let dir = tempfile::tempdir()?;
    let pixels: Vec<u8> = (0..2 * 3072).map(|v| (v % 251) as u8).collect();
    let ok = write(
        dir.path(),
        "ok.bin",
        &encode_cifar_batch(CifarKind::Cifar10, &pixels, &[3, 9])?,
    );
    let (p, l) = read_cifar_batch(&ok, CifarKind::Cifar10)?;
    assert_eq!((p, l), (pixels.clone(), vec![3, 9]));

    // CIFAR-100 keeps the fine label (second byte): craft a record with coarse 19, fine 77.
    let mut rec = vec![19u8, 77];
    rec.extend_from_slice(&pixels[..3072]);
    let c100 = write(dir.path(), "c100.bin", &rec);
    assert_eq!(read_cifar_batch(&c100, CifarKind::Cifar100)?.1, vec![77]);

    let mut bytes = std::fs::read(&ok)?;
    bytes.pop();
    let short = write(dir.path(), "short.bin", &bytes);
    let err = read_cifar_batch(&short, CifarKind::Cifar10).expect_err("not a multiple of 3073");
    match &err {
        DataError::BadRecordLength { len, record, .. } => {
            assert_eq!((*len, *record), (2 * 3073 - 1, 3073))
        }
        other => panic!("wrong variant: {other:?}"),
    }
    names_file(&err, &short);
    // A CIFAR-10 file read as CIFAR-100 has the wrong record size too.
    assert!(matches!(
        read_cifar_batch(&ok, CifarKind::Cifar100),
        Err(DataError::BadRecordLength { .. })
    ));

    let empty = write(dir.path(), "empty.bin", &[]);
    assert!(matches!(
        read_cifar_batch(&empty, CifarKind::Cifar10),
        Err(DataError::BadRecordLength { len: 0, .. })
    ));

    let bad = write(
        dir.path(),
        "bad.bin",
        &encode_cifar_batch(CifarKind::Cifar10, &pixels, &[3, 10])?,
    );
    let err = read_cifar_batch(&bad, CifarKind::Cifar10).expect_err("label 10");
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            }
        ),
        "{err:?}"
    );
    names_file(&err, &bad);
    Ok(())
}

#[test]
fn cifar10_lookup_in_archive_folder() -> R {
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&folder)?;
    let pixels = vec![128u8; 3072];
    for (i, f) in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ]
    .iter()
    .enumerate()
    {
        write(
            &folder,
            f,
            &encode_cifar_batch(CifarKind::Cifar10, &pixels, &[i as u8])?,
        );
    }
    write(
        &folder,
        "test_batch.bin",
        &encode_cifar_batch(CifarKind::Cifar10, &pixels, &[7])?,
    );
    let l = load_images("cifar10", Some(dir.path()))?;
    assert_eq!(l.source, folder);
    assert_eq!(l.train.labels, vec![0, 1, 2, 3, 4]);
    assert_eq!(l.test.labels, vec![7]);
    assert_eq!(
        (l.train.channels, l.train.height, l.train.width, l.train.n_classes),
        (3, 32, 32, 10)
    );
    Ok(())
}

#[test]
fn not_found_lists_every_place() -> R {
    let dir = tempfile::tempdir()?;
    let err = load_images("mnist", Some(dir.path())).expect_err("nothing there");
    let DataError::NotFound { name, searched } = &err else {
        panic!("wrong variant: {err:?}");
    };
    assert_eq!(name, "mnist");
    assert_eq!(searched[0], dir.path());
    assert_eq!(searched[1], dir.path().join("mnist"));
    assert!(searched.contains(&PathBuf::from("/usr/share/datasets/mnist")));
    let msg = err.to_string();
    for p in searched {
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
    assert!(matches!(
        load_images("no-such-set", None),
        Err(DataError::UnknownName { .. })
    ));
    Ok(())
}

#[test]
fn csv_tables() -> R {
    let dir = tempfile::tempdir()?;
    let good = write(dir.path(), "good.csv", b"a,b,y\n1,2,3\n4,5,6\n\n");
    let t = read_csv_table(&good, "good", "y")?;
    assert_eq!((t.len(), t.n_features), (2, 2));
    assert_eq!(t.x, vec![1.0, 2.0, 4.0, 5.0]);
    assert_eq!(t.y, vec![3.0, 6.0]);
    assert_eq!(t.columns, vec!["a", "b"]);
    // Target in the middle, semicolon-separated like the original UCI files.
    let semi = write(dir.path(), "semi.csv", b"\"a\";\"y\";\"b\"\n1;2;3\n");
    let t = read_csv_table(&semi, "semi", "y")?;
    assert_eq!((t.x.clone(), t.y.clone()), (vec![1.0, 3.0], vec![2.0]));

    let bad = write(dir.path(), "bad.csv", b"a,b,y\n1,2,3\n4,oops,6\n");
    let err = read_csv_table(&bad, "bad", "y").expect_err("non-numeric cell");
    match &err {
        DataError::BadCell {
            line,
            column,
            name,
            cell,
            ..
        } => {
            assert_eq!((*line, *column, name.as_str(), cell.as_str()), (3, 2, "b", "oops"));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    names_file(&err, &bad);
    assert!(err.to_string().contains("line 3, column 2"));

    let err = read_csv_table(&good, "good", "target").expect_err("no such column");
    match &err {
        DataError::MissingColumn { target, columns, .. } => {
            assert_eq!(target, "target");
            assert_eq!(columns, &vec!["a".to_string(), "b".into(), "y".into()]);
        }
        other => panic!("wrong variant: {other:?}"),
    }
    names_file(&err, &good);

    let ragged = write(dir.path(), "ragged.csv", b"a,y\n1,2,3\n");
    assert!(matches!(
        read_csv_table(&ragged, "r", "y"),
        Err(DataError::BadCsv { line: 2, .. })
    ));
    let header_only = write(dir.path(), "header.csv", b"a,y\n");
    assert!(matches!(
        read_csv_table(&header_only, "h", "y"),
        Err(DataError::Empty { .. })
    ));
    Ok(())
}

#[test]
fn shipped_fashion_mnist_mini_is_balanced() -> R {
    let l = load_images("fashion-mnist-mini", None)?;
    assert_eq!(l.train.len(), 10_000);
    assert_eq!(l.test.len(), 2_000);
    assert_eq!(l.train.class_counts(), vec![1_000; 10]);
    assert_eq!(l.test.class_counts(), vec![200; 10]);
    assert_eq!((l.train.channels, l.train.height, l.train.width), (1, 28, 28));
    Ok(())
}

#[test]
fn shipped_uci_digits() -> R {
    let l = load_images("uci-digits", None)?;
    assert_eq!(l.test.len(), 1_797);
    assert_eq!(l.train.len(), 1_797);
    assert_eq!(
        (l.test.channels, l.test.height, l.test.width, l.test.n_classes),
        (1, 28, 28, 10)
    );
    // The 4-pixel border is empty; the box is not.
    let img = l.test.image(0).expect("first image");
    assert!(img[..4 * 28].iter().all(|&v| v == 0));
    assert!(img.iter().any(|&v| v > 200));
    // scikit-learn's digits: 178 zeros, 182 ones, … (load_digits().target counts)
    assert_eq!(
        l.test.class_counts(),
        vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    Ok(())
}

#[test]
fn shipped_tables_and_table_batch() -> R {
    let d = load_table("diabetes", None)?;
    assert_eq!(
        (d.set.len(), d.set.n_features, d.set.target.as_str()),
        (442, 10, "target")
    );
    // First row of scikit-learn's raw diabetes data: age 59 … target 151.
    assert_eq!((d.set.x[0], d.set.y[0]), (59.0, 151.0));
    let w = load_table("wine-quality-red", None)?;
    assert_eq!(
        (w.set.len(), w.set.n_features, w.set.target.as_str()),
        (1_599, 11, "quality")
    );

    let st = d.set.standardizer();
    let all: Vec<usize> = (0..d.set.len()).collect();
    let (x, y) = table_batch(&d.set, &all, &st, &Device::Cpu)?;
    assert_eq!(x.dims(), &[442, 10]);
    let x = x.to_vec2::<f32>()?;
    for j in 0..10 {
        let col: Vec<f64> = x.iter().map(|r| f64::from(r[j])).collect();
        let m = col.iter().sum::<f64>() / col.len() as f64;
        let v = col.iter().map(|c| (c - m).powi(2)).sum::<f64>() / col.len() as f64;
        assert!(
            m.abs() < 1e-4 && (v.sqrt() - 1.0).abs() < 1e-3,
            "column {j}: mean {m}, std {}",
            v.sqrt()
        );
    }
    let y = y.to_vec1::<f32>()?;
    assert!((st.unstandardize_y(y[0]) - 151.0).abs() < 1e-3);
    Ok(())
}

#[test]
fn describe_reports_counts() -> R {
    let s = describe("fashion-mnist-mini", None)?;
    assert!(s.contains("train: 10000 images"), "{s}");
    assert!(s.contains("[200, 200, 200, 200, 200, 200, 200, 200, 200, 200]"), "{s}");
    let t = describe("diabetes", None)?;
    assert!(t.contains("rows: 442"), "{t}");
    Ok(())
}

#[test]
fn explicit_data_dir_both_forms() -> R {
    let dir = tempfile::tempdir()?;
    let (pixels, labels) = three_images();
    let sub = dir.path().join("mnist");
    std::fs::create_dir(&sub)?;
    // 3 images of 28×28 built from the small pattern, repeated.
    let big: Vec<u8> = pixels.iter().cycle().take(3 * 784).copied().collect();
    for d in [dir.path(), sub.as_path()] {
        write_idx_images_gz(&d.join("train-images-idx3-ubyte.gz"), 3, 28, 28, &big)?;
        write_idx_labels_gz(&d.join("train-labels-idx1-ubyte.gz"), &labels)?;
        write_idx_images_gz(&d.join("t10k-images-idx3-ubyte.gz"), 3, 28, 28, &big)?;
        write_idx_labels_gz(&d.join("t10k-labels-idx1-ubyte.gz"), &labels)?;
    }
    assert_eq!(load_images("mnist", Some(dir.path()))?.source, dir.path());
    assert_eq!(load_images("mnist", Some(&sub))?.source, sub);
    for f in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
        std::fs::remove_file(dir.path().join(f))?;
    }
    // The top folder now misses files, so `dir/mnist` is used.
    let l = load_images("mnist", Some(dir.path()))?;
    assert_eq!(l.source, sub);
    assert_eq!(l.train.labels, vec![2, 0, 9]);
    Ok(())
}

fn random_rgb(n: usize, seed: u64) -> ImageSet {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Channels with different ranges so that the per-channel statistics differ.
    let mut pixels = Vec::with_capacity(n * 3 * 36);
    for _ in 0..n {
        for c in 0..3u8 {
            for _ in 0..36 {
                pixels.push(rng.random_range(0..=(80 + 80 * c)));
            }
        }
    }
    ImageSet {
        name: "rgb".into(),
        channels: 3,
        height: 6,
        width: 6,
        n_classes: 4,
        pixels,
        labels: (0..n as u32).map(|i| i % 4).collect(),
    }
}

#[test]
fn normalised_batch_has_zero_mean_unit_std_per_channel() -> R {
    let set = random_rgb(50, 1);
    let norm = Normalizer::from_set(&set);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let all: Vec<usize> = (0..set.len()).collect();
    let (x, y) = image_batch(&set, &all, &norm, None, &mut rng, &Device::Cpu)?;
    assert_eq!(x.dims(), &[50, 3, 6, 6]);
    assert_eq!(y.to_vec1::<u32>()?, set.labels);
    let flat = x.flatten_all()?.to_vec1::<f32>()?;
    // Independent computation: gather each channel's values from the flat NCHW buffer.
    for c in 0..3 {
        let vals: Vec<f64> = (0..50)
            .flat_map(|n| {
                flat[(n * 3 + c) * 36..(n * 3 + c + 1) * 36]
                    .iter()
                    .map(|&v| f64::from(v))
            })
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let sd = (vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        assert!(m.abs() < 1e-4, "channel {c} mean {m}");
        assert!((sd - 1.0).abs() < 1e-4, "channel {c} std {sd}");
    }
    // The three channels really had different raw statistics.
    assert!(norm.std[2] > 1.5 * norm.std[0]);
    Ok(())
}

#[test]
fn augment_hand_computed() -> R {
    let a = Augment { pad: 4, flip: true };
    // 1×3×4 image with values 1..=12: rows [1 2 3 4] [5 6 7 8] [9 10 11 12].
    let src: Vec<u8> = (1..=12).collect();
    // dy = 5, dx = 2: out[y][x] = src[y + 1][x − 2] → shifted up one row and right two columns.
    let d = AugmentDraw {
        dy: 5,
        dx: 2,
        flip: false,
    };
    assert_eq!(a.apply(d, &src, 1, 3, 4), vec![0, 0, 5, 6, 0, 0, 9, 10, 0, 0, 0, 0]);
    // Same crop, mirrored: each row of the crop reversed.
    let d = AugmentDraw { flip: true, ..d };
    assert_eq!(a.apply(d, &src, 1, 3, 4), vec![6, 5, 0, 0, 10, 9, 0, 0, 0, 0, 0, 0]);
    // A crop entirely in the padding is all zeros.
    let d = AugmentDraw {
        dy: 0,
        dx: 0,
        flip: false,
    };
    assert_eq!(a.apply(d, &src, 1, 3, 4), vec![0; 12]);
    Ok(())
}

#[test]
fn augmented_batch_uses_drawn_offsets() -> R {
    let set = random_rgb(4, 2);
    let norm = Normalizer::identity(3);
    let a = Augment::default();
    let idx = [3usize, 0, 2];
    let (x, _) = image_batch(
        &set,
        &idx,
        &norm,
        Some(&a),
        &mut ChaCha8Rng::seed_from_u64(9),
        &Device::Cpu,
    )?;
    let flat = x.flatten_all()?.to_vec1::<f32>()?;
    // Replay the draws with the same seed, in batch order, and shift by hand.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut n_moved = 0;
    for (b, &i) in idx.iter().enumerate() {
        let d = a.draw(&mut rng);
        assert!(d.dy <= 8 && d.dx <= 8);
        n_moved += usize::from(d.dy != 4 || d.dx != 4 || d.flip);
        let img = set.image(i).expect("image");
        for c in 0..3 {
            for y in 0..6 {
                for x in 0..6 {
                    let xs = if d.flip { 5 - x } else { x };
                    let (sy, sx) = (y as isize + d.dy as isize - 4, xs as isize + d.dx as isize - 4);
                    let want = if (0..6).contains(&sy) && (0..6).contains(&sx) {
                        f32::from(img[c * 36 + sy as usize * 6 + sx as usize]) / 255.0
                    } else {
                        0.0
                    };
                    let got = flat[((b * 3 + c) * 6 + y) * 6 + x];
                    assert!((got - want).abs() < 1e-6, "b{b} c{c} y{y} x{x}: {got} vs {want}");
                }
            }
        }
    }
    assert!(n_moved > 0, "no draw moved anything: the test would not see a bug");
    Ok(())
}

#[test]
fn same_seed_same_shuffle_and_batch() -> R {
    let a = shuffled_indices(100, &mut ChaCha8Rng::seed_from_u64(5));
    let b = shuffled_indices(100, &mut ChaCha8Rng::seed_from_u64(5));
    let c = shuffled_indices(100, &mut ChaCha8Rng::seed_from_u64(6));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());

    let set = random_rgb(8, 3);
    let norm = Normalizer::from_set(&set);
    let aug = Augment::default();
    let batch = |seed| -> candle_core::Result<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (x, _) = image_batch(&set, &[1, 5, 7], &norm, Some(&aug), &mut rng, &Device::Cpu)?;
        x.flatten_all()?.to_vec1::<f32>()
    };
    assert_eq!(batch(11)?, batch(11)?);
    assert_ne!(batch(11)?, batch(12)?);
    Ok(())
}

#[test]
fn split_is_disjoint_and_covers() -> R {
    let mut set = random_rgb(101, 4);
    // Tag each image by its index in its first pixel so the parts can be traced back.
    for i in 0..101 {
        set.pixels[i * 108] = i as u8;
    }
    let (train, val) = set.split(0.2, &mut ChaCha8Rng::seed_from_u64(1))?;
    assert_eq!((train.len(), val.len()), (81, 20));
    let mut seen: Vec<u8> = train
        .pixels
        .iter()
        .step_by(108)
        .chain(val.pixels.iter().step_by(108))
        .copied()
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..101u8).collect::<Vec<_>>());
    let (t2, v2) = set.split(0.2, &mut ChaCha8Rng::seed_from_u64(1))?;
    assert_eq!((t2, v2), (train, val));
    Ok(())
}

/// An explicit `--data-dir` that holds a set only in part (a file missing, or a directory where
/// a file should be) is an error naming the file, not a silent fall-back to the shipped copy.
#[test]
fn an_incomplete_data_dir_is_refused_naming_the_file() -> R {
    let dir = tempfile::tempdir()?;
    let (pixels, labels) = three_images();
    write_idx_images_gz(&dir.path().join("train-images-idx3-ubyte.gz"), 3, 4, 5, &pixels)?;
    write_idx_labels_gz(&dir.path().join("train-labels-idx1-ubyte.gz"), &labels)?;
    write_idx_images_gz(&dir.path().join("t10k-images-idx3-ubyte.gz"), 3, 4, 5, &pixels)?;
    let e = load_images("fashion-mnist-mini", Some(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("missing"), "{e}");
    std::fs::create_dir(dir.path().join("t10k-labels-idx1-ubyte"))?;
    let e = load_images("fashion-mnist-mini", Some(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("not a file"), "{e}");
    // a directory without any of the files is no claim to hold the set: the shipped copy loads
    let empty = tempfile::tempdir()?;
    assert!(load_images("fashion-mnist-mini", Some(empty.path())).is_ok());
    Ok(())
}

/// A gzip IDX file that expands far past its header's size stops one byte past the announced
/// end and is refused as having trailing bytes.
#[test]
fn a_gzip_bomb_is_stopped_at_the_header_size() -> R {
    let dir = tempfile::tempdir()?;
    let (pixels, _) = three_images();
    let mut bytes = encode_idx_images(3, 4, 5, &pixels)?;
    bytes.resize(bytes.len() + (32 << 20), 0);
    let p = dir.path().join("imgs.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&p)?, flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &bytes)?;
    enc.finish()?;
    let e = read_idx_images(&p).unwrap_err();
    names_file(&e, &p);
    match e {
        DataError::LengthMismatch { actual, expected, .. } => assert_eq!((actual, expected), (16 + 60 + 1, 16 + 60)),
        other => panic!("{other}"),
    }
    Ok(())
}
