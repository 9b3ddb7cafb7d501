//! Console output between the guest and stdout.
//!
//! The 16550 writes (and flushes) one byte at a time, on the vCPU thread that stores to its
//! data register, with the console's lock held. Written straight to stdout, a stdout that
//! stops draining (a full pipe, a stopped terminal) would block that vCPU, and every other
//! vCPU or the main loop that then waits for the console's lock. So the console writes into a
//! bounded in-memory queue ([`QueuedOutput`]), which never blocks, and a thread of its own
//! (`console`, see `crate::vm`) writes the queue to stdout ([`OutputQueue::drain_to`]).
//!
//! When the queue is full, further output is dropped and counted, and the writer thread says
//! so on stderr (rate-limited): losing console bytes under a stalled stdout is preferred to
//! stalling the guest. At exit, refvmm waits a bounded time for the queue to reach stdout
//! ([`OutputQueue::wait_empty`]), so a guest's last words before powering off are kept.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes the queue holds before output is dropped.
pub const CAPACITY: usize = 1 << 20;

#[derive(Debug, Default)]
struct State {
    buf: VecDeque<u8>,
    /// Bytes taken by the writer and not yet written.
    writing: bool,
    /// Bytes dropped because the queue was full, since the start.
    dropped: u64,
}

/// The queue shared by the console ([`QueuedOutput`]) and the writer thread.
#[derive(Debug)]
pub struct OutputQueue {
    state: Mutex<State>,
    cv: Condvar,
    capacity: usize,
}

impl OutputQueue {
    /// An empty queue holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(OutputQueue {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The console's end.
    pub fn writer(self: &Arc<Self>) -> QueuedOutput {
        QueuedOutput(self.clone())
    }

    /// Bytes dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Writes queued bytes to `out` as they come, for ever (the writer thread's body). Errors
    /// of `out` are reported once and the bytes discarded, so the queue keeps moving.
    pub fn drain_to(&self, out: &mut impl Write) -> ! {
        let mut reported_drops = 0;
        let mut failed = false;
        loop {
            let (chunk, dropped) = {
                let mut g = self.lock();
                while g.buf.is_empty() {
                    g.writing = false;
                    self.cv.notify_all();
                    g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                g.writing = true;
                let chunk: Vec<u8> = g.buf.drain(..).collect();
                (chunk, g.dropped)
            };
            if dropped > reported_drops {
                crate::guest_log!(
                    log::Level::Warn,
                    "console: stdout does not keep up; {dropped} bytes of guest output dropped so far"
                );
                reported_drops = dropped;
            }
            if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
                if !failed {
                    log::error!("console: cannot write guest output to stdout: {e}");
                    failed = true;
                }
            }
        }
    }

    /// Waits up to `limit` for everything queued to be written; whether it was.
    pub fn wait_empty(&self, limit: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .cv
            .wait_timeout_while(g, limit, |s| !s.buf.is_empty() || s.writing)
            .unwrap_or_else(|p| p.into_inner());
        g.buf.is_empty() && !g.writing
    }
}

/// The console's output: appends to the queue without ever blocking on stdout.
#[derive(Debug, Clone)]
pub struct QueuedOutput(Arc<OutputQueue>);

impl Write for QueuedOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let q = &self.0;
        let mut g = q.lock();
        let room = q.capacity.saturating_sub(g.buf.len());
        let (kept, lost) = bytes.split_at(room.min(bytes.len()));
        g.buf.extend(kept);
        g.dropped += lost.len() as u64;
        drop(g);
        q.cv.notify_all();
        // Dropped bytes count as written: the guest's UART never waits for stdout.
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer that forwards to a channel, and blocks while `gate` is held.
    struct Gated {
        gate: Arc<Mutex<()>>,
        tx: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.tx.send(b.to_vec()).unwrap();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn start(capacity: usize) -> (Arc<OutputQueue>, Arc<Mutex<()>>, mpsc::Receiver<Vec<u8>>) {
        let q = OutputQueue::new(capacity);
        let gate = Arc::new(Mutex::new(()));
        let (tx, rx) = mpsc::channel();
        let (q2, mut w) = (
            q.clone(),
            Gated {
                gate: gate.clone(),
                tx,
            },
        );
        std::thread::spawn(move || q2.drain_to(&mut w));
        (q, gate, rx)
    }

    #[test]
    fn output_reaches_the_writer_in_order_and_wait_empty_sees_it_written() {
        let (q, _gate, rx) = start(1024);
        let mut out = q.writer();
        for b in b"hello, world\n" {
            out.write_all(&[*b]).unwrap();
            out.flush().unwrap();
        }
        assert!(q.wait_empty(Duration::from_secs(10)));
        let got: Vec<u8> = rx.try_iter().flatten().collect();
        assert_eq!(got, b"hello, world\n");
        assert_eq!(q.dropped(), 0);
    }

    #[test]
    fn a_stalled_writer_never_blocks_the_console_and_overflow_is_counted() {
        let (q, gate, rx) = start(1000);
        let held = gate.lock().unwrap(); // stdout stops draining
        let mut out = q.writer();
        out.write_all(b"first").unwrap();
        // Let the writer take "first" and block on the gate with it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let g = q.lock();
            if g.writing && g.buf.is_empty() {
                break;
            }
            drop(g);
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // 5000 single-byte writes with the writer stuck: all return at once.
        for _ in 0..5000 {
            out.write_all(b"x").unwrap();
        }
        assert_eq!(q.dropped(), 4000, "1000 bytes fit, the rest are dropped");
        assert!(
            !q.wait_empty(Duration::from_millis(50)),
            "nothing drains while stalled"
        );
        drop(held);
        assert!(q.wait_empty(Duration::from_secs(10)));
        let got: Vec<u8> = rx.try_iter().flatten().collect();
        assert_eq!(got.len(), 5 + 1000);
        assert!(got.starts_with(b"first"));
    }
}
