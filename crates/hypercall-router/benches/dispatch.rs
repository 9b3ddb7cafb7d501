//! Decode + dispatch cost on the host, with an in-memory register file.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hypercall_router::{CallContext, Conduit, FunctionId};

fn bench(c: &mut Criterion) {
    let router = common::router();
    let ctx = CallContext::new(0, Conduit::Hvc);
    let mut group = c.benchmark_group("smccc");

    group.bench_function("decode", |b| {
        b.iter(|| FunctionId::decode(black_box(0xC400_0021)))
    });

    // Each iteration resets x0 and dispatches in place: echo results equal
    // the arguments, so the other registers stay the same between iterations.
    for (name, init) in common::cases() {
        let mut regs = init;
        group.bench_function(name, |b| {
            b.iter(|| {
                regs.x[0] = init.x[0];
                black_box(router.dispatch(&ctx, black_box(&mut regs)).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
