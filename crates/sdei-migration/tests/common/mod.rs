//! Shared test harness: the `sdei_dispatch::testing` VM (a dispatcher with one register file
//! per vCPU) with MTE, random sequences of its `Op`s that drive it into arbitrary
//! (mid-handler, nested) states, and the golden scenario.
#![allow(dead_code)]

pub use sdei_dispatch::testing::*;

use proptest::prelude::*;
use sdei_dispatch::abi::Function;
use sdei_dispatch::{CallOutcome, DispatcherConfig};

/// The configuration every test VM uses, for `vcpus` vCPUs: the shared test configuration
/// with MTE.
pub fn config(vcpus: usize) -> DispatcherConfig {
    let mut config = sdei_dispatch::testing::config(vcpus);
    config.mte_tco = true;
    config
}

/// Puts the golden scenario's recognisable interrupted context in the registers of `vcpu`
/// (frozen: `golden/sdei-v1.0.bin` holds these values).
pub fn golden_mark(vm: &mut Vm, vcpu: usize, tag: u64) {
    let regs = &mut vm.regs[vcpu];
    regs.x = std::array::from_fn(|n| tag << 32 | n as u64);
    regs.pc = 0xFFFF_8000_0000_0000 | tag << 12;
    regs.pstate = 0x2000_0005 | (tag & 1) << 22; // EL1h, C flag, PAN from the tag.
}

fn arg(vcpus: usize) -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(EVENTS.to_vec()).prop_map(u64::from),
        Just(HANDLER),
        0..(vcpus as u64 + 2),
        prop::sample::select(vec![1u64, 2, 3, 23, 24, 40, 41, 0x100]),
        any::<u64>(),
    ]
}

/// Random operations on a VM of `vcpus` vCPUs.
pub fn op(vcpus: usize) -> impl Strategy<Value = Op> {
    let vcpu = 0..vcpus;
    let event = 0..EVENTS.len();
    let target = prop::option::of(0..vcpus);
    prop_oneof![
        3 => (vcpu.clone(), 0..Function::ALL.len(), prop::array::uniform5(arg(vcpus)))
            .prop_map(|(vcpu, function, args)| Op::Call { vcpu, function, args }),
        4 => (vcpu.clone(), event.clone()).prop_map(|(vcpu, event)| Op::Ready { vcpu, event }),
        1 => (vcpu.clone(), 3..5usize, vcpu.clone())
            .prop_map(|(vcpu, event, target)| Op::ReadyPe { vcpu, event, target }),
        5 => (event, target.clone()).prop_map(|(event, target)| Op::Raise { event, target }),
        1 => (prop::sample::select(BINDABLE_INTERRUPTS.to_vec()), target)
            .prop_map(|(intid, target)| Op::RaiseInterrupt { intid, target }),
        1 => (vcpu.clone(), any::<u64>()).prop_map(|(vcpu, tag)| Op::Mark { vcpu, tag }),
        1 => (vcpu.clone(), prop::array::uniform18(any::<u64>()), any::<u64>(), any::<u64>())
            .prop_map(|(vcpu, x, pc, pstate)| Op::SetRegs { vcpu, x, pc, pstate }),
        5 => vcpu.clone().prop_map(|vcpu| Op::Dispatch { vcpu }),
        1 => (vcpu.clone(), prop::option::of(any::<u64>()))
            .prop_map(|(vcpu, resume)| Op::Complete { vcpu, resume }),
        1 => vcpu.prop_map(|vcpu| Op::ResetVcpu { vcpu }),
    ]
}

/// The operations that put a critical handler over a normal one on `vcpu`.
pub fn nest_on(vcpu: usize) -> Vec<Op> {
    vec![
        Op::Ready { vcpu, event: 1 },
        Op::Ready { vcpu, event: 2 },
        Op::Mark { vcpu, tag: 0x11 },
        Op::Raise {
            event: 1,
            target: Some(vcpu),
        },
        Op::Dispatch { vcpu },
        Op::Mark { vcpu, tag: 0x22 },
        Op::Raise {
            event: 2,
            target: Some(vcpu),
        },
        Op::Dispatch { vcpu },
    ]
}

/// A random VM state: a vCPU count, an optional forced nesting, then random operations.
pub fn vm_state() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (1..=4usize).prop_flat_map(|vcpus| {
        let nest = prop::option::of((0..vcpus, 0..10usize));
        let ops = prop::collection::vec(op(vcpus), 0..60);
        (Just(vcpus), nest, ops).prop_map(|(vcpus, nest, mut ops)| {
            // Splice the nesting in near the end, so random ops run before and after it.
            if let Some((vcpu, from_end)) = nest {
                let at = ops.len().saturating_sub(from_end);
                let tail = ops.split_off(at);
                ops.extend(nest_on(vcpu));
                ops.extend(tail);
            }
            (vcpus, ops)
        })
    })
}

/// Builds the VM a `vm_state` value describes.
pub fn build(vcpus: usize, ops: &[Op]) -> Vm {
    let mut vm = Vm::with_config(config(vcpus));
    for op in ops {
        vm.step(op);
    }
    vm
}

/// Finishes every running handler on every vCPU (innermost first), with `EVENT_COMPLETE`
/// or, where `resume` says so, `EVENT_COMPLETE_AND_RESUME`.
pub fn finish_handlers(vm: &mut Vm, resume: &[bool]) {
    let mut n = 0;
    for vcpu in 0..vm.regs.len() {
        while vm.depth(vcpu) > 0 {
            let with_resume = resume.get(n).copied().unwrap_or(false);
            n += 1;
            let outcome = if with_resume {
                vm.outcome(vcpu, Function::EventCompleteAndResume, &[0x7000 + n as u64])
            } else {
                vm.outcome(vcpu, Function::EventComplete, &[0])
            };
            assert!(
                matches!(outcome, CallOutcome::Completed { .. }),
                "a running handler completes: {outcome:?}"
            );
        }
    }
}

/// The golden scenario: 3 vCPUs; vCPU 0 runs the critical private handler over the normal
/// private one; vCPU 1 runs the shared normal event (routed RM_PE to it) with an unregister
/// pending; vCPU 2 is masked with a pending bound PPI; the SPI is bound and its slot
/// registered; the shared critical event is registered RM_ANY, enabled and pending.
pub fn golden_vm() -> Vm {
    let mut vm = Vm::with_config(config(3));
    vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_PPI)]);
    vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_SPI)]);
    vm.ready_at(0, PRIV_NORMAL, 0x4000_1000, u64::from(PRIV_NORMAL) ^ 0xA5);
    vm.ready_at(
        0,
        PRIV_CRITICAL,
        0x4000_2000,
        u64::from(PRIV_CRITICAL) ^ 0xA5,
    );
    golden_mark(&mut vm, 0, 1);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.dispatch(0).unwrap();
    golden_mark(&mut vm, 0, 2);
    vm.sdei.raise(PRIV_CRITICAL, Some(0)).unwrap();
    vm.dispatch(0).unwrap();

    let shared = u64::from(SHARED_NORMAL);
    vm.call(1, Function::EventRegister, &[shared, 0x4000_3000, 33, 1, 1]);
    vm.call(1, Function::EventEnable, &[shared]);
    vm.call(1, Function::PeUnmask, &[]);
    golden_mark(&mut vm, 1, 3);
    vm.sdei.raise(SHARED_NORMAL, None).unwrap();
    vm.dispatch(1).unwrap();
    vm.call(2, Function::EventUnregister, &[shared]);

    vm.call(
        2,
        Function::EventRegister,
        &[u64::from(PRIV_SLOT0), 0x4000_4000, 44, 0, 0],
    );
    vm.call(2, Function::EventEnable, &[u64::from(PRIV_SLOT0)]);
    vm.sdei.raise_interrupt(BINDABLE_PPI, Some(2)).unwrap();
    vm.call(
        1,
        Function::EventRegister,
        &[u64::from(SHARED_SLOT0), 0x4000_5000, 55, 0, 0],
    );

    let critical = u64::from(SHARED_CRITICAL);
    vm.call(
        2,
        Function::EventRegister,
        &[critical, 0x4000_6000, 66, 0, 0],
    );
    vm.call(2, Function::EventEnable, &[critical]);
    vm.sdei.raise(SHARED_CRITICAL, None).unwrap();
    golden_mark(&mut vm, 2, 4);
    vm
}
