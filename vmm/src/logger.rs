//! A small stderr logger: level from `REFVMM_LOG` (error, warn, info, debug, trace; default
//! warn), each line stamped with the time since refvmm started.

use std::sync::OnceLock;
use std::time::Instant;

struct StderrLogger {
    start: Instant,
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let t = self.start.elapsed();
            eprintln!(
                "[refvmm {:>4}.{:06}] {:<5} {}",
                t.as_secs(),
                t.subsec_micros(),
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    let level = match std::env::var("REFVMM_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("info") => log::LevelFilter::Info,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Warn,
    };
    let logger = LOGGER.get_or_init(|| StderrLogger {
        start: Instant::now(),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// How many lines one call site may log per [`LogBudget::WINDOW`].
pub const LINES_PER_WINDOW: u32 = 10;

/// A log budget for one call site whose lines a guest can trigger: at most
/// [`LINES_PER_WINDOW`] lines per [`LogBudget::WINDOW`]; the first line of a later window says
/// how many were suppressed. Use it through [`guest_log!`](crate::guest_log).
pub struct LogBudget {
    state: std::sync::Mutex<Window>,
}

struct Window {
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Length of one window.
    pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

    /// A fresh budget (for a `static`).
    pub const fn new() -> Self {
        LogBudget {
            state: std::sync::Mutex::new(Window {
                start: None,
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being the lines suppressed since the
    /// last one; `None` when this line is to be suppressed.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= Self::WINDOW);
        if expired {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used < LINES_PER_WINDOW {
            w.used += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::log!` for lines a guest can trigger, rate-limited per call site by a [`LogBudget`].
#[macro_export]
macro_rules! guest_log {
    ($level:expr, $($arg:tt)+) => {{
        static BUDGET: $crate::logger::LogBudget = $crate::logger::LogBudget::new();
        if log::log_enabled!($level) {
            if let Some(suppressed) = BUDGET.allow() {
                if suppressed == 0 {
                    log::log!($level, $($arg)+);
                } else {
                    log::log!(
                        $level,
                        "{} ({suppressed} similar lines suppressed)",
                        format_args!($($arg)+)
                    );
                }
            }
        }
    }};
}

#[cfg(test)]
pub(crate) mod capture {
    //! A test logger that records the lines logged by the calling thread only, so tests
    //! running in parallel do not see each other's lines.
    use std::cell::RefCell;

    thread_local! {
        static LINES: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    }

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            LINES.with(|l| {
                if let Some(v) = l.borrow_mut().as_mut() {
                    v.push(format!("{} {}", r.level(), r.args()));
                }
            });
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture;

    /// Runs `f` and returns every line this thread logged meanwhile (all levels).
    pub fn lines(f: impl FnOnce()) -> Vec<String> {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Trace);
        LINES.with(|l| *l.borrow_mut() = Some(Vec::new()));
        f();
        LINES.with(|l| l.borrow_mut().take().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_a_few_lines_per_window_and_counts_the_rest() {
        let b = LogBudget::new();
        let t0 = Instant::now();
        let allowed = (0..20_000).filter(|_| b.allow_at(t0).is_some()).count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
        let later = t0 + LogBudget::WINDOW;
        assert_eq!(
            b.allow_at(later),
            Some(20_000 - u64::from(LINES_PER_WINDOW))
        );
        assert_eq!(b.allow_at(later), Some(0));
    }

    #[test]
    fn guest_log_lines_are_bounded() {
        let lines = capture::lines(|| {
            for i in 0..20_000 {
                crate::guest_log!(log::Level::Warn, "bad write {i}");
            }
        });
        assert_eq!(lines.len(), LINES_PER_WINDOW as usize, "{lines:?}");
        assert_eq!(lines[0], "WARN bad write 0");
    }
}
