//! Reading whole files, gzip-compressed or not, and writing gzip files.

use std::io::{Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::DataError;

/// The first two bytes of every gzip stream.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most bytes a gzip file without a size in its header (CIFAR batches, CSV tables) may
/// decompress to: 1 GiB, seven times CIFAR-100's training batch, the largest file of the
/// supported sets (IDX files are bounded by their headers, see [`read_maybe_gz_sized`]).
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Reads a whole file; if it starts with the gzip magic (`1f 8b`) it is decompressed, whatever
/// its name, to at most [`MAX_DECOMPRESSED`] bytes. Returns the (decompressed) bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    read_maybe_gz_limited(path, MAX_DECOMPRESSED)
}

/// [`read_maybe_gz`] with a decompression limit of `limit` bytes ([`DataError::TooLarge`] past it).
pub fn read_maybe_gz_limited(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(raw.as_slice())
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        if out.len() as u64 > limit {
            return Err(DataError::TooLarge {
                path: path.to_path_buf(),
                limit,
            });
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads a file like [`read_maybe_gz`], but bounds the decompression by the size the file's own
/// header announces: the first `header` bytes are read, `total` computes the whole
/// (decompressed) length from them (`None`: the header is not valid, and only it is returned,
/// for the caller's checks to name the fault), and at most one byte past that length is
/// decompressed. A small gzip file that would expand far beyond its header's size (a gzip bomb)
/// is thus stopped one byte past the announced end, and the caller's length check reports
/// trailing bytes, instead of being decompressed whole.
pub fn read_maybe_gz_sized(
    path: &Path,
    header: usize,
    total: impl FnOnce(&[u8]) -> Option<usize>,
) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic).map_err(io)?;
    if got < 2 || magic != GZIP_MAGIC {
        // Not gzip: the file on disk is its own bound.
        return read_maybe_gz_limited(path, u64::MAX);
    }
    let gz = |source| DataError::Gzip {
        path: path.to_path_buf(),
        source,
    };
    let mut dec = GzDecoder::new(std::io::Read::chain(&magic[..], file));
    let mut out = Vec::new();
    (&mut dec).take(header as u64).read_to_end(&mut out).map_err(gz)?;
    if out.len() < header {
        return Ok(out);
    }
    let Some(total) = total(&out) else {
        return Ok(out);
    };
    let rest = (total.saturating_sub(header) as u64).saturating_add(1);
    (&mut dec).take(rest).read_to_end(&mut out).map_err(gz)?;
    Ok(out)
}

/// Reads until `buf` is full or the reader ends; the number of bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes `bytes` gzip-compressed (best compression) to `path`, replacing any file there.
pub fn write_gz(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let err = |source| DataError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(err)?;
    let mut enc = GzEncoder::new(std::io::BufWriter::new(file), Compression::best());
    enc.write_all(bytes).map_err(err)?;
    let mut inner = enc.finish().map_err(err)?;
    inner.flush().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip file whose header announces 20 bytes but which expands to 64 MiB is decompressed
    /// only to one byte past the announced end (the caller then reports trailing bytes); a file
    /// of the announced size, and a raw file, read whole.
    #[test]
    fn decompression_stops_one_byte_past_the_announced_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.gz");
        let mut bytes = vec![0u8; 64 << 20];
        bytes[3] = 20; // "total length 20" in the first 4 bytes, as the header
        write_gz(&p, &bytes).unwrap();
        assert!(
            std::fs::metadata(&p).unwrap().len() < 1 << 20,
            "the bomb is small on disk"
        );
        let total = |h: &[u8]| Some(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
        let out = read_maybe_gz_sized(&p, 4, total).unwrap();
        assert_eq!(out.len(), 21);
        write_gz(&p, &bytes[..20]).unwrap();
        assert_eq!(read_maybe_gz_sized(&p, 4, total).unwrap(), &bytes[..20]);
        let raw = dir.path().join("raw");
        std::fs::write(&raw, &bytes[..30]).unwrap();
        assert_eq!(read_maybe_gz_sized(&raw, 4, total).unwrap().len(), 30);
        // without a header size, the generic limit holds
        write_gz(&p, &bytes[..5000]).unwrap();
        let e = read_maybe_gz_limited(&p, 1000).unwrap_err();
        assert!(matches!(e, DataError::TooLarge { limit: 1000, .. }), "{e}");
        assert_eq!(read_maybe_gz_limited(&p, 5000).unwrap().len(), 5000);
        // a header the caller rejects: only the header comes back
        write_gz(&p, &bytes[..1000]).unwrap();
        assert_eq!(read_maybe_gz_sized(&p, 4, |_| None).unwrap().len(), 4);
    }
}
