//! Delivery: handler entry and exit at register level, nesting, masking, routing, and the
//! VMM-facing API.

mod common;

use common::*;
use sdei_dispatch::abi::{pstate, Function, DENIED, PENDING, SUCCESS};
use sdei_dispatch::{CallOutcome, Priority, RaiseOutcome, VmmError};

#[test]
fn handler_entry_saves_context_and_sets_arguments_and_pstate() {
    let mut vm = Vm::new(1);
    vm.ready(0, PRIV_NORMAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.mark(0, 3);
    vm.regs[0].pstate |= pstate::PAN | pstate::DIT | (1 << 21); // PAN, DIT and SS set.
    let interrupted = vm.regs[0];

    let info = vm.dispatch(0).unwrap();

    assert_eq!(
        (info.event, info.priority, info.preempted),
        (PRIV_NORMAL, Priority::Normal, None)
    );
    let regs = vm.regs[0];
    assert_eq!(regs.x[0], u64::from(PRIV_NORMAL), "x0 = event");
    assert_eq!(
        regs.x[1],
        u64::from(PRIV_NORMAL) + 1,
        "x1 = registered argument"
    );
    assert_eq!(regs.x[2], interrupted.pc, "x2 = interrupted PC");
    assert_eq!(regs.x[3], interrupted.pstate, "x3 = interrupted PSTATE");
    assert_eq!(regs.x[4..], interrupted.x[4..], "x4-x17 untouched");
    assert_eq!(regs.pc, HANDLER);
    // EL1h, DAIF masked, PAN and DIT kept, SS cleared, no TCO without MTE.
    assert_eq!(
        regs.pstate,
        0b0101 | pstate::DAIF | pstate::PAN | pstate::DIT
    );
    // EVENT_CONTEXT reads the saved registers (Linux reads x0-x3, or x0-x4).
    for n in 0..18 {
        assert_eq!(
            vm.call(0, Function::EventContext, &[n]) as u64,
            interrupted.x[n as usize]
        );
    }
}

#[test]
fn handler_entry_sets_tco_when_the_guest_has_mte() {
    let mut config = config(1);
    config.mte_tco = true;
    let mut vm = Vm::with_config(config);
    vm.ready(0, PRIV_NORMAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();

    vm.dispatch(0).unwrap();

    assert_eq!(vm.regs[0].pstate, 0b0101 | pstate::DAIF | pstate::TCO);
}

#[test]
fn complete_restores_exactly_what_was_saved() {
    let mut vm = Vm::new(1);
    vm.ready(0, PRIV_NORMAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.mark(0, 9);
    let interrupted = vm.regs[0];
    vm.dispatch(0).unwrap();
    vm.regs[0].x[17] = 0xDEAD; // The handler clobbers registers.

    let outcome = vm.complete(0);

    assert_eq!(
        outcome,
        CallOutcome::Completed {
            event: PRIV_NORMAL,
            resumed: false
        }
    );
    assert_eq!(vm.regs[0], interrupted);
    assert_eq!(vm.status(0, PRIV_NORMAL), 0b011);
}

#[test]
fn complete_and_resume_emulates_an_irq_at_the_resume_address() {
    let mut config = config(1);
    config.mte_tco = true;
    let mut vm = Vm::with_config(config);
    vm.ready(0, PRIV_NORMAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.mark(0, 5);
    let interrupted = vm.regs[0];
    vm.dispatch(0).unwrap();

    let outcome = vm.outcome(
        0,
        Function::EventCompleteAndResume,
        &[0xFFFF_8000_1000_0280],
    );

    assert_eq!(
        outcome,
        CallOutcome::Completed {
            event: PRIV_NORMAL,
            resumed: true
        }
    );
    let regs = vm.regs[0];
    assert_eq!(regs.x, interrupted.x, "x0-x17 restored");
    assert_eq!(regs.elr_el1, interrupted.pc, "ELR_EL1 = interrupted PC");
    assert_eq!(
        regs.spsr_el1, interrupted.pstate,
        "SPSR_EL1 = interrupted PSTATE"
    );
    assert_eq!(regs.pc, 0xFFFF_8000_1000_0280);
    assert_eq!(regs.pstate, 0b0101 | pstate::DAIF | pstate::TCO);
}

#[test]
fn critical_preempts_a_running_normal_handler_and_unwinds_in_order() {
    let mut vm = Vm::new(1);
    vm.ready(0, PRIV_NORMAL);
    vm.ready(0, PRIV_CRITICAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.mark(0, 1);
    let outer = vm.regs[0];
    vm.dispatch(0).unwrap();
    vm.mark(0, 2);
    let in_normal = vm.regs[0];

    vm.sdei.raise(PRIV_CRITICAL, Some(0)).unwrap();
    let info = vm.dispatch(0).unwrap();

    assert_eq!(
        (info.event, info.preempted),
        (PRIV_CRITICAL, Some(PRIV_NORMAL))
    );
    assert_eq!(
        vm.call(0, Function::EventContext, &[5]) as u64,
        in_normal.x[5],
        "context of the innermost handler"
    );
    vm.complete(0);
    assert_eq!(vm.regs[0], in_normal, "back in the normal handler");
    assert_eq!(vm.status(0, PRIV_NORMAL), 0b111);
    vm.complete(0);
    assert_eq!(vm.regs[0], outer);
}

#[test]
fn same_priority_never_nests_and_nothing_preempts_critical() {
    let mut vm = Vm::new(1);
    vm.ready(0, PRIV_NORMAL);
    vm.ready(0, SHARED_NORMAL);
    vm.ready(0, PRIV_CRITICAL);
    vm.ready(0, SHARED_CRITICAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.dispatch(0).unwrap();

    // Normal over normal: waits.
    vm.sdei.raise(SHARED_NORMAL, None).unwrap();
    assert!(vm.dispatch(0).is_none());
    // Critical over normal: runs; then a second critical waits, and so does the normal.
    vm.sdei.raise(PRIV_CRITICAL, Some(0)).unwrap();
    vm.sdei.raise(SHARED_CRITICAL, None).unwrap();
    assert_eq!(vm.dispatch(0).map(|d| d.event), Some(PRIV_CRITICAL));
    assert!(vm.dispatch(0).is_none());
    assert!(!vm.sdei.pending_dispatch(0));

    // Completing the critical handler lets the other critical one in (critical first).
    vm.complete(0);
    assert_eq!(vm.dispatch(0).map(|d| d.event), Some(SHARED_CRITICAL));
    vm.complete(0);
    assert!(vm.dispatch(0).is_none(), "the normal handler still runs");
    vm.complete(0);
    assert_eq!(vm.dispatch(0).map(|d| d.event), Some(SHARED_NORMAL));
}

#[test]
fn masked_vcpu_defers_delivery_until_unmask() {
    let mut vm = Vm::new(1);
    vm.register(0, PRIV_NORMAL, 0);
    vm.enable(0, PRIV_NORMAL);
    assert_eq!(vm.sdei.is_masked(0), Some(true), "every vCPU starts masked");

    assert_eq!(
        vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap(),
        RaiseOutcome::Pending
    );
    assert!(vm.dispatch(0).is_none());
    assert_eq!(vm.sdei.vcpus_needing_kick().count(), 0);

    vm.unmask(0);
    assert_eq!(vm.sdei.vcpus_needing_kick().collect::<Vec<_>>(), [0]);
    assert_eq!(vm.dispatch(0).map(|d| d.event), Some(PRIV_NORMAL));
}

#[test]
fn masking_inside_a_handler_does_not_stop_it_but_holds_back_critical() {
    let mut vm = Vm::new(1);
    vm.ready(0, PRIV_NORMAL);
    vm.ready(0, PRIV_CRITICAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.dispatch(0).unwrap();

    assert_eq!(vm.call(0, Function::PeMask, &[]), 1);
    vm.sdei.raise(PRIV_CRITICAL, Some(0)).unwrap();

    assert!(vm.dispatch(0).is_none());
    assert!(matches!(vm.complete(0), CallOutcome::Completed { .. }));
    vm.unmask(0);
    assert_eq!(vm.dispatch(0).map(|d| d.event), Some(PRIV_CRITICAL));
}

#[test]
fn disabled_event_stays_pending_until_enabled_and_raises_merge() {
    let mut vm = Vm::new(1);
    vm.register(0, PRIV_NORMAL, 0);
    vm.unmask(0);
    assert_eq!(
        vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap(),
        RaiseOutcome::Pending
    );
    assert_eq!(
        vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap(),
        RaiseOutcome::AlreadyPending
    );
    assert!(vm.dispatch(0).is_none());

    vm.enable(0, PRIV_NORMAL);

    assert!(vm.dispatch(0).is_some());
    vm.complete(0);
    assert!(
        vm.dispatch(0).is_none(),
        "two merged raises run the handler once"
    );
}

#[test]
fn unregistered_events_are_dropped() {
    let mut vm = Vm::new(1);
    assert_eq!(
        vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap(),
        RaiseOutcome::NotRegistered
    );
    vm.ready(0, PRIV_NORMAL);
    assert!(vm.dispatch(0).is_none());
}

#[test]
fn unregister_while_running_is_pending_and_finishes_at_completion() {
    let mut vm = Vm::new(2);
    vm.ready(1, SHARED_NORMAL);
    vm.sdei.raise(SHARED_NORMAL, None).unwrap();
    vm.dispatch(1).unwrap();
    let e = u64::from(SHARED_NORMAL);

    // Another vCPU unregisters the shared event while vCPU 1 runs its handler.
    assert_eq!(vm.call(0, Function::EventUnregister, &[e]), PENDING);
    assert_eq!(vm.call(0, Function::EventUnregister, &[e]), PENDING);
    assert_eq!(vm.register(0, SHARED_NORMAL, 0), DENIED);
    assert_eq!(
        vm.sdei.raise(SHARED_NORMAL, None).unwrap(),
        RaiseOutcome::NotRegistered
    );
    assert_eq!(vm.status(0, SHARED_NORMAL), 0b100);

    vm.complete(1);

    assert_eq!(vm.status(0, SHARED_NORMAL), 0);
    assert_eq!(vm.call(0, Function::EventUnregister, &[e]), DENIED);
    assert_eq!(vm.register(0, SHARED_NORMAL, 0), SUCCESS);
}

#[test]
fn shared_rm_pe_event_is_delivered_only_on_its_target() {
    let mut vm = Vm::new(3);
    assert_eq!(vm.register_pe(0, SHARED_NORMAL, 2), SUCCESS);
    vm.enable(0, SHARED_NORMAL);
    for cpu in 0..3 {
        vm.unmask(cpu);
    }

    vm.sdei.raise(SHARED_NORMAL, None).unwrap();

    assert_eq!(vm.sdei.vcpus_needing_kick().collect::<Vec<_>>(), [2]);
    assert!(vm.dispatch(0).is_none());
    assert_eq!(vm.dispatch(2).map(|d| d.event), Some(SHARED_NORMAL));
}

#[test]
fn shared_rm_any_event_runs_once_on_one_vcpu_at_a_time() {
    let mut vm = Vm::new(3);
    vm.register(0, SHARED_NORMAL, 0);
    vm.enable(0, SHARED_NORMAL);
    vm.unmask(1);
    vm.unmask(2);

    vm.sdei.raise(SHARED_NORMAL, None).unwrap();
    assert_eq!(
        vm.sdei.vcpus_needing_kick().collect::<Vec<_>>(),
        [1, 2],
        "masked vCPU 0 is no candidate"
    );
    assert!(vm.dispatch(2).is_some());
    assert!(vm.dispatch(1).is_none(), "handled once per raise");

    // Raised again while running: pending, but not started elsewhere until completion.
    assert_eq!(
        vm.sdei.raise(SHARED_NORMAL, None).unwrap(),
        RaiseOutcome::Pending
    );
    assert!(vm.dispatch(1).is_none());
    vm.complete(2);
    assert!(vm.dispatch(1).is_some());
}

#[test]
fn vmm_api_refuses_bad_targets_and_unknown_events() {
    let mut vm = Vm::new(2);
    assert_eq!(
        vm.sdei.raise(0x0100_00FF, None),
        Err(VmmError::UnknownEvent(0x0100_00FF))
    );
    assert_eq!(
        vm.sdei.raise(PRIV_NORMAL, None),
        Err(VmmError::TargetRequired(PRIV_NORMAL))
    );
    assert_eq!(
        vm.sdei.raise(PRIV_NORMAL, Some(2)),
        Err(VmmError::InvalidVcpu(2))
    );
    assert_eq!(
        vm.sdei.raise(SHARED_NORMAL, Some(0)),
        Err(VmmError::TargetNotAllowed(SHARED_NORMAL))
    );
    assert!(vm.sdei.handle_call(2, &mut vm.regs[0]).is_err());
    assert!(vm.sdei.dispatch_pending(7, &mut vm.regs[0]).is_err());
    assert_eq!(vm.sdei.reset_vcpu(9), Err(VmmError::InvalidVcpu(9)));
}

#[test]
fn reset_vcpu_abandons_its_handlers_and_masks_it() {
    let mut vm = Vm::new(2);
    vm.ready(1, SHARED_NORMAL);
    vm.ready(1, PRIV_NORMAL);
    vm.sdei.raise(SHARED_NORMAL, None).unwrap();
    vm.dispatch(1).unwrap();

    vm.sdei.reset_vcpu(1).unwrap();

    assert_eq!(vm.sdei.is_masked(1), Some(true));
    assert_eq!(vm.status(1, PRIV_NORMAL), 0);
    assert_eq!(
        vm.status(0, SHARED_NORMAL),
        0b011,
        "shared registration survives, no longer running"
    );
    assert_eq!(vm.complete(1), CallOutcome::Returned(DENIED));
}

/// A register file that narrows like KVM's `set_core_reg`: after any write, while PSTATE is an
/// AArch32 mode (bit 4 set), x0-x14 and PC keep only their low 32 bits. With `fail_pc`, PC
/// writes fail.
struct Aarch32Narrowing {
    regs: sdei_dispatch::InMemoryRegisters,
    fail_pc: bool,
}

impl Aarch32Narrowing {
    fn narrow(&mut self) {
        if self.regs.pstate & 0x10 != 0 {
            for x in self.regs.x.iter_mut().take(15) {
                *x &= 0xFFFF_FFFF;
            }
            self.regs.pc &= 0xFFFF_FFFF;
        }
    }
}

impl sdei_dispatch::RegisterFile for Aarch32Narrowing {
    type Error = &'static str;

    fn read_x(&mut self, n: u8) -> Result<u64, &'static str> {
        self.regs.read_x(n).map_err(|_| "x")
    }
    fn write_x(&mut self, n: u8, value: u64) -> Result<(), &'static str> {
        self.regs.write_x(n, value).map_err(|_| "x")?;
        self.narrow();
        Ok(())
    }
    fn read_control(&mut self, reg: sdei_dispatch::ControlRegister) -> Result<u64, &'static str> {
        self.regs.read_control(reg).map_err(|_| "control")
    }
    fn write_control(
        &mut self,
        reg: sdei_dispatch::ControlRegister,
        value: u64,
    ) -> Result<(), &'static str> {
        if self.fail_pc && reg == sdei_dispatch::ControlRegister::Pc {
            return Err("PC write refused");
        }
        self.regs.write_control(reg, value).map_err(|_| "control")?;
        self.narrow();
        Ok(())
    }
}

#[test]
fn an_event_interrupting_aarch32_el0_enters_its_64_bit_handler_unnarrowed() {
    const ENTRY: u64 = 0xFFFF_8000_1234_0000;
    const ARG: u64 = 0xFFFF_0000_DEAD_BEEF;
    let mut vm = Vm::new(1);
    vm.ready_at(0, PRIV_NORMAL, ENTRY, ARG);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    // A 32-bit user process: AArch32 USR mode, PC in the low 4 GiB.
    let mut regs = Aarch32Narrowing {
        regs: vm.regs[0],
        fail_pc: false,
    };
    regs.regs.pstate = 0x10;
    regs.regs.pc = 0x0001_0000;

    vm.sdei.dispatch_pending(0, &mut regs).unwrap().unwrap();

    assert_eq!(regs.regs.pc, ENTRY);
    assert_eq!(regs.regs.x[1], ARG);
    assert_eq!((regs.regs.x[2], regs.regs.x[3]), (0x0001_0000, 0x10));
    assert_eq!(regs.regs.pstate & 0x10, 0, "the handler runs in AArch64");
}

#[test]
fn a_delivery_whose_register_write_fails_leaves_the_vcpu_where_it_was() {
    let mut vm = Vm::new(1);
    vm.ready(0, PRIV_NORMAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.mark(0, 5);
    let before = vm.regs[0];
    let mut regs = Aarch32Narrowing {
        regs: before,
        fail_pc: true,
    };

    assert!(vm.sdei.dispatch_pending(0, &mut regs).is_err());

    assert_eq!(regs.regs, before, "registers put back");
    // Nothing was committed: the event is still there to deliver.
    assert!(vm.sdei.pending_dispatch(0));
    assert_eq!(vm.status(0, PRIV_NORMAL) & 4, 0, "not running");
}
