//! Stateful property test: random call sequences from several vCPUs, mixed with VMM raises,
//! dispatches and vCPU resets, checking the dispatcher's invariants after every step.
//!
//! Invariants: no handler starts on a masked vCPU; at most one normal and one critical handler
//! per vCPU (and a normal one never starts above anything); completion restores exactly what
//! was saved; `EVENT_STATUS` agrees with the state and the running handlers; the state is always
//! one `Dispatcher::restore` accepts. Any panic fails the test.

mod common;

use common::*;
use proptest::prelude::*;
use sdei_dispatch::abi::{self, Function};
use sdei_dispatch::config::EVENT_0;
use sdei_dispatch::{CallOutcome, Dispatcher, Priority, RegisterFile};

const VCPUS: usize = 3;
const EVENTS: [u32; 7] = [
    EVENT_0,
    PRIV_NORMAL,
    PRIV_CRITICAL,
    SHARED_NORMAL,
    SHARED_CRITICAL,
    PRIV_SLOT0,
    SHARED_SLOT0,
];

#[derive(Debug, Clone)]
enum Op {
    /// Any SDEI call, arguments drawn from meaningful values and noise.
    Call {
        vcpu: usize,
        function: usize,
        args: [u64; 5],
    },
    /// A raw function identifier from the SDEI ranges (reserved and SMC32 included).
    Raw {
        vcpu: usize,
        id: u32,
        args: [u64; 5],
    },
    /// Register (RM_ANY), enable and unmask: makes handlers actually run.
    Ready {
        vcpu: usize,
        event: usize,
    },
    Raise {
        event: usize,
        target: Option<usize>,
    },
    RaiseInterrupt {
        intid: u32,
        target: Option<usize>,
    },
    Dispatch {
        vcpu: usize,
    },
    Complete {
        vcpu: usize,
        resume: Option<u64>,
    },
    ResetVcpu {
        vcpu: usize,
    },
}

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

enum EventRef {
    Private(usize),
    Shared(usize),
}

/// The harness plus, per vCPU, the registers each running handler interrupted.
struct Model {
    vm: Vm,
    saved: Vec<Vec<RegisterFile>>,
}

impl Model {
    fn call(&mut self, vcpu: usize, id: u32, args: &[u64]) {
        self.vm.regs[vcpu].load_call(id, args);
        let before = self.vm.regs[vcpu];
        let outcome = self
            .vm
            .sdei
            .handle_call(vcpu, &mut self.vm.regs[vcpu])
            .unwrap();
        let regs = self.vm.regs[vcpu];
        match outcome {
            CallOutcome::Completed { resumed, .. } => {
                let saved = self.saved[vcpu]
                    .pop()
                    .expect("completion without a running handler");
                assert_eq!(regs.x, saved.x, "completion restores x0-x17");
                if resumed {
                    assert_eq!((regs.elr_el1, regs.spsr_el1), (saved.pc, saved.pstate));
                    assert_eq!(regs.pc, before.x[1], "resume address");
                } else {
                    assert_eq!((regs.pc, regs.pstate), (saved.pc, saved.pstate));
                }
            }
            CallOutcome::Returned(value) => {
                assert_eq!(regs.x[0] as i64, value);
                assert_eq!(regs.x[1..], before.x[1..], "only x0 changes");
                assert_eq!((regs.pc, regs.pstate), (before.pc, before.pstate));
            }
            CallOutcome::NotSdei => panic!("SDEI range identifier {id:#x} not owned"),
        }
    }

    fn dispatch(&mut self, vcpu: usize) {
        let state = self.vm.sdei.state();
        let (masked, normal, critical) = {
            let v = &state.vcpus[vcpu];
            (v.masked, v.normal.is_some(), v.critical.is_some())
        };
        let before = self.vm.regs[vcpu];
        if let Some(info) = self.vm.dispatch(vcpu) {
            assert!(!masked, "no handler starts on a masked vCPU");
            assert!(!critical, "nothing pre-empts a critical handler");
            assert!(
                info.priority == Priority::Critical || !normal,
                "normal never nests"
            );
            assert_eq!(
                info.preempted.is_some(),
                normal && info.priority == Priority::Critical
            );
            self.saved[vcpu].push(before);
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Call {
                vcpu,
                function,
                args,
            } => self.call(vcpu, Function::ALL[function].id(), &args),
            Op::Raw { vcpu, id, args } => self.call(vcpu, id, &args),
            Op::Ready { vcpu, event } => {
                let e = u64::from(EVENTS[event]);
                self.call(vcpu, Function::EventRegister.id(), &[e, HANDLER, e, 0, 0]);
                self.call(vcpu, Function::EventEnable.id(), &[e]);
                self.call(vcpu, Function::PeUnmask.id(), &[]);
            }
            Op::Raise { event, target } => {
                let _ = self.vm.sdei.raise(EVENTS[event], target);
            }
            Op::RaiseInterrupt { intid, target } => {
                let _ = self.vm.sdei.raise_interrupt(intid, target);
            }
            Op::Dispatch { vcpu } => self.dispatch(vcpu),
            Op::Complete { vcpu, resume: None } => {
                self.call(vcpu, Function::EventComplete.id(), &[0])
            }
            Op::Complete {
                vcpu,
                resume: Some(at),
            } => self.call(vcpu, Function::EventCompleteAndResume.id(), &[at]),
            Op::ResetVcpu { vcpu } => {
                self.vm.sdei.reset_vcpu(vcpu).unwrap();
                self.saved[vcpu].clear();
            }
        }
    }

    fn check_invariants(&mut self) {
        let state = self.vm.sdei.state();
        // The state is one the state machine can reach.
        let restored = Dispatcher::restore(config(VCPUS), state.clone());
        assert!(restored.is_ok(), "unreachable state: {:?}", restored.err());
        for (v, vcpu) in state.vcpus.iter().enumerate() {
            let frames = usize::from(vcpu.normal.is_some()) + usize::from(vcpu.critical.is_some());
            assert_eq!(
                frames,
                self.saved[v].len(),
                "one frame per started, uncompleted handler"
            );
            for event in EVENTS {
                let mut scratch =
                    RegisterFile::call(Function::EventStatus.id(), &[u64::from(event)]);
                self.vm.sdei.handle_call(v, &mut scratch).unwrap();
                let bits = scratch.x[0];
                let (entry, running_here) = match self.layout_ref(event) {
                    EventRef::Private(i) => {
                        (vcpu.private_events[i], vcpu.private_events[i].state.running)
                    }
                    EventRef::Shared(i) => (
                        state.shared_events[i].entry,
                        state.shared_events[i].running_on == Some(v),
                    ),
                };
                assert_eq!(
                    bits,
                    entry.state.status_bits(),
                    "status of {event:#x} on vCPU {v}"
                );
                let has_frame = vcpu
                    .normal
                    .iter()
                    .chain(vcpu.critical.iter())
                    .any(|f| f.event == event);
                assert_eq!(
                    has_frame, running_here,
                    "running bit of {event:#x} agrees with frames on vCPU {v}"
                );
            }
        }
    }

    fn layout_ref(&self, event: u32) -> EventRef {
        let state = self.vm.sdei.state();
        match state.vcpus[0]
            .private_events
            .iter()
            .position(|e| e.number == event)
        {
            Some(i) => EventRef::Private(i),
            None => EventRef::Shared(
                state
                    .shared_events
                    .iter()
                    .position(|e| e.entry.number == event)
                    .unwrap(),
            ),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_call_sequences_keep_every_invariant(ops in prop::collection::vec(op(), 1..80)) {
        let mut model = Model { vm: Vm::new(VCPUS), saved: vec![Vec::new(); VCPUS] };
        for op in ops {
            model.step(op);
            model.check_invariants();
        }
    }

    #[test]
    fn arbitrary_registers_never_panic(vcpu in 0..VCPUS, x in prop::array::uniform18(any::<u64>()), pc: u64, pstate: u64) {
        let mut vm = Vm::new(VCPUS);
        let mut regs = RegisterFile { x, pc, pstate, ..RegisterFile::default() };
        let _ = vm.sdei.handle_call(vcpu, &mut regs);
        let _ = vm.sdei.dispatch_pending(vcpu, &mut regs);
    }
}

#[test]
fn handlers_do_run_in_the_random_sequences() {
    // Guards the property test against vacuity: its operations reach nested handlers.
    let mut model = Model {
        vm: Vm::new(VCPUS),
        saved: vec![Vec::new(); VCPUS],
    };
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
    assert_eq!(model.saved[0].len(), 2);
    model.step(Op::Complete {
        vcpu: 0,
        resume: Some(0x1000),
    });
    model.check_invariants();
    assert_eq!(model.saved[0].len(), 1);
}
