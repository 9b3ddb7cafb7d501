//! The committed snapshot of every released format version keeps loading.
//!
//! `golden/sdei-v1.0.bin` was written once by `regenerate_golden_v1_0` (ignored) from
//! `common::golden_vm`. Never regenerate a released version's file: a change that breaks
//! `golden_v1_0_*` breaks snapshots in the field.

mod common;

use common::*;
use sdei_dispatch::abi::Function;
use sdei_dispatch::state::Routing;
use sdei_dispatch::{CallOutcome, InMemoryRegisters, Priority};
use sdei_migration::{load, save, Snapshot, FORMAT};

fn golden_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sdei-v1.0.bin")
}

/// The committed file (read at run time, so that the writer below compiles without it).
/// The committed file, embedded at build time so the test binary runs anywhere (the emulated
/// arm64 machine has no source tree).
const GOLDEN_V1_0: &[u8] = include_bytes!("golden/sdei-v1.0.bin");

fn golden() -> Vec<u8> {
    GOLDEN_V1_0.to_vec()
}

/// The registers `golden_mark(_, _, tag)` sets.
fn marked(tag: u64) -> InMemoryRegisters {
    let mut vm = Vm::with_config(config(1));
    golden_mark(&mut vm, 0, tag);
    vm.regs[0]
}

#[test]
fn golden_v1_0_header_reads_without_the_payload() {
    let header = FORMAT.parse(&golden()[..32]).unwrap();

    assert_eq!((header.major, header.minor, header.flags), (1, 0, 0));
    assert_eq!(header.payload_len, golden().len() as u64 - 32);
}

#[test]
fn golden_v1_0_restores_the_saved_state() {
    let sdei = load(&golden(), config(3)).unwrap();
    let state = sdei.state();

    let v0 = &state.vcpus[0];
    assert_eq!(v0.normal.map(|f| f.event), Some(PRIV_NORMAL));
    assert_eq!(v0.critical.map(|f| f.event), Some(PRIV_CRITICAL));
    assert_eq!(state.vcpus[1].normal.map(|f| f.event), Some(SHARED_NORMAL));
    assert_eq!(state.shared_events[0].running_on, Some(1));
    assert!(state.shared_events[0].entry.state.unregister_pending());
    assert_eq!(sdei.is_masked(2), Some(true));
    assert!(
        state.vcpus[2].private_events[3].pending,
        "bound PPI raised on vCPU 2"
    );
    assert_eq!(
        (state.private_bindings[0], state.shared_bindings[0]),
        (Some(BINDABLE_PPI), Some(BINDABLE_SPI))
    );
    assert!(
        state.shared_events[1].entry.pending,
        "shared critical event pending"
    );
    assert_eq!(sdei.routing(SHARED_CRITICAL), Some(Routing::Any));
}

#[test]
fn golden_v1_0_handlers_complete_to_the_saved_contexts() {
    let mut vm = Vm {
        sdei: load(&golden(), config(3)).unwrap(),
        regs: vec![InMemoryRegisters::default(); 3],
    };

    // vCPU 0: the critical handler returns into the normal one, which returns to the kernel.
    let first = vm.outcome(0, Function::EventComplete, &[0]);
    let inner = vm.regs[0];
    let second = vm.outcome(0, Function::EventCompleteAndResume, &[0x4000_9000]);
    // vCPU 1: the shared handler completes and its pending unregister finishes.
    vm.outcome(1, Function::EventComplete, &[0]);
    let shared = vm.regs[1];
    let status = vm.outcome(1, Function::EventStatus, &[u64::from(SHARED_NORMAL)]);

    assert_eq!(
        first,
        CallOutcome::Completed {
            event: PRIV_CRITICAL,
            resumed: false
        }
    );
    assert_eq!(
        (inner.x, inner.pc, inner.pstate),
        (marked(2).x, marked(2).pc, marked(2).pstate)
    );
    assert_eq!(
        second,
        CallOutcome::Completed {
            event: PRIV_NORMAL,
            resumed: true
        }
    );
    assert_eq!(vm.regs[0].x, marked(1).x);
    assert_eq!(
        (vm.regs[0].elr_el1, vm.regs[0].spsr_el1),
        (marked(1).pc, marked(1).pstate)
    );
    assert_eq!(vm.regs[0].pc, 0x4000_9000);
    assert_eq!((shared.x, shared.pc), (marked(3).x, marked(3).pc));
    assert_eq!(status, CallOutcome::Returned(0));
}

#[test]
fn golden_v1_0_pending_events_are_delivered_after_restore() {
    let mut vm = Vm {
        sdei: load(&golden(), config(3)).unwrap(),
        regs: vec![InMemoryRegisters::default(); 3],
    };

    let masked = vm.dispatch(2);
    let critical = vm.dispatch(1).unwrap();
    vm.call(2, Function::PeUnmask, &[]);
    let ppi = vm.dispatch(2).unwrap();

    assert_eq!(masked, None, "vCPU 2 is masked");
    assert_eq!(
        (critical.event, critical.priority),
        (SHARED_CRITICAL, Priority::Critical)
    );
    assert_eq!(critical.preempted, Some(SHARED_NORMAL));
    assert_eq!((vm.regs[1].pc, vm.regs[1].x[1]), (0x4000_6000, 66));
    assert_eq!(ppi.event, PRIV_SLOT0);
    assert_eq!((vm.regs[2].pc, vm.regs[2].x[1]), (0x4000_4000, 44));
}

#[test]
fn current_writer_reproduces_golden_v1_0() {
    // While the writer's format is 1.0, it must write the committed bytes exactly.
    let bytes = save(&golden_vm().sdei).unwrap();

    assert_eq!(bytes, golden());
}

#[test]
fn golden_v1_0_is_refused_by_a_vm_of_another_shape() {
    let err = Snapshot::decode(&golden())
        .unwrap()
        .restore(config(2))
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        "Snapshot does not fit this VM: snapshot has 3 vCPUs, this VM has 2"
    );
}

#[test]
#[ignore = "writes the golden file; run once when a format version is released"]
fn regenerate_golden_v1_0() {
    let bytes = save(&golden_vm().sdei).unwrap();
    std::fs::write(golden_path(), bytes).unwrap();
}
