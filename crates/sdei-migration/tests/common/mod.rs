//! Shared test harness: a dispatcher with one register file per vCPU, random call sequences
//! that drive it into arbitrary (mid-handler, nested) states, and the golden scenario.
#![allow(dead_code)]

use proptest::prelude::*;
use sdei_dispatch::abi::Function;
use sdei_dispatch::config::{PRIVATE_BIND_BASE, SHARED_BIND_BASE, VMM_EVENT_FIRST};
use sdei_dispatch::{
    BindSlots, CallOutcome, Dispatcher, DispatcherConfig, EventDecl, EventKind, Priority,
    RegisterFile,
};

pub const PRIV_NORMAL: u32 = VMM_EVENT_FIRST;
pub const PRIV_CRITICAL: u32 = VMM_EVENT_FIRST + 1;
pub const SHARED_NORMAL: u32 = VMM_EVENT_FIRST + 2;
pub const SHARED_CRITICAL: u32 = VMM_EVENT_FIRST + 3;
pub const PRIV_SLOT0: u32 = PRIVATE_BIND_BASE;
pub const SHARED_SLOT0: u32 = SHARED_BIND_BASE;
pub const PPI: u32 = 23;
pub const SPI: u32 = 40;
pub const EVENTS: [u32; 7] = [
    0,
    PRIV_NORMAL,
    PRIV_CRITICAL,
    SHARED_NORMAL,
    SHARED_CRITICAL,
    PRIV_SLOT0,
    SHARED_SLOT0,
];

/// The configuration every test VM uses, for `vcpus` vCPUs.
pub fn config(vcpus: usize) -> DispatcherConfig {
    let decl = |number, kind, priority| EventDecl {
        number,
        kind,
        priority,
    };
    let mut config = DispatcherConfig::new(vcpus);
    config.events = vec![
        decl(PRIV_NORMAL, EventKind::Private, Priority::Normal),
        decl(PRIV_CRITICAL, EventKind::Private, Priority::Critical),
        decl(SHARED_NORMAL, EventKind::Shared, Priority::Normal),
        decl(SHARED_CRITICAL, EventKind::Shared, Priority::Critical),
    ];
    config.bindable_interrupts = vec![PPI, 24, SPI, 41];
    config.bind_slots = BindSlots {
        private: 1,
        shared: 1,
    };
    config.mte_tco = true;
    config.vendor_id = 0x5644_4D00;
    config
}

/// A dispatcher and the registers of each vCPU.
#[derive(Debug, Clone)]
pub struct Vm {
    pub sdei: Dispatcher,
    pub regs: Vec<RegisterFile>,
}

impl Vm {
    pub fn new(config: DispatcherConfig) -> Vm {
        let vcpus = config.vcpus;
        Vm {
            sdei: Dispatcher::new(config).unwrap(),
            regs: vec![RegisterFile::default(); vcpus],
        }
    }

    /// Makes an SDEI call on `vcpu` with function identifier `id`.
    pub fn call_id(&mut self, vcpu: usize, id: u32, args: &[u64]) -> CallOutcome {
        self.regs[vcpu].load_call(id, args);
        self.sdei.handle_call(vcpu, &mut self.regs[vcpu]).unwrap()
    }

    pub fn call(&mut self, vcpu: usize, function: Function, args: &[u64]) -> CallOutcome {
        self.call_id(vcpu, function.id(), args)
    }

    /// Registers `event` at `entry` (RM_ANY), enables it and unmasks `vcpu`.
    pub fn ready(&mut self, vcpu: usize, event: u32, entry: u64) {
        let e = u64::from(event);
        self.call(vcpu, Function::EventRegister, &[e, entry, e ^ 0xA5, 0, 0]);
        self.call(vcpu, Function::EventEnable, &[e]);
        self.call(vcpu, Function::PeUnmask, &[]);
    }

    /// Puts a recognisable interrupted context in the registers of `vcpu`.
    pub fn mark(&mut self, vcpu: usize, tag: u64) {
        let regs = &mut self.regs[vcpu];
        for (n, x) in regs.x.iter_mut().enumerate() {
            *x = tag << 32 | n as u64;
        }
        regs.pc = 0xFFFF_8000_0000_0000 | tag << 12;
        regs.pstate = 0x2000_0005 | (tag & 1) << 22; // EL1h, C flag, PAN from the tag.
    }

    pub fn dispatch(&mut self, vcpu: usize) -> Option<sdei_dispatch::DispatchInfo> {
        self.sdei
            .dispatch_pending(vcpu, &mut self.regs[vcpu])
            .unwrap()
    }

    /// Number of handlers running on `vcpu`.
    pub fn depth(&self, vcpu: usize) -> usize {
        let state = self.sdei.state();
        let v = &state.vcpus[vcpu];
        usize::from(v.normal.is_some()) + usize::from(v.critical.is_some())
    }
}

/// One step of a random driving sequence.
#[derive(Debug, Clone)]
pub enum Op {
    /// Any SDEI call with arguments drawn from meaningful values and noise.
    Call {
        vcpu: usize,
        function: usize,
        args: [u64; 5],
    },
    /// Register (RM_ANY), enable, unmask: makes handlers actually run.
    Ready {
        vcpu: usize,
        event: usize,
    },
    /// Register a shared event routed RM_PE to `target`'s default MPIDR.
    ReadyPe {
        vcpu: usize,
        event: usize,
        target: usize,
    },
    Raise {
        event: usize,
        target: Option<usize>,
    },
    RaiseInterrupt {
        intid: u32,
        target: Option<usize>,
    },
    Mark {
        vcpu: usize,
        tag: u64,
    },
    /// Arbitrary interrupted context: any x0–x17, PC and PSTATE bits.
    SetRegs {
        vcpu: usize,
        x: [u64; 18],
        pc: u64,
        pstate: u64,
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

fn arg(vcpus: usize) -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(EVENTS.to_vec()).prop_map(u64::from),
        Just(0x4000_8000u64),
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
        1 => (prop::sample::select(vec![PPI, 24, SPI, 41]), target)
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

impl Vm {
    pub fn step(&mut self, op: &Op) {
        let vcpus = self.regs.len();
        match *op {
            Op::Call {
                vcpu,
                function,
                ref args,
            } => {
                self.call(vcpu, Function::ALL[function], args);
            }
            Op::Ready { vcpu, event } => self.ready(vcpu, EVENTS[event], 0x4000_8000),
            Op::ReadyPe {
                vcpu,
                event,
                target,
            } => {
                let e = u64::from(EVENTS[event]);
                let mpidr = sdei_dispatch::config::default_mpidr(target % vcpus);
                self.call(vcpu, Function::EventRegister, &[e, 0x5000, 9, 1, mpidr]);
                self.call(vcpu, Function::EventEnable, &[e]);
                self.call(target % vcpus, Function::PeUnmask, &[]);
            }
            Op::Raise { event, target } => {
                let _ = self.sdei.raise(EVENTS[event], target);
            }
            Op::RaiseInterrupt { intid, target } => {
                let _ = self.sdei.raise_interrupt(intid, target);
            }
            Op::Mark { vcpu, tag } => self.mark(vcpu, tag),
            Op::SetRegs {
                vcpu,
                x,
                pc,
                pstate,
            } => {
                let regs = &mut self.regs[vcpu];
                (regs.x, regs.pc, regs.pstate) = (x, pc, pstate);
            }
            Op::Dispatch { vcpu } => {
                self.dispatch(vcpu);
            }
            Op::Complete { vcpu, resume } => {
                let (id, arg) = match resume {
                    None => (Function::EventComplete.id(), 0),
                    Some(at) => (Function::EventCompleteAndResume.id(), at),
                };
                self.call_id(vcpu, id, &[arg]);
            }
            Op::ResetVcpu { vcpu } => self.sdei.reset_vcpu(vcpu).unwrap(),
        }
    }
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
    let mut vm = Vm::new(config(vcpus));
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
                vm.call(vcpu, Function::EventCompleteAndResume, &[0x7000 + n as u64])
            } else {
                vm.call(vcpu, Function::EventComplete, &[0])
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
    let mut vm = Vm::new(config(3));
    vm.call(0, Function::InterruptBind, &[u64::from(PPI)]);
    vm.call(0, Function::InterruptBind, &[u64::from(SPI)]);
    vm.ready(0, PRIV_NORMAL, 0x4000_1000);
    vm.ready(0, PRIV_CRITICAL, 0x4000_2000);
    vm.mark(0, 1);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.dispatch(0).unwrap();
    vm.mark(0, 2);
    vm.sdei.raise(PRIV_CRITICAL, Some(0)).unwrap();
    vm.dispatch(0).unwrap();

    let shared = u64::from(SHARED_NORMAL);
    vm.call(1, Function::EventRegister, &[shared, 0x4000_3000, 33, 1, 1]);
    vm.call(1, Function::EventEnable, &[shared]);
    vm.call(1, Function::PeUnmask, &[]);
    vm.mark(1, 3);
    vm.sdei.raise(SHARED_NORMAL, None).unwrap();
    vm.dispatch(1).unwrap();
    vm.call(2, Function::EventUnregister, &[shared]);

    vm.call(
        2,
        Function::EventRegister,
        &[u64::from(PRIV_SLOT0), 0x4000_4000, 44, 0, 0],
    );
    vm.call(2, Function::EventEnable, &[u64::from(PRIV_SLOT0)]);
    vm.sdei.raise_interrupt(PPI, Some(2)).unwrap();
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
    vm.mark(2, 4);
    vm
}
