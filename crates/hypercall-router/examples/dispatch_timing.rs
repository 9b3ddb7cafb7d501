//! Times decode + dispatch in batches and prints the fastest batch: the
//! per-call cost when no other process takes the core (criterion reports
//! means, which a shared host inflates).
//!
//! `cargo run --release -p hypercall-router --example dispatch_timing`

#[path = "../benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Instant;

use hypercall_router::{CallContext, Conduit};

const BATCHES: usize = 200;
const CALLS_PER_BATCH: u32 = 20_000;

fn main() {
    let router = common::router();
    let router = black_box(&router);
    let ctx = CallContext::new(0, Conduit::Hvc);
    for (name, init) in common::cases() {
        let mut regs = init;
        let mut batches = Vec::with_capacity(BATCHES);
        for _ in 0..BATCHES {
            let start = Instant::now();
            for _ in 0..CALLS_PER_BATCH {
                regs.x[0] = init.x[0];
                black_box(router.dispatch(&ctx, black_box(&mut regs)).unwrap());
            }
            batches.push(start.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS_PER_BATCH));
        }
        batches.sort_by(f64::total_cmp);
        println!(
            "{name}: best {:.2} ns/call, median {:.2} ns/call",
            batches[0],
            batches[BATCHES / 2]
        );
    }
}
