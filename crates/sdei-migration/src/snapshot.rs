//! [`Snapshot`]: capture, encode, decode and restore.
//!
//! A snapshot is the 32-byte [`SnapshotHeader`] followed by the payload. The payload of
//! format 1.x is the postcard encoding of the version 1 wire struct, followed by zero or
//! more optional sections, each `tag: u16 LE, length: u32 LE, length bytes`. Format 1.0
//! defines no section; a reader of minor `m` skips the sections of a snapshot of a newer minor
//! (whose header must carry [`FLAG_OPTIONAL_ONLY`](crate::FLAG_OPTIONAL_ONLY)), and refuses
//! a section it does not know in a snapshot of minor `m` or older, where it knows every tag.

use std::io::{Read, Write};

use sdei_dispatch::{Dispatcher, DispatcherConfig, DispatcherState};

use crate::error::{Result, SnapshotError};
use crate::header::{HeaderError, SnapshotHeader, FORMAT, HEADER_LEN, MAX_PAYLOAD_LEN};
use crate::mismatch::ConfigMismatch;
use crate::wire::SnapshotV1;

/// Size of an optional section's tag and length.
const SECTION_HEADER_LEN: usize = 6;

/// The complete state of an SDEI dispatcher, configuration included, as saved or loaded.
///
/// A decoded snapshot is untrusted: its fields have passed the format's own checks, but only
/// [`restore`](Snapshot::restore) (or `Dispatcher::try_from`) decides whether the state is one
/// the dispatcher could have reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    state: DispatcherState,
}

impl Snapshot {
    /// Captures everything `dispatcher` holds.
    pub fn capture(dispatcher: &Dispatcher) -> Snapshot {
        Snapshot {
            state: dispatcher.state(),
        }
    }

    /// Wraps a state taken earlier with `Dispatcher::state`.
    pub fn from_state(state: DispatcherState) -> Snapshot {
        Snapshot { state }
    }

    /// The saved dispatcher state.
    pub fn state(&self) -> &DispatcherState {
        &self.state
    }

    /// The configuration of the VM the snapshot was taken on.
    pub fn config(&self) -> &DispatcherConfig {
        &self.state.config
    }

    /// Gives the saved state back.
    pub fn into_state(self) -> DispatcherState {
        self.state
    }

    /// Encodes the snapshot in the newest format version, header included.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let payload =
            postcard::to_allocvec(&SnapshotV1::from(&self.state)).map_err(SnapshotError::Encode)?;
        // Over the cap only for a state no dispatcher holds; no reader would accept it.
        Ok(FORMAT.seal(&payload)?)
    }

    /// Writes [`encode`](Snapshot::encode)'s bytes to `writer`.
    pub fn write_to<W: Write>(&self, mut writer: W) -> Result<()> {
        writer.write_all(&self.encode()?).map_err(SnapshotError::Io)
    }

    /// Decodes a snapshot that is exactly `bytes`: a header, then the payload it announces.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot> {
        let (header, payload) = FORMAT.open(bytes)?;
        decode_payload(&header, payload)
    }

    /// Reads one snapshot from `reader`: the header, then exactly the payload it announces
    /// (bytes after it are left unread). The payload buffer is allocated only after the
    /// header has been checked, so at most [`MAX_PAYLOAD_LEN`] bytes.
    pub fn read_from<R: Read>(mut reader: R) -> Result<Snapshot> {
        let mut head = Vec::with_capacity(HEADER_LEN);
        (&mut reader)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut head)
            .map_err(SnapshotError::Io)?;
        let header = FORMAT.parse(&head)?;
        let len = usize::try_from(header.payload_len).map_err(|_| HeaderError::Oversized {
            len: header.payload_len,
            max: MAX_PAYLOAD_LEN,
        })?;
        let mut payload = Vec::with_capacity(len);
        reader
            .take(header.payload_len)
            .read_to_end(&mut payload)
            .map_err(SnapshotError::Io)?;
        header.check_payload(&payload)?;
        decode_payload(&header, &payload)
    }

    /// Restores the snapshot into a new dispatcher for a VM configured as `config`.
    ///
    /// Refuses a snapshot taken on a VM configured differently
    /// ([`ConfigMismatch`](SnapshotError::ConfigMismatch), naming the first difference), and
    /// a state the dispatcher could never have reached ([`Invalid`](SnapshotError::Invalid)).
    /// Two spellings of one configuration (see [`ConfigMismatch::find`]) match; the restored
    /// dispatcher keeps `config`'s.
    pub fn restore(self, config: DispatcherConfig) -> Result<Dispatcher> {
        if let Some(mismatch) = ConfigMismatch::find(&self.state.config, &config) {
            return Err(SnapshotError::ConfigMismatch(mismatch));
        }
        let mut state = self.state;
        state.config = config.clone();
        Dispatcher::restore(config, state).map_err(SnapshotError::Invalid)
    }
}

impl From<&Dispatcher> for Snapshot {
    fn from(dispatcher: &Dispatcher) -> Self {
        Snapshot::capture(dispatcher)
    }
}

/// Restores a snapshot under the configuration it carries, validating the state.
impl TryFrom<Snapshot> for Dispatcher {
    type Error = SnapshotError;

    fn try_from(snapshot: Snapshot) -> Result<Self> {
        let config = snapshot.state.config.clone();
        snapshot.restore(config)
    }
}

/// Decodes a payload that has passed the header's checks.
fn decode_payload(header: &SnapshotHeader, payload: &[u8]) -> Result<Snapshot> {
    let (body, mut rest) =
        postcard::take_from_bytes::<SnapshotV1>(payload).map_err(SnapshotError::Decode)?;
    while !rest.is_empty() {
        let tag = rest.get(..2).and_then(|b| b.try_into().ok());
        let len = rest
            .get(2..SECTION_HEADER_LEN)
            .and_then(|b| b.try_into().ok());
        let (Some(tag), Some(len)) = (tag, len) else {
            return Err(SnapshotError::Malformed("optional section header"));
        };
        let (tag, len) = (u16::from_le_bytes(tag), u32::from_le_bytes(len) as usize);
        if !FORMAT.is_newer(header) {
            // Format 1.0 defines no section: a snapshot this reader fully knows has none.
            return Err(SnapshotError::UnknownSection(tag));
        }
        rest = SECTION_HEADER_LEN
            .checked_add(len)
            .and_then(|end| rest.get(end..))
            .ok_or(SnapshotError::Malformed("optional section length"))?;
    }
    Ok(Snapshot {
        state: DispatcherState::try_from(body)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Bounded;

    /// A well-formed snapshot around the wire struct `body`.
    fn framed(body: &SnapshotV1) -> Vec<u8> {
        FORMAT.seal(&postcard::to_allocvec(body).unwrap()).unwrap()
    }

    fn one_vcpu() -> SnapshotV1 {
        let sdei = Dispatcher::new(DispatcherConfig::new(1)).unwrap();
        SnapshotV1::from(&sdei.state())
    }

    #[test]
    fn status_byte_with_undefined_bits_is_malformed() {
        let mut body = one_vcpu();
        body.vcpus.0[0].private_events.0[0].status = 0x80;

        let err = Snapshot::decode(&framed(&body)).unwrap_err();

        assert!(
            matches!(err, SnapshotError::Malformed("event status")),
            "{err:?}"
        );
    }

    #[test]
    fn more_vcpus_than_any_dispatcher_holds_fail_to_decode() {
        let mut body = one_vcpu();
        let vcpu = body.vcpus.0[0].clone();
        body.vcpus = Bounded(vec![vcpu; sdei_dispatch::config::MAX_VCPUS + 1]);

        let err = Snapshot::decode(&framed(&body)).unwrap_err();

        assert!(matches!(err, SnapshotError::Decode(_)), "{err:?}");
    }

    #[test]
    fn encoded_snapshot_is_header_then_postcard_body() {
        let body = one_vcpu();
        let snapshot = Snapshot::decode(&framed(&body)).unwrap();

        let bytes = snapshot.encode().unwrap();

        assert_eq!(bytes, framed(&body));
        assert_eq!(&bytes[..8], b"SDEISNAP");
    }
}
