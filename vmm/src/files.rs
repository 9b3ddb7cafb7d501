//! The I/O behind [`config::Files`]: what the configuration checks learn of the kernel,
//! initrd and pmem backing files they are given, asked of the operating system.

use crate::config::{self, pmem, FileError};
use std::path::Path;

/// Answers [`config::Files`] from the host's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFiles;

impl config::Files for HostFiles {
    fn image(&self, path: &Path) -> Result<u64, FileError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FileError::NotFound,
            _ => FileError::Inspect(e),
        })?;
        if !meta.is_file() {
            return Err(FileError::NotAFile);
        }
        std::fs::File::open(path).map_err(FileError::Open)?;
        Ok(meta.len())
    }

    fn pmem(&self, path: &Path) -> Result<pmem::FileFacts, pmem::SpecError> {
        crate::pmem_backing::inspect(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::Files;

    #[test]
    fn images_are_regular_readable_files() {
        let dir = std::env::temp_dir().join(format!("refvmm-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("Image");
        std::fs::write(&file, b"not really a kernel").unwrap();

        assert_eq!(HostFiles.image(&file).unwrap(), 19);
        assert!(matches!(
            HostFiles.image(&dir.join("missing")),
            Err(FileError::NotFound)
        ));
        assert!(matches!(HostFiles.image(&dir), Err(FileError::NotAFile)));
        let below_a_file = file.join("Image");
        let e = HostFiles.image(&below_a_file).unwrap_err();
        assert!(matches!(e, FileError::Inspect(_)));
        assert_eq!(
            crate::error_chain(&e),
            "cannot inspect it: Not a directory (os error 20)"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
