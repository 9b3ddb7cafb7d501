//! The `--disk` specification, validated into [`DiskConfig`]. No I/O: the image is opened,
//! locked and measured when the VM is built (`crate::disk_image`), still before the guest
//! runs.
//!
//! Syntax (`--disk`, repeatable; the keys are Cloud Hypervisor's):
//!
//! ```text
//! path=PATH[,readonly=on|off][,direct=on|off][,serial=ID]
//! ```
//!
//! - `path`: a raw image file or a block device.
//! - `readonly=on`: the guest sees a read-only disk and every write is refused; the image is
//!   opened for reading only, under a shared lock.
//! - `direct=on`: the image is opened with `O_DIRECT` (no host page cache); the guest is told
//!   the disk has 4096-byte blocks, and a request that is not aligned to them fails.
//! - `serial=ID`: what the guest reads as the disk's serial (at most 20 printable ASCII
//!   characters, no comma).
//!
//! Paths cannot contain commas.

use std::path::PathBuf;

/// Longest serial the virtio-blk `GET_ID` request can carry.
pub const SERIAL_MAX: usize = 20;

/// A validated `--disk` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image: a regular file or a block device.
    pub path: PathBuf,
    /// Offer the disk read-only and open the image for reading only.
    pub readonly: bool,
    /// Open the image with `O_DIRECT`.
    pub direct: bool,
    /// The serial the guest reads (at most [`SERIAL_MAX`] printable ASCII bytes), if any.
    pub serial: Option<String>,
}

/// A `--disk` specification that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("--disk {spec:?}: {reason} (use path=PATH[,readonly=on][,direct=on][,serial=ID])")]
pub struct SpecError {
    /// The specification given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key} takes on or off, not {v:?}")),
    }
}

impl DiskConfig {
    /// Parses one `--disk` specification.
    pub fn from_spec(spec: &str) -> Result<Self, SpecError> {
        Self::parse(spec).map_err(|reason| SpecError {
            spec: spec.to_string(),
            reason,
        })
    }

    fn parse(spec: &str) -> Result<Self, String> {
        let mut path = None;
        let mut readonly = None;
        let mut direct = None;
        let mut serial = None;
        for item in spec.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(if item.is_empty() {
                    "empty item".into()
                } else {
                    format!("{item} needs a value ({item}=...)")
                });
            };
            let twice = || format!("{key} given twice");
            match key {
                "path" => {
                    if value.is_empty() {
                        return Err("path= needs a path".into());
                    }
                    if path.replace(PathBuf::from(value)).is_some() {
                        return Err(twice());
                    }
                }
                "readonly" => {
                    if readonly.replace(on_off(key, value)?).is_some() {
                        return Err(twice());
                    }
                }
                "direct" => {
                    if direct.replace(on_off(key, value)?).is_some() {
                        return Err(twice());
                    }
                }
                "serial" => {
                    if value.len() > SERIAL_MAX {
                        return Err(format!(
                            "serial {value:?} is longer than {SERIAL_MAX} characters"
                        ));
                    }
                    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                        return Err(format!(
                            "serial {value:?} must be printable ASCII characters"
                        ));
                    }
                    if serial.replace(value.to_string()).is_some() {
                        return Err(twice());
                    }
                }
                "" => return Err("empty key".into()),
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        Ok(DiskConfig {
            path: path.ok_or("no image: give path=PATH")?,
            readonly: readonly.unwrap_or(false),
            direct: direct.unwrap_or(false),
            serial: serial.filter(|s| !s.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(spec: &str) -> String {
        DiskConfig::from_spec(spec).unwrap_err().reason
    }

    #[test]
    fn a_path_alone_is_a_writable_cached_disk_without_serial() {
        let d = DiskConfig::from_spec("path=/images/root.img").unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/images/root.img".into(),
                readonly: false,
                direct: false,
                serial: None,
            }
        );
    }

    #[test]
    fn every_key_is_understood_in_any_order() {
        let d =
            DiskConfig::from_spec("serial=disk-01,direct=on,readonly=on,path=/dev/vdb").unwrap();
        assert_eq!(d.path, PathBuf::from("/dev/vdb"));
        assert!(d.readonly && d.direct);
        assert_eq!(d.serial.as_deref(), Some("disk-01"));
        let d = DiskConfig::from_spec("path=a,readonly=off,direct=false").unwrap();
        assert!(!d.readonly && !d.direct);
    }

    #[test]
    fn bad_specifications_say_what_is_wrong() {
        assert_eq!(reason("readonly=on"), "no image: give path=PATH");
        assert_eq!(reason("path="), "path= needs a path");
        assert_eq!(reason("path=a,path=b"), "path given twice");
        assert_eq!(
            reason("path=a,readonly=maybe"),
            "readonly takes on or off, not \"maybe\""
        );
        assert_eq!(
            reason("path=a,readonly"),
            "readonly needs a value (readonly=...)"
        );
        assert_eq!(reason("path=a,,direct=on"), "empty item");
        assert_eq!(reason("path=a,size=1G"), "unknown key \"size\"");
        assert_eq!(reason("path=a,=x"), "empty key");
        assert!(reason("path=a,serial=123456789012345678901").contains("longer than 20"));
        assert!(reason("path=a,serial=tab\there").contains("printable ASCII"));
        let e = DiskConfig::from_spec("path=a,direct=2").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("--disk \"path=a,direct=2\": direct takes on or off"));
    }

    #[test]
    fn the_longest_serial_fits_and_an_empty_one_is_none() {
        let s = "A".repeat(SERIAL_MAX);
        let d = DiskConfig::from_spec(&format!("path=a,serial={s}")).unwrap();
        assert_eq!(d.serial.as_deref(), Some(s.as_str()));
        assert_eq!(
            DiskConfig::from_spec("path=a,serial=").unwrap().serial,
            None
        );
    }
}
