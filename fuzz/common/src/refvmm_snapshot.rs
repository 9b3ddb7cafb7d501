//! Targets over refvmm's snapshot files and API framing: `refvmm_snapshot_manifest` (the
//! manifest decoder, whose input comes from a file anyone could have replaced) and
//! `refvmm_api_framing` (reading one request from a client socket).

use refvmm::api::{parse_request, read_request, MAX_REQUEST};
use refvmm::snapshot::{decode_manifest, encode_manifest};
use std::io::Write;
use std::os::unix::net::UnixStream;

/// Decodes `data` as a snapshot manifest twice: as given, and with the header's payload
/// length and both CRC32s recomputed, so that random payloads get past the checksums to the
/// payload decoder. A manifest that decodes must encode to bytes that decode to the same
/// manifest, and every component it lists must obey the caps the reader relies on.
///
/// # Panics
///
/// If the decoder panics, or a decoded manifest breaks the round trip or the caps.
pub fn run_refvmm_snapshot_manifest(data: &[u8]) {
    check_manifest(data);
    if let Some(fixed) = crate::header::with_valid_checksums(data) {
        check_manifest(&fixed);
    }
}

fn check_manifest(data: &[u8]) {
    let Ok(m) = decode_manifest(data) else {
        return;
    };
    assert_eq!(m.mpidrs.len(), usize::from(m.shape.cpus));
    for c in &m.components {
        assert!(!c.name.is_empty() && !c.name.contains('/') && !c.name.starts_with('.'));
        let cap = refvmm::snapshot::component_cap(&c.name, &m.shape);
        assert!(c.len <= cap, "{} has {} bytes", c.name, c.len);
        let memory = c.name == "memory.bin";
        assert!(memory || c.len <= refvmm::snapshot::MAX_COMPONENT);
    }
    let encoded = encode_manifest(&m).expect("a decoded manifest encodes");
    let again = decode_manifest(&encoded).expect("an encoded manifest decodes");
    assert_eq!(again, m);
}

/// Sends `data` as one client's whole byte stream (then end of file) and reads one request
/// from it as the API server does; a request that is read must be the one its first line
/// spells, and that line must fit the size limit.
///
/// # Panics
///
/// If reading panics, or the request read is not what the first line parses to.
pub fn run_refvmm_api_framing(data: &[u8]) {
    let data = data.get(..2 * MAX_REQUEST).unwrap_or(data);
    let (mut server, mut client) = UnixStream::pair().expect("a socket pair");
    // Everything fits in the socket buffer (at most 8 KiB), so no writer thread is needed;
    // the end of file makes the reader stop instead of waiting for its deadline.
    client
        .write_all(data)
        .expect("the client's bytes fit the socket buffer");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown of the client side");
    let Ok(request) = read_request(&mut server) else {
        return;
    };
    let line_end = data
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |i| i + 1);
    assert!(
        line_end <= MAX_REQUEST,
        "a {line_end}-byte request line was accepted"
    );
    let line = std::str::from_utf8(&data[..line_end]).expect("an accepted line is UTF-8");
    assert_eq!(parse_request(line).ok(), Some(request));
}
