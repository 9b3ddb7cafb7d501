//! Benchmark mode (`payload.bench=N`, run by `cargo xtask bench`, never by tests).

use crate::sdei::SDEI_VERSION;
use crate::sys::{counter, counter_hz, fail, hvc, pass, PSCI_VERSION};
use crate::uart::{put_dec, puts};

/// Times `n` PSCI_VERSION calls (answered inside KVM) against `n` SDEI_VERSION calls
/// (forwarded to refvmm's router and dispatcher), alternating, five rounds; prints the counter
/// ticks of each loop.
pub fn run(n: u64) -> ! {
    if hvc(SDEI_VERSION, 0, 0, 0) >> 48 != 1 {
        fail("SDEI_VERSION is not answered by an SDEI 1.x dispatcher (run refvmm with --sdei)");
    }
    puts("raw-payload: counter frequency ");
    put_dec(counter_hz());
    puts(" Hz\n");
    for round in 0..5 {
        let t0 = counter();
        for _ in 0..n {
            hvc(PSCI_VERSION, 0, 0, 0);
        }
        let t1 = counter();
        for _ in 0..n {
            hvc(SDEI_VERSION, 0, 0, 0);
        }
        let t2 = counter();
        puts("raw-payload: bench round ");
        put_dec(round);
        puts(" calls ");
        put_dec(n);
        puts(" psci_version_ticks ");
        put_dec(t1 - t0);
        puts(" sdei_version_ticks ");
        put_dec(t2 - t1);
        puts("\n");
    }
    pass()
}
