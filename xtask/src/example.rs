//! The minimal example VMM (`crates/sdei-dispatch/examples/minimal_vmm.rs`) in the emulated
//! machine: hypercall-router, sdei-dispatch and mte-memory in a bare kvm-ioctls run loop with
//! no code from refvmm, against a guest that registers an SDEI handler, masks interrupts and
//! takes the event anyway.

use crate::cross;
use crate::guest::{check, Check};
use crate::l1;
use crate::setup::Testbed;
use crate::util::Fail;
use std::time::Duration;

/// The lines the example prints when each of its checks holds.
const EXPECTED: [&str; 6] = [
    "minimal_vmm: event 0x1000000 delivered",
    "the handler interrupted the spin loop: ok",
    "interrupts were masked (PSTATE.DAIF) when the event arrived: ok",
    "the handler ran with its argument and the loop resumed after EVENT_COMPLETE: ok",
    "MTE tags of guest RAM read and written through KVM: ok",
    "minimal_vmm: PASS",
];

/// Builds the example for aarch64 and runs it once under KVM; one check per expected line,
/// plus the exit status and the SDEI version line.
pub fn minimal_vmm(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let bin = cross::example("sdei-dispatch", "minimal_vmm", &["kvm"])?;
    let job = l1::Job {
        files: vec![("minimal_vmm".into(), bin)],
        script: "./minimal_vmm\n".into(),
        timeout: Duration::from_secs(300),
        memory_mib: 1024,
        echo: true,
    };
    let res = l1::run(Some(tb), &job)?;
    let out = &res.output;
    let mut checks = vec![check(
        "example minimal_vmm: exits 0",
        (res.exit != 0).then(|| format!("exit status {}", res.exit)),
    )];
    checks.push(check(
        "example minimal_vmm: SDEI_VERSION answered 1.x by the dispatcher",
        (!out
            .lines()
            .any(|l| l.contains("minimal_vmm: SDEI_VERSION") && l.contains("is 1.x: ok")))
        .then(|| "no SDEI_VERSION line".to_string()),
    ));
    for line in EXPECTED {
        checks.push(check(
            &format!(
                "example {}",
                line.trim_start_matches("minimal_vmm: ")
                    .trim_end_matches(": ok")
            ),
            (!out.contains(line)).then(|| "not printed".to_string()),
        ));
    }
    Ok(checks)
}
