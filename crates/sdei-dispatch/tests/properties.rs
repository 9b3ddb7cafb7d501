//! Stateful property test: random call sequences from several vCPUs, mixed with VMM raises,
//! dispatches and vCPU resets, checking the dispatcher's invariants after every step.
//!
//! Invariants: no handler starts on a masked vCPU; at most one normal and one critical handler
//! per vCPU (and a normal one never starts above anything); completion restores exactly what
//! was saved; `EVENT_STATUS` agrees with the state and the running handlers; the state is always
//! one `Dispatcher::restore` accepts. Any panic fails the test. The checks are those of
//! `sdei_dispatch::testing::Model`, which the `sdei_sequences` fuzz target runs too.

mod common;

use common::*;
use proptest::prelude::*;
use sdei_dispatch::abi::{self, Function};
use sdei_dispatch::InMemoryRegisters;

const VCPUS: usize = 3;

fn arg() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0..EVENTS.len()).prop_map(|i| u64::from(EVENTS[i])),
        Just(HANDLER),
        0..20u64,
        prop::sample::select(vec![
            5u64,
            23,
            24,
            27,
            40,
            41,
            100,
            1023,
            0x100,
            0x8_0000_0001
        ]),
        any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let vcpu = 0..VCPUS;
    let target = prop::option::of(0..VCPUS + 1);
    prop_oneof![
        4 => (vcpu.clone(), 0..Function::ALL.len(), prop::array::uniform5(arg()))
            .prop_map(|(vcpu, function, args)| Op::Call { vcpu, function, args }),
        1 => (vcpu.clone(), prop_oneof![abi::SMC64_BASE..=abi::SMC64_LAST, abi::SMC32_BASE..=abi::SMC32_LAST], prop::array::uniform5(any::<u64>()))
            .prop_map(|(vcpu, id, args)| Op::Raw { vcpu, id, args }),
        3 => (vcpu.clone(), 0..EVENTS.len()).prop_map(|(vcpu, event)| Op::Ready { vcpu, event }),
        3 => (0..EVENTS.len(), target.clone()).prop_map(|(event, target)| Op::Raise { event, target }),
        1 => (prop::sample::select(vec![23u32, 24, 40, 41, 99]), target).prop_map(|(intid, target)| Op::RaiseInterrupt { intid, target }),
        4 => vcpu.clone().prop_map(|vcpu| Op::Dispatch { vcpu }),
        3 => (vcpu.clone(), prop::option::of(any::<u64>())).prop_map(|(vcpu, resume)| Op::Complete { vcpu, resume }),
        1 => vcpu.prop_map(|vcpu| Op::ResetVcpu { vcpu }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_call_sequences_keep_every_invariant(ops in prop::collection::vec(op(), 1..80)) {
        let mut model = Model::new(config(VCPUS));
        for op in ops {
            model.step(op);
            model.check_invariants();
        }
    }

    #[test]
    fn arbitrary_registers_never_panic(vcpu in 0..VCPUS, x in prop::array::uniform18(any::<u64>()), pc: u64, pstate: u64) {
        let mut vm = Vm::new(VCPUS);
        let mut regs = InMemoryRegisters { x, pc, pstate, ..InMemoryRegisters::default() };
        let _ = vm.sdei.handle_call(vcpu, &mut regs);
        let _ = vm.sdei.dispatch_pending(vcpu, &mut regs);
    }
}

#[test]
fn handlers_do_run_in_the_random_sequences() {
    // Guards the property test against vacuity: its operations reach nested handlers.
    let mut model = Model::new(config(VCPUS));
    for op in [
        Op::Ready { vcpu: 0, event: 1 },
        Op::Ready { vcpu: 0, event: 2 },
        Op::Raise {
            event: 1,
            target: Some(0),
        },
        Op::Dispatch { vcpu: 0 },
        Op::Raise {
            event: 2,
            target: Some(0),
        },
        Op::Dispatch { vcpu: 0 },
    ] {
        model.step(op);
        model.check_invariants();
    }
    assert_eq!(model.saved(0).len(), 2);
    model.step(Op::Complete {
        vcpu: 0,
        resume: Some(0x1000),
    });
    model.check_invariants();
    assert_eq!(model.saved(0).len(), 1);
}
