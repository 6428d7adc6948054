//! Reading whole files, gzip-compressed or not, and writing gzip files.

use std::io::{Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::DataError;

/// The first two bytes of every gzip stream.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file; if it starts with the gzip magic (`1f 8b`) it is decompressed, whatever
/// its name. Returns the (decompressed) bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
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
