//! The main thread's event loop (event-manager): console input from stdin, the notification
//! that a vCPU stopped the VM, and the API requests the `api` thread hands over.

use crate::api::{self, ApiHandler};
use crate::devices::serial::Console;
use crate::vcpu::VcpuStop;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event manager failed.
    #[error("The event loop failed")]
    Manager(#[source] event_manager::Error),
    /// The main thread could not be sealed before the loop.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::Error),
}

/// Result of the event loop.
pub type Result<T> = std::result::Result<T, Error>;

/// How vCPU threads tell the main thread that the guest stopped the VM. The first stop wins.
#[derive(Clone)]
pub struct ExitSignal {
    evt: Arc<EventFd>,
    stop: Arc<Mutex<Option<VcpuStop>>>,
}

impl ExitSignal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            stop: Arc::new(Mutex::new(None)),
        })
    }

    /// Records `stop` (unless another came first) and wakes the main thread.
    pub fn signal(&self, stop: VcpuStop) {
        if let Ok(mut s) = self.stop.lock() {
            s.get_or_insert(stop);
        }
        let _ = self.evt.write(1);
    }

    fn get(&self) -> Option<VcpuStop> {
        self.stop.lock().ok().and_then(|s| *s)
    }
}

struct ExitWatcher(ExitSignal);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.evt.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&*self.0.evt, EventSet::IN)) {
            log::error!("cannot watch the exit notification: {e:?}");
        }
    }
}

/// Forwards stdin to the console. A stdin that cannot be polled (a regular file) or that
/// reaches end of file is dropped from the loop.
struct StdinInput<W: Write + Send> {
    console: Arc<Mutex<Console<W>>>,
}

impl<W: Write + Send> MutEventSubscriber for StdinInput<W> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // Read no more than the receive FIFO can take, straight from fd 0 (no user-space
        // buffer that epoll cannot see): what is not read stays in the kernel until the guest
        // has drained the FIFO, so nothing typed or piped in is lost.
        let room = self.console.lock().map(|c| c.input_room()).unwrap_or(0);
        if room == 0 {
            // The guest has not read the FIFO yet; stdin stays readable (level-triggered), so
            // come back shortly instead of spinning.
            std::thread::sleep(std::time::Duration::from_millis(2));
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        let n = match crate::sys::read_stdin(&mut buf[..want]) {
            Err(e)
                if e.kind() == std::io::ErrorKind::Interrupted
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                return;
            }
            Ok(n) if n > 0 => n,
            // End of file, or an error that will not go away.
            _ => {
                let _ = ops.remove(events);
                return;
            }
        };
        if let Ok(mut c) = self.console.lock() {
            c.enqueue_input(&buf[..n]);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        if ops.add(Events::new(&stdin, EventSet::IN)).is_err() {
            log::debug!("stdin cannot be polled; console input disabled");
        }
    }
}

/// Puts a terminal stdin into raw mode for the guest console and restores it on drop.
struct RawStdin(bool);

impl RawStdin {
    fn new() -> Self {
        use std::io::IsTerminal;
        let tty = std::io::stdin().is_terminal();
        RawStdin(tty && std::io::stdin().lock().set_raw_mode().is_ok())
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}

/// A request the API thread hands to the main thread, with where its answer goes.
struct ApiCall {
    request: api::Request,
    answer: mpsc::SyncSender<std::result::Result<String, String>>,
}

/// The API thread's handler: hands each request to the main thread's loop and waits for the
/// answer. Requests that touch the VM (pause, snapshot, KVM ioctls) thus run on the main
/// thread, and the API thread needs no KVM access at all.
pub struct ApiBridge {
    calls: mpsc::Sender<ApiCall>,
    wake: Arc<EventFd>,
}

impl ApiHandler for ApiBridge {
    fn handle(&self, request: api::Request) -> std::result::Result<String, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let stopping = || "refvmm is stopping".to_string();
        self.calls
            .send(ApiCall {
                request,
                answer: tx,
            })
            .map_err(|_| stopping())?;
        let _ = self.wake.write(1);
        rx.recv().unwrap_or_else(|_| Err(stopping()))
    }
}

/// The main thread's end of the API: executes the requests the API thread hands over.
pub struct ApiQueue {
    calls: mpsc::Receiver<ApiCall>,
    wake: Arc<EventFd>,
    handler: Arc<dyn ApiHandler>,
}

/// The two ends between the API thread ([`ApiBridge`]) and the main loop ([`ApiQueue`]),
/// whose requests `handler` executes.
pub fn api_channel(handler: Arc<dyn ApiHandler>) -> std::io::Result<(ApiBridge, ApiQueue)> {
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        ApiBridge {
            calls: tx,
            wake: wake.clone(),
        },
        ApiQueue {
            calls: rx,
            wake,
            handler,
        },
    ))
}

impl MutEventSubscriber for ApiQueue {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.wake.read();
        while let Ok(call) = self.calls.try_recv() {
            let answer = self.handler.handle(call.request);
            let _ = call.answer.send(answer);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&*self.wake, EventSet::IN)) {
            log::error!("cannot watch the API requests: {e:?}");
        }
    }
}

/// Runs until a vCPU signals a stop; returns it. `before_loop` runs once everything is set up,
/// right before the first wait (refvmm installs the main thread's seccomp filter there and then
/// lets the vCPUs start).
pub fn run<W: Write + Send + 'static>(
    console: Arc<Mutex<Console<W>>>,
    exit: &ExitSignal,
    api: Option<(ApiQueue, Arc<api::Idle>)>,
    before_loop: impl FnOnce() -> crate::sandbox::Result<()>,
) -> Result<VcpuStop> {
    let _raw = RawStdin::new();
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(Error::Manager)?;
    em.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));
    em.add_subscriber(Arc::new(Mutex::new(StdinInput { console })));
    let idle = api.map(|(queue, idle)| {
        em.add_subscriber(Arc::new(Mutex::new(queue)));
        idle
    });
    before_loop()?;
    loop {
        if let Some(stop) = exit.get() {
            // A `quit` was answered on this thread; let the API thread write it out.
            if let Some(idle) = &idle {
                idle.wait(std::time::Duration::from_secs(1));
            }
            return Ok(stop);
        }
        em.run().map_err(Error::Manager)?;
    }
}
