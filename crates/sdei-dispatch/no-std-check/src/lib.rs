//! A firmware-shaped user of `sdei-dispatch` without `std`: a fixed arena as the heap, a
//! dispatcher for 4 vCPUs, and one SDEI_VERSION call.
#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};
use sdei_dispatch::{Dispatcher, DispatcherConfig, InMemoryRegisters};

const ARENA: usize = 64 * 1024;

/// A bump allocator over a static arena; frees nothing (the dispatcher allocates its tables
/// once, at creation).
struct Bump {
    arena: UnsafeCell<[u8; ARENA]>,
    next: AtomicUsize,
}

// SAFETY: the arena is only handed out in disjoint pieces reserved by an atomic bump.
unsafe impl Sync for Bump {}

// SAFETY: `alloc` returns disjoint, suitably aligned pieces of the arena or null; `dealloc`
// does nothing, which is allowed.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.get() as usize;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(layout.align()) - base;
            let end = match start.checked_add(layout.size()) {
                Some(e) if e <= ARENA => e,
                _ => return core::ptr::null_mut(),
            };
            match self
                .next
                .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static HEAP: Bump = Bump {
    arena: UnsafeCell::new([0; ARENA]),
    next: AtomicUsize::new(0),
};

/// Creates a dispatcher and answers SDEI_VERSION on vCPU 0; returns x0.
#[no_mangle]
pub extern "C" fn no_std_sdei_version() -> u64 {
    let Ok(mut d) = Dispatcher::new(DispatcherConfig::new(4)) else {
        return u64::MAX;
    };
    let mut regs = InMemoryRegisters::default();
    regs.x[0] = 0xC400_0020;
    match d.handle_call(0, &mut regs) {
        Ok(_) => regs.x[0],
        Err(_) => u64::MAX,
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
