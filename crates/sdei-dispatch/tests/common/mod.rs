//! A small harness: one dispatcher and one in-memory register file per vCPU.
#![allow(dead_code)]

use sdei_dispatch::abi::Function;
use sdei_dispatch::config::{PRIVATE_BIND_BASE, SHARED_BIND_BASE, VMM_EVENT_FIRST};
use sdei_dispatch::{
    BindSlots, CallOutcome, DispatchInfo, Dispatcher, DispatcherConfig, EventDecl, EventKind,
    Priority, RegisterFile,
};

pub const PRIV_NORMAL: u32 = VMM_EVENT_FIRST;
pub const PRIV_CRITICAL: u32 = VMM_EVENT_FIRST + 1;
pub const SHARED_NORMAL: u32 = VMM_EVENT_FIRST + 2;
pub const SHARED_CRITICAL: u32 = VMM_EVENT_FIRST + 3;
pub const PRIV_SLOT0: u32 = PRIVATE_BIND_BASE;
pub const SHARED_SLOT0: u32 = SHARED_BIND_BASE;
pub const BINDABLE_PPI: u32 = 23;
pub const BINDABLE_SPI: u32 = 40;
pub const HANDLER: u64 = 0x4000_8000;

pub fn config(vcpus: usize) -> DispatcherConfig {
    let mut config = DispatcherConfig::new(vcpus);
    let decl = |number, kind, priority| EventDecl {
        number,
        kind,
        priority,
    };
    config.events = vec![
        decl(PRIV_NORMAL, EventKind::Private, Priority::Normal),
        decl(PRIV_CRITICAL, EventKind::Private, Priority::Critical),
        decl(SHARED_NORMAL, EventKind::Shared, Priority::Normal),
        decl(SHARED_CRITICAL, EventKind::Shared, Priority::Critical),
    ];
    config.bindable_interrupts = vec![BINDABLE_PPI, 24, BINDABLE_SPI, 41];
    config.bind_slots = BindSlots {
        private: 1,
        shared: 1,
    };
    config.vendor_id = 0x5644_4D00;
    config
}

pub struct Vm {
    pub sdei: Dispatcher,
    pub regs: Vec<RegisterFile>,
}

impl Vm {
    pub fn new(vcpus: usize) -> Self {
        Vm::with_config(config(vcpus))
    }

    pub fn with_config(config: DispatcherConfig) -> Self {
        let vcpus = config.vcpus;
        Vm {
            sdei: Dispatcher::new(config).unwrap(),
            regs: vec![RegisterFile::default(); vcpus],
        }
    }

    /// Makes an SDEI call on `vcpu` and returns what it did.
    pub fn outcome(&mut self, vcpu: usize, function: Function, args: &[u64]) -> CallOutcome {
        self.regs[vcpu].load_call(function.id(), args);
        self.sdei.handle_call(vcpu, &mut self.regs[vcpu]).unwrap()
    }

    /// Makes an SDEI call on `vcpu` that returns a value.
    pub fn call(&mut self, vcpu: usize, function: Function, args: &[u64]) -> i64 {
        match self.outcome(vcpu, function, args) {
            CallOutcome::Returned(value) => {
                assert_eq!(
                    self.regs[vcpu].x[0] as i64, value,
                    "x0 holds the return value"
                );
                value
            }
            other => panic!("{function:?} did not return a value: {other:?}"),
        }
    }

    pub fn register(&mut self, vcpu: usize, event: u32, arg: u64) -> i64 {
        self.call(
            vcpu,
            Function::EventRegister,
            &[u64::from(event), HANDLER, arg, 0, 0],
        )
    }

    pub fn register_pe(&mut self, vcpu: usize, event: u32, mpidr: u64) -> i64 {
        self.call(
            vcpu,
            Function::EventRegister,
            &[u64::from(event), HANDLER, 0, 1, mpidr],
        )
    }

    pub fn enable(&mut self, vcpu: usize, event: u32) -> i64 {
        self.call(vcpu, Function::EventEnable, &[u64::from(event)])
    }

    pub fn unmask(&mut self, vcpu: usize) -> i64 {
        self.call(vcpu, Function::PeUnmask, &[])
    }

    pub fn status(&mut self, vcpu: usize, event: u32) -> i64 {
        self.call(vcpu, Function::EventStatus, &[u64::from(event)])
    }

    /// Registers, enables and unmasks: the event is ready to run on `vcpu`.
    pub fn ready(&mut self, vcpu: usize, event: u32) {
        assert_eq!(self.register(vcpu, event, u64::from(event) + 1), 0);
        assert_eq!(self.enable(vcpu, event), 0);
        assert_eq!(self.unmask(vcpu), 0);
    }

    /// Puts a recognisable interrupted context in the registers of `vcpu`.
    pub fn mark(&mut self, vcpu: usize, tag: u64) {
        let regs = &mut self.regs[vcpu];
        for (n, x) in regs.x.iter_mut().enumerate() {
            *x = tag * 0x100 + n as u64;
        }
        regs.pc = 0xFFFF_0000_0000_0000 | (tag << 12);
        regs.pstate = 0x3C5 | (tag & 0xF) << 28; // EL1h with DAIF clear-ish, some NZCV.
        regs.pstate &= !0x3C0;
    }

    pub fn dispatch(&mut self, vcpu: usize) -> Option<DispatchInfo> {
        self.sdei
            .dispatch_pending(vcpu, &mut self.regs[vcpu])
            .unwrap()
    }

    pub fn complete(&mut self, vcpu: usize) -> CallOutcome {
        self.outcome(vcpu, Function::EventComplete, &[0])
    }
}
