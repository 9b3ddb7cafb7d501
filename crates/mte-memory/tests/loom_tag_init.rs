//! Model check of the kernel's page-tag initialisation protocol under loom.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p mte-memory --test loom_tag_init --release`.
//!
//! A page has two flag bits (`PG_mte_tagged`, `PG_mte_lock`) and a tag array that starts out
//! holding stale tags from the page's previous user. Three kernel paths race on it:
//!
//! - a stage-2 fault (`sanitise_mte_tags`): initialise (zero) the tags unless the page is
//!   already tagged, then map it to the guest, which reads the tags;
//! - a copy-on-write copy (`copy_highpage`): if the source page is tagged, copy its tags into
//!   the new page and map that;
//! - a swap-in (`mte_restore_tags`): write the tags saved at swap-out unless the page is
//!   already tagged, then map it.
//!
//! Whoever maps a page must find initialised tags: all granules equal and not stale.
//!
//! Variant A is the first proposal: the tagged bit itself is taken with test-and-set before
//! the tags are written, and everyone else waits only for that bit, which is already set.
//! Variant B is the lock-bit protocol (`try_page_mte_tagging` / `set_page_mte_tagged` /
//! `page_mte_tagged`). The checker must find the stale-tags interleaving in A (the A tests
//! fail if it does not) and must explore every interleaving of B without finding one.
#![cfg(loom)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize as StdCounter, Ordering as StdOrdering};

use loom::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

const PG_MTE_TAGGED: usize = 1 << 0;
const PG_MTE_LOCK: usize = 1 << 1;
const GRANULES: usize = 2;
/// Tags left behind by the page's previous user.
const STALE: u8 = 0xe;
/// Tags a fault initialises a page with.
const CLEARED: u8 = 0x0;
/// Tags saved at swap-out and restored at swap-in.
const SAVED: u8 = 0x5;
/// Message of the invariant's assertion, matched by the variant A tests.
const STALE_TAGS: &str = "stale tags";

struct Page {
    flags: AtomicUsize,
    tags: [AtomicU8; GRANULES],
}

impl Page {
    fn fresh() -> Arc<Self> {
        Arc::new(Self {
            flags: AtomicUsize::new(0),
            tags: [AtomicU8::new(STALE), AtomicU8::new(STALE)],
        })
    }

    // Tag memory is ordinary memory: ordered only by the barriers of the protocol.
    fn write_tags(&self, value: u8) {
        for t in &self.tags {
            t.store(value, Ordering::Relaxed);
        }
    }

    fn copy_tags_from(&self, src: &Page) {
        for (d, s) in self.tags.iter().zip(&src.tags) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// The guest (or user space) accesses the page after it is mapped.
    fn check_mapped(&self, who: &str) {
        let seen: Vec<u8> = self
            .tags
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect();
        assert!(
            !seen.contains(&STALE) && seen.windows(2).all(|w| w[0] == w[1]),
            "{STALE_TAGS}: {who} mapped a page whose tags are {seen:?}"
        );
    }
}

/// Counts executions in which a [`LockBit`] initialiser lost the race and had to wait, so the
/// passing variant is known to have explored the contended path.
static LOCK_BIT_CONTENDED: StdCounter = StdCounter::new(0);

/// One way of deciding who initialises a page's tags.
trait Protocol: Send + Sync + 'static {
    /// Returns true if the caller must initialise the tags and then call `finish`.
    fn begin(page: &Page) -> bool;
    /// Publishes initialised tags.
    fn finish(page: &Page);
    /// Whether the page's tags are initialised (`page_mte_tagged`).
    fn is_tagged(page: &Page) -> bool;
}

fn wait_for_tagged(page: &Page, order: Ordering) {
    while page.flags.load(order) & PG_MTE_TAGGED == 0 {
        thread::yield_now();
    }
}

/// Variant A: test-and-set of the tagged bit, then write the tags; losers wait for the
/// tagged bit, which the winner set before writing.
struct TaggedBitFirst;

impl Protocol for TaggedBitFirst {
    fn begin(page: &Page) -> bool {
        if page.flags.fetch_or(PG_MTE_TAGGED, Ordering::AcqRel) & PG_MTE_TAGGED == 0 {
            return true;
        }
        wait_for_tagged(page, Ordering::Acquire);
        false
    }

    fn finish(_page: &Page) {}

    fn is_tagged(page: &Page) -> bool {
        page.flags.load(Ordering::Acquire) & PG_MTE_TAGGED != 0
    }
}

/// Variant B: `try_page_mte_tagging` takes the lock bit; the winner writes the tags and sets
/// the tagged bit with release ordering; losers wait for the tagged bit with acquire.
struct LockBit;

impl Protocol for LockBit {
    fn begin(page: &Page) -> bool {
        // test_and_set_bit is a fully ordered read-modify-write.
        if page.flags.fetch_or(PG_MTE_LOCK, Ordering::AcqRel) & PG_MTE_LOCK == 0 {
            return true;
        }
        // smp_cond_load_acquire on the tagged bit.
        LOCK_BIT_CONTENDED.fetch_add(1, StdOrdering::Relaxed);
        wait_for_tagged(page, Ordering::Acquire);
        false
    }

    fn finish(page: &Page) {
        // smp_wmb(); set_bit(PG_mte_tagged).
        page.flags.fetch_or(PG_MTE_TAGGED, Ordering::Release);
    }

    fn is_tagged(page: &Page) -> bool {
        // test_bit followed by smp_rmb() when set.
        page.flags.load(Ordering::Acquire) & PG_MTE_TAGGED != 0
    }
}

/// Variant B without the barriers, to show that the ordering (not only the lock bit) is what
/// the check depends on.
struct LockBitRelaxed;

impl Protocol for LockBitRelaxed {
    fn begin(page: &Page) -> bool {
        if page.flags.fetch_or(PG_MTE_LOCK, Ordering::Relaxed) & PG_MTE_LOCK == 0 {
            return true;
        }
        wait_for_tagged(page, Ordering::Relaxed);
        false
    }

    fn finish(page: &Page) {
        page.flags.fetch_or(PG_MTE_TAGGED, Ordering::Relaxed);
    }

    fn is_tagged(page: &Page) -> bool {
        page.flags.load(Ordering::Relaxed) & PG_MTE_TAGGED != 0
    }
}

/// Stage-2 fault: `sanitise_mte_tags` then map.
fn fault<P: Protocol>(page: &Page) {
    if P::begin(page) {
        page.write_tags(CLEARED);
        P::finish(page);
    }
    page.check_mapped("stage-2 fault");
}

/// Copy-on-write: `copy_highpage` into a new page, then map the copy.
fn cow<P: Protocol>(src: &Page, dst: &Page) {
    if P::is_tagged(src) {
        assert!(P::begin(dst), "a new page is never tagged yet");
        dst.copy_tags_from(src);
        P::finish(dst);
        dst.check_mapped("copy-on-write copy");
    }
}

/// Swap-in: `mte_restore_tags` then map.
fn swap_in<P: Protocol>(page: &Page) {
    if P::begin(page) {
        page.write_tags(SAVED);
        P::finish(page);
    }
    page.check_mapped("swap-in");
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    TwoFaults,
    FaultAndCow,
    FaultAndSwapIn,
}

/// Checks `scenario` under protocol `P` and returns the number of executions explored.
fn run<P: Protocol>(scenario: Scenario) -> usize {
    let executions = std::sync::Arc::new(StdCounter::new(0));
    let counter = std::sync::Arc::clone(&executions);
    // Each scenario has two threads and is explored exhaustively (unless the environment
    // bounds preemptions with LOOM_MAX_PREEMPTIONS). A three-thread scenario did not finish
    // within ten minutes, so racing paths are checked pairwise.
    let mut builder = loom::model::Builder::new();
    // Waiters spin (yielding) until PG_mte_tagged is set; allow the long branches that makes.
    builder.max_branches = 100_000;
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        let page = Page::fresh();
        let other = {
            let page = Arc::clone(&page);
            match scenario {
                Scenario::TwoFaults => thread::spawn(move || fault::<P>(&page)),
                Scenario::FaultAndCow => thread::spawn(move || cow::<P>(&page, &Page::fresh())),
                Scenario::FaultAndSwapIn => thread::spawn(move || swap_in::<P>(&page)),
            }
        };
        fault::<P>(&page);
        other.join().unwrap();
    });
    executions.load(StdOrdering::Relaxed)
}

/// Runs the model and returns the panic message if the checker found a failing interleaving.
fn find_violation<P: Protocol>(scenario: Scenario) -> Option<String> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let explored = run::<P>(scenario);
        eprintln!("{scenario:?}: no violation in {explored} executions");
    }));
    result.err().map(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    })
}

fn assert_stale_tags_found<P: Protocol>(scenario: Scenario) {
    let found = find_violation::<P>(scenario);

    let msg =
        found.unwrap_or_else(|| panic!("loom found no stale-tags interleaving in {scenario:?}"));
    assert!(
        msg.contains(STALE_TAGS),
        "{scenario:?} failed for another reason: {msg}"
    );
    let name = std::any::type_name::<P>()
        .rsplit("::")
        .next()
        .unwrap_or_default();
    eprintln!("{name} {scenario:?}: loom found: {msg}");
}

#[test]
fn tagged_bit_first_lets_a_second_fault_map_stale_tags() {
    assert_stale_tags_found::<TaggedBitFirst>(Scenario::TwoFaults);
}

#[test]
fn tagged_bit_first_lets_cow_copy_stale_tags() {
    assert_stale_tags_found::<TaggedBitFirst>(Scenario::FaultAndCow);
}

#[test]
fn tagged_bit_first_lets_a_fault_map_before_swap_in_restores() {
    assert_stale_tags_found::<TaggedBitFirst>(Scenario::FaultAndSwapIn);
}

#[test]
fn lock_bit_without_barriers_lets_a_waiter_see_stale_tags() {
    assert_stale_tags_found::<LockBitRelaxed>(Scenario::TwoFaults);
}

#[test]
fn lock_bit_never_maps_stale_tags() {
    for scenario in [
        Scenario::TwoFaults,
        Scenario::FaultAndCow,
        Scenario::FaultAndSwapIn,
    ] {
        let explored = run::<LockBit>(scenario);
        eprintln!("LockBit {scenario:?}: {explored} executions, no stale tags");
        assert!(
            explored > 1,
            "{scenario:?} explored only {explored} execution"
        );
    }

    // The losing path (wait for PG_mte_tagged) was explored, not just the uncontended one.
    assert!(LOCK_BIT_CONTENDED.load(StdOrdering::Relaxed) > 0);
}
