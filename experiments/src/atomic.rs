//! Atomic file writes: write a temporary file beside the target, flush it to disk, rename it over
//! the target. A killed run never leaves a half-written file where a good one stood.

use crate::error::{ExpError, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(ExpError::io(path, e));
    }
    Ok(())
}

/// Writes a string to `path` atomically.
pub fn write_string(path: &Path, s: &str) -> Result<()> {
    write_bytes(path, s.as_bytes())
}

/// Saves named tensors as safetensors at `path` atomically, with the mode of any other file the
/// process creates (`0o666` less the umask: 0644 under umask 022).
///
/// The safetensors writer writes a temporary file of its own (mode 0600) and renames it to the
/// name it is given; the temporary file here is therefore first created by
/// [`std::fs::File::create`] to learn the umask's mode, which is given back to the file after
/// the writer has replaced it.
pub fn write_safetensors<'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let tmp = temp_path(path);
    // a stale temporary file would keep its old mode
    let _ = std::fs::remove_file(&tmp);
    let mode = match std::fs::File::create(&tmp).and_then(|f| f.metadata()) {
        Ok(m) => m.permissions(),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(ExpError::io(path, e));
        }
    };
    if let Err(e) = candle_core::safetensors::save(&map, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ExpError::Candle(e.context(format!("writing {}", path.display()))));
    }
    if let Err(e) = std::fs::set_permissions(&tmp, mode).and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ExpError::io(path, e));
    }
    Ok(())
}

/// Loads a safetensors file, naming the file in any error.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(ExpError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ));
    }
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| ExpError::Candle(e.context(format!("reading safetensors {}", path.display()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_and_leaves_no_temp() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ExpError::io("tempdir", e))?;
        let p = dir.path().join("a.json");
        write_string(&p, "one")?;
        write_string(&p, "two")?;
        assert_eq!(std::fs::read_to_string(&p).map_err(|e| ExpError::io(&p, e))?, "two");
        let n = std::fs::read_dir(dir.path())
            .map_err(|e| ExpError::io(dir.path(), e))?
            .count();
        assert_eq!(n, 1);
        Ok(())
    }

    #[test]
    fn failed_write_keeps_the_old_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ExpError::io("tempdir", e))?;
        let p = dir.path().join("missing-dir").join("x");
        assert!(write_string(&p, "x").is_err());
        Ok(())
    }
}
