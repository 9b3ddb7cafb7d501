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
#[derive(Debug, thiserror::Error)]
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
    /// An operation on the socket failed.
    #[error("API socket {path}: cannot {action}")]
    SocketIo {
        /// Socket path.
        path: String,
        /// What was being done ("connect to it", "bind it" ...).
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request could not be read from the connection.
    #[error("Cannot read the request")]
    Read(#[source] std::io::Error),
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

/// How long a client has to send its whole request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Reads one request line from a client, bounded in size and, for the whole request, in time
/// ([`REQUEST_DEADLINE`]): a client trickling bytes cannot hold the caller longer.
pub fn read_request(stream: &mut UnixStream) -> Result<Request> {
    read_request_within(stream, REQUEST_DEADLINE)
}

fn read_request_within(stream: &mut UnixStream, deadline: Duration) -> Result<Request> {
    let start = std::time::Instant::now();
    let mut line = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(Error::BadRequest(format!(
                "the request did not arrive within {} ms",
                deadline.as_millis()
            )));
        }
        stream.set_read_timeout(Some(left)).map_err(Error::Read)?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(Error::Read(e)),
        };
        let chunk = &buf[..n];
        let end = chunk.iter().position(|&b| b == b'\n');
        line.extend_from_slice(&chunk[..end.map_or(n, |i| i + 1)]);
        if line.len() > MAX_REQUEST {
            return Err(Error::BadRequest(format!(
                "longer than {MAX_REQUEST} bytes"
            )));
        }
        if end.is_some() || n == 0 {
            break;
        }
    }
    let text = std::str::from_utf8(&line)
        .map_err(|_| Error::BadRequest("the request is not UTF-8".into()))?;
    parse_request(text)
}

/// Sends `request` (words) to the refvmm at `socket` and returns its answer after `ok`.
pub fn client(socket: &Path, request: &[String]) -> Result<String> {
    let line = request.join(" ");
    parse_request(&line)?;
    let sock_err = |reason: String| Error::Socket {
        path: socket.display().to_string(),
        reason,
    };
    let io_err = |action: &'static str| {
        move |source| Error::SocketIo {
            path: socket.display().to_string(),
            action,
            source,
        }
    };
    let mut s = UnixStream::connect(socket).map_err(io_err("connect to it"))?;
    // A snapshot of a large guest takes a while; everything else answers at once.
    let _ = s.set_read_timeout(Some(Duration::from_secs(CLIENT_TIMEOUT_SECS)));
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(io_err("send the request"))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(io_err("read the answer"))?;
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

/// Answers one connection: checks the peer, reads the request, writes the response line.
pub fn serve_one(stream: &mut UnixStream, handler: &dyn ApiHandler, access: &Access) {
    if let Err(e) = access.check(stream) {
        crate::guest_log!(log::Level::Warn, "API: {e}");
        let _ = stream.write_all(format!("error {e}\n").as_bytes());
        return;
    }
    let answer = match read_request(stream) {
        Ok(req) => match handler.handle(req) {
            Ok(text) => format!("ok {text}\n"),
            Err(text) => format!("error {text}\n"),
        },
        Err(e) => format!("error {}\n", crate::error_chain(&e)),
    };
    let _ = stream.write_all(answer.as_bytes());
}

/// Tells whether the API thread is in the middle of a connection, so that refvmm, stopping,
/// can let it finish writing an answer (`quit`'s) first.
#[derive(Debug, Default)]
pub struct Idle {
    busy: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Idle {
    fn set(&self, busy: bool) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = busy;
        self.cv.notify_all();
    }

    /// Waits up to `limit` for the connection being served (if any) to be answered and closed.
    pub fn wait(&self, limit: Duration) {
        let g = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .cv
            .wait_timeout_while(g, limit, |busy| *busy)
            .map_err(|p| p.into_inner());
    }
}

/// Serves the API socket on the calling thread (refvmm's `api` thread), one connection at a
/// time: each peer is checked, its request read within [`REQUEST_DEADLINE`] and answered by
/// `handler`. `listener` must be blocking. Never returns.
///
/// A slow client therefore holds only this thread, never the main loop (console input, the
/// vCPUs' exit notification); the next client waits at most the deadline.
pub fn serve(
    listener: std::os::unix::net::UnixListener,
    handler: &dyn ApiHandler,
    access: &Access,
    idle: &Idle,
) -> ! {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                idle.set(true);
                serve_one(&mut stream, handler, access);
                drop(stream);
                idle.set(false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of file descriptors or memory: back off rather than spin.
                crate::guest_log!(log::Level::Warn, "API: cannot accept a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Mode of the API socket file unless the operator sets one.
pub const DEFAULT_MODE: u32 = 0o600;

/// Where the API listens and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSocket {
    /// The socket's path.
    pub path: std::path::PathBuf,
    /// The socket file's permission bits (the owner's read and write are required).
    pub mode: u32,
    /// Users besides refvmm's own effective user whose connections are served.
    pub allowed_uids: Vec<u32>,
}

impl ApiSocket {
    /// Validates the operator's choices.
    pub fn new(
        path: std::path::PathBuf,
        mode: u32,
        allowed_uids: Vec<u32>,
    ) -> std::result::Result<Self, String> {
        if mode & !0o777 != 0 {
            return Err(format!(
                "--api-socket-mode {mode:o}: only permission bits (at most 777) may be set"
            ));
        }
        if mode & 0o600 != 0o600 {
            return Err(format!(
                "--api-socket-mode {mode:o}: the owner needs read and write (6 in the first digit)"
            ));
        }
        Ok(ApiSocket {
            path,
            mode,
            allowed_uids,
        })
    }
}

/// Who may talk to the API: checked on every connection with `SO_PEERCRED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// refvmm's effective uid when the socket was bound.
    own_uid: u32,
    /// Further uids the operator allowed.
    others: Vec<u32>,
}

impl Access {
    /// Allows refvmm's own effective user and `others`.
    pub fn new(others: &[u32]) -> Self {
        let own_uid = crate::sys::effective_uid();
        Access {
            own_uid,
            others: others.to_vec(),
        }
    }

    /// Whether a peer with `uid` is served.
    pub fn allows(&self, uid: u32) -> bool {
        uid == self.own_uid || self.others.contains(&uid)
    }

    /// Reads the peer's credentials and refuses anyone not allowed.
    pub fn check(&self, stream: &UnixStream) -> std::result::Result<(), String> {
        let uid =
            peer_uid(stream).map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
        if self.allows(uid) {
            Ok(())
        } else {
            Err(format!(
                "permission denied: uid {uid} may not use this API (refvmm runs as uid {}; \
                 --api-allow-uid adds users)",
                self.own_uid
            ))
        }
    }
}

/// The uid of the process at the other end of a Unix stream (`SO_PEERCRED`).
pub fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    crate::sys::peer_uid(stream)
}

/// Binds the API socket with the operator's mode (default 0600); a stale socket file nobody
/// listens on is replaced, a live one or any other file is refused.
pub fn bind(socket: &ApiSocket) -> Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = socket.path.as_path();
    let err = |reason: String| Error::Socket {
        path: path.display().to_string(),
        reason,
    };
    let io_err = |action: &'static str| {
        move |source| Error::SocketIo {
            path: path.display().to_string(),
            action,
            source,
        }
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err("exists and is not a socket".into()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(err("another process is listening on it".into()));
        }
        std::fs::remove_file(path).map_err(io_err("remove the stale socket"))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(io_err("listen on it"))?;
    // Connections made before the mode is set are still refused by the peer check.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket.mode))
        .map_err(io_err("set its mode"))?;
    l.set_nonblocking(true)
        .map_err(io_err("make it non-blocking"))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_hex_or_decimal_numbers() {
        assert_eq!(parse_request("status\n").ok(), Some(Request::Status));
        assert_eq!(
            parse_request("sdei-signal 0x1000000 1").ok(),
            Some(Request::SdeiSignal {
                event: 0x100_0000,
                vcpu: Some(1)
            })
        );
        assert_eq!(
            parse_request("sdei-signal 16777218").ok(),
            Some(Request::SdeiSignal {
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
            read_request(&mut a).ok(),
            Some(Request::SdeiSignal {
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
    fn a_slow_client_cannot_hold_the_reader_past_the_deadline() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            // One byte every 100 ms, never a newline; stops when the reader hangs up.
            while b.write_all(b"s").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t = std::time::Instant::now();
        let r = read_request_within(&mut a, Duration::from_millis(500));
        let took = t.elapsed();
        drop(a);
        trickle.join().unwrap();
        assert!(
            matches!(&r, Err(Error::BadRequest(m)) if m.contains("did not arrive within 500 ms")),
            "{r:?}"
        );
        assert!(took < Duration::from_millis(1500), "held for {took:?}");
    }

    #[test]
    fn a_request_split_over_several_writes_is_read_whole() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let w = std::thread::spawn(move || {
            for part in ["sdei-sig", "nal 0x100", "0001 0\nignored"] {
                b.write_all(part.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        assert_eq!(
            read_request(&mut a).ok(),
            Some(Request::SdeiSignal {
                event: 0x100_0001,
                vcpu: Some(0)
            })
        );
        w.join().unwrap();
    }

    #[test]
    fn socket_modes_are_validated() {
        let p = std::path::PathBuf::from("/run/x.sock");
        assert!(ApiSocket::new(p.clone(), 0o600, vec![]).is_ok());
        assert!(ApiSocket::new(p.clone(), 0o660, vec![1000]).is_ok());
        assert!(ApiSocket::new(p.clone(), 0o400, vec![])
            .unwrap_err()
            .contains("read and write"));
        assert!(ApiSocket::new(p, 0o4600, vec![])
            .unwrap_err()
            .contains("only permission bits"));
    }

    fn scratch_socket(what: &str) -> ApiSocket {
        let path =
            std::env::temp_dir().join(format!("refvmm-api-{what}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        ApiSocket::new(path, DEFAULT_MODE, vec![]).unwrap()
    }

    #[test]
    fn the_socket_is_created_0600_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let s = scratch_socket("mode");
        let l = bind(&s).unwrap();
        let mode = std::fs::metadata(&s.path).unwrap().permissions().mode() & 0o777;
        drop(l);
        let _ = std::fs::remove_file(&s.path);
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_peer_check_reads_real_credentials() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = crate::sys::effective_uid();
        assert_eq!(peer_uid(&a).unwrap(), me);
        assert!(Access::new(&[]).check(&a).is_ok());
        let stranger = me.wrapping_add(4242);
        assert!(!Access::new(&[]).allows(stranger));
        assert!(Access::new(&[stranger]).allows(stranger));
    }

    fn status_as_nobody(path: &Path) -> String {
        crate::sys::testing::request_as_nobody(path, b"status\n")
    }

    #[test]
    fn a_connection_from_another_uid_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let euid = crate::sys::effective_uid();
        assert_eq!(
            euid, 0,
            "this test runs as root: it starts a client under another uid"
        );
        struct Status;
        impl ApiHandler for Status {
            fn handle(&self, _: Request) -> std::result::Result<String, String> {
                Ok("running".into())
            }
        }
        let s = scratch_socket("peer");
        let l = bind(&s).unwrap();
        l.set_nonblocking(false).unwrap();
        // Open the file mode up so that the connect itself succeeds: the peer check is what
        // is tested here (the 0600 mode is tested above).
        std::fs::set_permissions(&s.path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let serve = |access: Access| {
            let l = l.try_clone().unwrap();
            std::thread::spawn(move || {
                let (mut conn, _) = l.accept().unwrap();
                serve_one(&mut conn, &Status, &access);
            })
        };
        let t = serve(Access::new(&[]));
        let refused = status_as_nobody(&s.path);
        t.join().unwrap();
        let t = serve(Access::new(&[65534]));
        let allowed = status_as_nobody(&s.path);
        t.join().unwrap();
        let _ = std::fs::remove_file(&s.path);
        assert!(
            refused.starts_with("error permission denied: uid 65534 may not use this API"),
            "{refused}"
        );
        assert_eq!(allowed, "ok running\n");
    }

    #[test]
    fn client_reports_a_missing_socket() {
        let e = client(Path::new("/nonexistent/refvmm.sock"), &["status".into()]).unwrap_err();
        assert!(matches!(e, Error::SocketIo { .. }), "{e}");
    }
}
