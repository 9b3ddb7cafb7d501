//! The control API: one request line per connection on a Unix socket, one response line back.
//!
//! ```text
//! status                          -> ok running | ok paused
//! pause                           -> ok paused vcpu0 pc <pc> pstate <pstate> ...
//! resume                          -> ok running
//! snapshot <dir>                  -> ok snapshot <dir> bytes <n> ms <n> ... (VM left paused)
//! quit                            -> ok quitting (refvmm exits with status 12)
//! sdei-signal <event> [<vcpu>]    -> ok pending | ok already-pending | ok not-registered
//! ```
//! Numbers are decimal or `0x` hex. Errors come back as `error <message>`. The client side is
//! `refvmm ctl --api-socket <path> <request...>`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long `refvmm ctl` waits for an answer.
pub const CLIENT_TIMEOUT_SECS: u64 = 900;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 4096;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Is the VM running?
    Status,
    /// Stop the vCPUs (they park between runs).
    Pause,
    /// Let them run again.
    Resume,
    /// Pause (if running) and save a snapshot into a new directory; stays paused.
    Snapshot {
        /// The directory to create.
        dir: std::path::PathBuf,
    },
    /// Stop refvmm (exit status 12).
    Quit,
    /// Raise an SDEI event, on a vCPU for private events.
    SdeiSignal {
        /// Event number.
        event: u32,
        /// Target vCPU (private events).
        vcpu: Option<usize>,
    },
}

/// Errors of the API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The request is not understood.
    #[error("Bad request: {0}")]
    BadRequest(String),
    /// The socket could not be used.
    #[error("API socket {path}: {reason}")]
    Socket {
        /// Socket path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The VMM answered with an error.
    #[error("refvmm refused: {0}")]
    Refused(String),
}

/// Result of API operations.
pub type Result<T> = std::result::Result<T, Error>;

fn number<T: TryFrom<u64>>(s: &str, what: &str) -> Result<T> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    }
    .map_err(|_| Error::BadRequest(format!("{what} {s:?} is not a number")))?;
    T::try_from(v).map_err(|_| Error::BadRequest(format!("{what} {s} is out of range")))
}

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<Request> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => Ok(Request::Status),
        ["pause"] => Ok(Request::Pause),
        ["resume"] => Ok(Request::Resume),
        ["quit"] => Ok(Request::Quit),
        ["snapshot", dir] => Ok(Request::Snapshot { dir: (*dir).into() }),
        ["sdei-signal", event] => Ok(Request::SdeiSignal {
            event: number(event, "event")?,
            vcpu: None,
        }),
        ["sdei-signal", event, vcpu] => Ok(Request::SdeiSignal {
            event: number(event, "event")?,
            vcpu: Some(number(vcpu, "vCPU")?),
        }),
        [] => Err(Error::BadRequest("empty request".into())),
        [cmd, ..] => Err(Error::BadRequest(format!(
            "unknown request {cmd:?} (known: status, pause, resume, snapshot <dir>, quit, sdei-signal <event> [<vcpu>])"
        ))),
    }
}

/// Reads one request line from a client, bounded in size and time.
pub fn read_request(stream: &mut UnixStream) -> Result<Request> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut limited = BufReader::new(Read::by_ref(stream).take(MAX_REQUEST as u64));
    limited
        .read_line(&mut line)
        .map_err(|e| Error::BadRequest(format!("cannot read the request: {e}")))?;
    if !line.ends_with('\n') && line.len() >= MAX_REQUEST {
        return Err(Error::BadRequest(format!(
            "longer than {MAX_REQUEST} bytes"
        )));
    }
    parse_request(&line)
}

/// Sends `request` (words) to the refvmm at `socket` and returns its answer after `ok`.
pub fn client(socket: &Path, request: &[String]) -> Result<String> {
    let line = request.join(" ");
    parse_request(&line)?;
    let sock_err = |reason: String| Error::Socket {
        path: socket.display().to_string(),
        reason,
    };
    let mut s = UnixStream::connect(socket).map_err(|e| sock_err(e.to_string()))?;
    // A snapshot of a large guest takes a while; everything else answers at once.
    let _ = s.set_read_timeout(Some(Duration::from_secs(CLIENT_TIMEOUT_SECS)));
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| sock_err(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| sock_err(e.to_string()))?;
    let answer = answer.trim_end();
    match answer.split_once(' ').unwrap_or((answer, "")) {
        ("ok", rest) => Ok(rest.to_string()),
        ("error", rest) => Err(Error::Refused(rest.to_string())),
        _ => Err(sock_err(format!("unexpected answer {answer:?}"))),
    }
}

/// What serves requests: the VM.
pub trait ApiHandler: Send + Sync {
    /// Executes a request; `Ok` text follows `ok `, `Err` text follows `error `.
    fn handle(&self, request: Request) -> std::result::Result<String, String>;
}

/// Answers one connection: reads the request, writes the response line.
pub fn serve_one(stream: &mut UnixStream, handler: &dyn ApiHandler) {
    let answer = match read_request(stream) {
        Ok(req) => match handler.handle(req) {
            Ok(text) => format!("ok {text}\n"),
            Err(text) => format!("error {text}\n"),
        },
        Err(e) => format!("error {e}\n"),
    };
    let _ = stream.write_all(answer.as_bytes());
}

/// Binds the API socket; a stale socket file nobody listens on is replaced, a live one or
/// any other file is refused.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let err = |reason: String| Error::Socket {
        path: path.display().to_string(),
        reason,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err("exists and is not a socket".into()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(err("another process is listening on it".into()));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    l.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_hex_or_decimal_numbers() {
        assert_eq!(parse_request("status\n"), Ok(Request::Status));
        assert_eq!(
            parse_request("sdei-signal 0x1000000 1"),
            Ok(Request::SdeiSignal {
                event: 0x100_0000,
                vcpu: Some(1)
            })
        );
        assert_eq!(
            parse_request("sdei-signal 16777218"),
            Ok(Request::SdeiSignal {
                event: 0x100_0002,
                vcpu: None
            })
        );
    }

    #[test]
    fn bad_requests_say_why() {
        assert!(matches!(parse_request(""), Err(Error::BadRequest(m)) if m == "empty request"));
        assert!(
            matches!(parse_request("reboot"), Err(Error::BadRequest(m)) if m.contains("unknown request"))
        );
        assert!(
            matches!(parse_request("sdei-signal x"), Err(Error::BadRequest(m)) if m.contains("not a number"))
        );
        assert!(
            matches!(parse_request("sdei-signal 0x100000000"), Err(Error::BadRequest(m)) if m.contains("out of range"))
        );
        assert!(parse_request("sdei-signal 1 2 3").is_err());
    }

    #[test]
    fn a_request_over_the_socket_is_read_and_bounded() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"sdei-signal 0x1000001 0\n").unwrap();
        assert_eq!(
            read_request(&mut a),
            Ok(Request::SdeiSignal {
                event: 0x100_0001,
                vcpu: Some(0)
            })
        );
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&vec![b'x'; MAX_REQUEST + 10]).unwrap();
        assert!(
            matches!(read_request(&mut a), Err(Error::BadRequest(m)) if m.contains("longer than"))
        );
    }

    #[test]
    fn client_reports_a_missing_socket() {
        let e = client(Path::new("/nonexistent/refvmm.sock"), &["status".into()]).unwrap_err();
        assert!(matches!(e, Error::Socket { .. }), "{e}");
    }
}
