//! Individual calls: versions, unsupported identifiers, parameter validation, information
//! queries, resets, binding and features.

mod common;

use common::*;
use sdei_dispatch::abi::*;
use sdei_dispatch::config::EVENT_0;
use sdei_dispatch::{CallOutcome, InMemoryRegisters};

#[test]
fn version_reports_1_1_with_the_configured_vendor() {
    let mut vm = Vm::new(1);

    let version = vm.call(0, Function::Version, &[]) as u64;

    assert_eq!(version >> 48, 1, "Linux requires major version 1");
    assert_eq!((version >> 32) & 0xFFFF, 1);
    assert_eq!(version & 0xFFFF_FFFF, 0x5644_4D00);
}

#[test]
fn smc32_aliases_and_reserved_smc64_ids_answer_not_supported() {
    // Rule: SDEI is SMC64 only; 0xC4000033-0xC400003F are reserved.
    let mut vm = Vm::new(1);
    for id in (SMC32_BASE..=SMC32_LAST).chain(0xC400_0033..=SMC64_LAST) {
        vm.regs[0] = InMemoryRegisters::call(id, &[0, 0, 0]);
        assert_eq!(
            vm.sdei.handle_call(0, &mut vm.regs[0]).unwrap(),
            CallOutcome::Returned(NOT_SUPPORTED)
        );
        assert_eq!(vm.regs[0].ret(), NOT_SUPPORTED);
    }
}

#[test]
fn other_function_ids_are_not_touched() {
    let mut vm = Vm::new(1);
    let before = InMemoryRegisters::call(0x8400_0000, &[1, 2]); // PSCI_VERSION
    vm.regs[0] = before;

    let outcome = vm.sdei.handle_call(0, &mut vm.regs[0]).unwrap();

    assert_eq!(outcome, CallOutcome::NotSdei);
    assert_eq!(vm.regs[0], before);
}

#[test]
fn upper_half_of_w0_and_of_event_numbers_is_ignored() {
    // Rule: the function ID is in w0; 32-bit parameters ignore bits [63:32] (as TF-A does).
    let mut vm = Vm::new(1);
    vm.regs[0] = InMemoryRegisters::call(
        Function::EventStatus.id(),
        &[(1 << 32) | u64::from(EVENT_0)],
    );
    vm.regs[0].x[0] |= 0xFFFF_FFFF_0000_0000;
    assert_eq!(
        vm.sdei.handle_call(0, &mut vm.regs[0]).unwrap(),
        CallOutcome::Returned(0)
    );
}

#[test]
fn linux_probe_sequence_succeeds() {
    // drivers/firmware/arm_sdei.c: VERSION (major 1), PRIVATE_RESET on every CPU,
    // SHARED_RESET, then PE_UNMASK on every CPU; all must succeed.
    let mut vm = Vm::new(4);
    assert_eq!(vm.call(0, Function::Version, &[]) as u64 >> 48, 1);
    for cpu in 0..4 {
        assert_eq!(vm.call(cpu, Function::PrivateReset, &[]), SUCCESS);
    }
    assert_eq!(vm.call(0, Function::SharedReset, &[]), SUCCESS);
    for cpu in 0..4 {
        assert_eq!(vm.unmask(cpu), SUCCESS);
        assert_eq!(vm.sdei.is_masked(cpu), Some(false));
    }
}

#[test]
fn unknown_event_numbers_are_invalid_parameters_for_every_event_call() {
    // Rule: a call naming an event that does not exist answers INVALID_PARAMETERS.
    let mut vm = Vm::new(1);
    for bad in [
        1u64,
        0x00FF_FFFF,
        0x0100_0004,
        0x0200_0001,
        0x0201_0001,
        0x7FFF_FFFF,
        0xFFFF_FFFF,
    ] {
        assert_eq!(
            vm.call(0, Function::EventRegister, &[bad, HANDLER, 0, 0, 0]),
            INVALID_PARAMETERS
        );
        for call in [
            Function::EventEnable,
            Function::EventDisable,
            Function::EventUnregister,
            Function::EventStatus,
            Function::InterruptRelease,
        ] {
            assert_eq!(
                vm.call(0, call, &[bad]),
                INVALID_PARAMETERS,
                "{call:?} {bad:#x}"
            );
        }
        assert_eq!(
            vm.call(0, Function::EventGetInfo, &[bad, 0]),
            INVALID_PARAMETERS
        );
        assert_eq!(
            vm.call(0, Function::EventRoutingSet, &[bad, 0, 0]),
            INVALID_PARAMETERS
        );
        assert_eq!(
            vm.call(0, Function::EventSignal, &[bad, 0]),
            INVALID_PARAMETERS
        );
    }
}

#[test]
fn register_validates_entry_point_flags_and_affinity() {
    let mut vm = Vm::new(2);
    let e = u64::from(SHARED_NORMAL);
    // Entry point 0 is invalid.
    assert_eq!(
        vm.call(0, Function::EventRegister, &[e, 0, 0, 0, 0]),
        INVALID_PARAMETERS
    );
    // Reserved flag bits, and relative mode (FEATURES(RELATIVE_MODE) = 0), are invalid.
    assert_eq!(
        vm.call(0, Function::EventRegister, &[e, HANDLER, 0, 4, 0]),
        INVALID_PARAMETERS
    );
    assert_eq!(
        vm.call(
            0,
            Function::EventRegister,
            &[e, HANDLER, 0, REGISTER_FLAG_RELATIVE, 0]
        ),
        INVALID_PARAMETERS
    );
    // RM_PE to an affinity no vCPU has is invalid for a shared event.
    assert_eq!(vm.register_pe(0, SHARED_NORMAL, 0x100), INVALID_PARAMETERS);
    assert_eq!(vm.status(0, SHARED_NORMAL), 0);
    // For a private event routing and affinity are ignored.
    assert_eq!(vm.register_pe(0, PRIV_NORMAL, 0x100), SUCCESS);
    // A valid RM_PE registration of a shared event.
    assert_eq!(vm.register_pe(0, SHARED_NORMAL, 1), SUCCESS);
    assert_eq!(
        vm.call(
            0,
            Function::EventGetInfo,
            &[e, u64::from(INFO_EV_ROUTING_AFF)]
        ),
        1
    );
}

#[test]
fn get_info_reports_type_signalling_priority_and_routing() {
    let mut vm = Vm::new(2);
    let info = |vm: &mut Vm, event: u32, query: u32| {
        vm.call(
            0,
            Function::EventGetInfo,
            &[u64::from(event), u64::from(query)],
        )
    };
    assert_eq!(info(&mut vm, EVENT_0, INFO_EV_TYPE), 0);
    assert_eq!(info(&mut vm, SHARED_NORMAL, INFO_EV_TYPE), 1);
    assert_eq!(
        info(&mut vm, EVENT_0, INFO_EV_SIGNALED),
        0,
        "event 0 can be signalled: 0, as TF-A and the SDEI ACS read the query"
    );
    assert_eq!(info(&mut vm, PRIV_NORMAL, INFO_EV_SIGNALED), 1);
    assert_eq!(info(&mut vm, SHARED_NORMAL, INFO_EV_SIGNALED), 1);
    assert_eq!(info(&mut vm, PRIV_CRITICAL, INFO_EV_PRIORITY), 1);
    assert_eq!(info(&mut vm, EVENT_0, INFO_EV_PRIORITY), 0);
    assert_eq!(
        info(&mut vm, SHARED_NORMAL, 5),
        INVALID_PARAMETERS,
        "unknown query"
    );
    // Routing affinity: denied while unregistered, invalid for RM_ANY.
    assert_eq!(info(&mut vm, SHARED_NORMAL, INFO_EV_ROUTING_AFF), DENIED);
    assert_eq!(vm.register(0, SHARED_NORMAL, 0), SUCCESS);
    assert_eq!(info(&mut vm, SHARED_NORMAL, INFO_EV_ROUTING_MODE), 0);
    assert_eq!(
        info(&mut vm, SHARED_NORMAL, INFO_EV_ROUTING_AFF),
        INVALID_PARAMETERS
    );
    assert_eq!(
        info(&mut vm, PRIV_NORMAL, INFO_EV_ROUTING_AFF),
        INVALID_PARAMETERS
    );
}

#[test]
fn routing_set_follows_its_rules() {
    let mut vm = Vm::new(2);
    let e = u64::from(SHARED_NORMAL);
    assert_eq!(vm.register(0, SHARED_NORMAL, 0), SUCCESS);
    // Invalid flags and unknown affinity are INVALID_PARAMETERS.
    assert_eq!(
        vm.call(0, Function::EventRoutingSet, &[e, 2, 0]),
        INVALID_PARAMETERS
    );
    assert_eq!(
        vm.call(0, Function::EventRoutingSet, &[e, 1, 0x55]),
        INVALID_PARAMETERS
    );
    // Registered, disabled, not running: allowed, and the routing changes.
    assert_eq!(vm.call(0, Function::EventRoutingSet, &[e, 1, 1]), SUCCESS);
    assert_eq!(
        vm.call(
            0,
            Function::EventGetInfo,
            &[e, u64::from(INFO_EV_ROUTING_MODE)]
        ),
        1
    );
    // Enabled: denied, routing unchanged.
    assert_eq!(vm.enable(0, SHARED_NORMAL), SUCCESS);
    assert_eq!(vm.call(0, Function::EventRoutingSet, &[e, 0, 0]), DENIED);
    assert_eq!(
        vm.call(
            0,
            Function::EventGetInfo,
            &[e, u64::from(INFO_EV_ROUTING_AFF)]
        ),
        1
    );
}

#[test]
fn context_parameter_past_x17_is_invalid_and_outside_a_handler_denied() {
    let mut vm = Vm::new(1);
    assert_eq!(
        vm.call(0, Function::EventContext, &[18]),
        INVALID_PARAMETERS
    );
    assert_eq!(vm.call(0, Function::EventContext, &[17]), DENIED);
    assert_eq!(vm.call(0, Function::EventComplete, &[0]), DENIED);
    assert_eq!(
        vm.call(0, Function::EventCompleteAndResume, &[0x1000]),
        DENIED
    );
}

#[test]
fn pe_mask_reports_whether_it_changed_anything() {
    // Every vCPU starts masked, so the first PE_MASK changes nothing (0).
    let mut vm = Vm::new(1);
    assert_eq!(vm.call(0, Function::PeMask, &[]), 0);
    assert_eq!(vm.unmask(0), SUCCESS);
    assert_eq!(vm.call(0, Function::PeMask, &[]), 1);
    assert_eq!(vm.call(0, Function::PeMask, &[]), 0);
}

#[test]
fn features_reports_bind_slots_and_no_relative_mode() {
    let mut vm = Vm::new(1);
    // Private slots in bits [15:0], shared slots in [31:16].
    assert_eq!(
        vm.call(0, Function::Features, &[u64::from(FEATURE_BIND_SLOTS)]),
        1 | (1 << 16)
    );
    assert_eq!(
        vm.call(0, Function::Features, &[u64::from(FEATURE_RELATIVE_MODE)]),
        0
    );
    assert_eq!(vm.call(0, Function::Features, &[2]), INVALID_PARAMETERS);
    let mut config = config(1);
    config.bind_slots.private = 3;
    config.bind_slots.shared = 5;
    let mut vm = Vm::with_config(config);
    assert_eq!(vm.call(0, Function::Features, &[0]), 3 | (5 << 16));
}

#[test]
fn bind_creates_events_for_owned_interrupts_only() {
    let mut vm = Vm::new(2);
    let bind = |vm: &mut Vm, intid: u64| vm.call(0, Function::InterruptBind, &[intid]);
    // SGIs and special INTIDs are invalid; valid interrupts the VMM does not own are denied.
    assert_eq!(bind(&mut vm, 5), INVALID_PARAMETERS);
    assert_eq!(bind(&mut vm, 1023), INVALID_PARAMETERS);
    assert_eq!(bind(&mut vm, 27), DENIED);
    assert_eq!(bind(&mut vm, 100), DENIED);
    // A PPI gets a private event, an SPI a shared one; binding again returns the same event.
    assert_eq!(
        bind(&mut vm, u64::from(BINDABLE_PPI)),
        i64::from(PRIV_SLOT0)
    );
    assert_eq!(
        bind(&mut vm, u64::from(BINDABLE_PPI)),
        i64::from(PRIV_SLOT0)
    );
    assert_eq!(
        bind(&mut vm, u64::from(BINDABLE_SPI)),
        i64::from(SHARED_SLOT0)
    );
    let info = vm.call(
        0,
        Function::EventGetInfo,
        &[u64::from(SHARED_SLOT0), u64::from(INFO_EV_TYPE)],
    );
    assert_eq!(info, 1);
    // One slot of each kind: the next owned interrupt finds none.
    assert_eq!(bind(&mut vm, 24), OUT_OF_RESOURCE);
    assert_eq!(bind(&mut vm, 41), OUT_OF_RESOURCE);
}

#[test]
fn release_frees_the_slot_only_when_unregistered_everywhere() {
    let mut vm = Vm::new(2);
    let e = u64::from(PRIV_SLOT0);
    // Releasing an unbound slot or a declared event is invalid.
    assert_eq!(
        vm.call(0, Function::InterruptRelease, &[e]),
        INVALID_PARAMETERS
    );
    assert_eq!(
        vm.call(0, Function::InterruptRelease, &[u64::from(PRIV_NORMAL)]),
        INVALID_PARAMETERS
    );
    // Registering an unbound slot is denied.
    assert_eq!(vm.register(0, PRIV_SLOT0, 0), DENIED);
    assert_eq!(
        vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_PPI)]),
        e as i64
    );
    // Registered on vCPU 1 only: release from vCPU 0 is still denied.
    assert_eq!(vm.register(1, PRIV_SLOT0, 0), SUCCESS);
    assert_eq!(vm.call(0, Function::InterruptRelease, &[e]), DENIED);
    assert_eq!(vm.call(1, Function::EventUnregister, &[e]), SUCCESS);
    assert_eq!(vm.call(0, Function::InterruptRelease, &[e]), SUCCESS);
    assert_eq!(
        vm.call(0, Function::InterruptRelease, &[e]),
        INVALID_PARAMETERS
    );
    // The slot is free again, for another owned PPI.
    assert_eq!(vm.call(0, Function::InterruptBind, &[24]), e as i64);
}

#[test]
fn bound_interrupt_raises_its_event() {
    let mut vm = Vm::new(2);
    assert_eq!(
        vm.sdei.raise_interrupt(BINDABLE_SPI, None).unwrap(),
        sdei_dispatch::RaiseOutcome::NotBound
    );
    vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_SPI)]);
    vm.ready(1, SHARED_SLOT0);

    assert_eq!(
        vm.sdei.raise_interrupt(BINDABLE_SPI, None).unwrap(),
        sdei_dispatch::RaiseOutcome::Pending
    );

    assert_eq!(vm.dispatch(1).map(|d| d.event), Some(SHARED_SLOT0));
}

#[test]
fn shared_reset_unregisters_shared_events_and_releases_every_binding() {
    let mut vm = Vm::new(2);
    vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_PPI)]);
    vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_SPI)]);
    assert_eq!(vm.register(0, SHARED_SLOT0, 0), SUCCESS);
    assert_eq!(vm.register(1, SHARED_NORMAL, 0), SUCCESS);

    assert_eq!(vm.call(0, Function::SharedReset, &[]), SUCCESS);

    assert_eq!(vm.status(0, SHARED_NORMAL), 0);
    assert_eq!(
        vm.register(0, SHARED_SLOT0, 0),
        DENIED,
        "slot no longer bound"
    );
    assert_eq!(
        vm.register(0, PRIV_SLOT0, 0),
        DENIED,
        "private slot released too"
    );
}

#[test]
fn private_reset_only_touches_the_calling_vcpu() {
    let mut vm = Vm::new(2);
    vm.register(0, PRIV_NORMAL, 0);
    vm.register(1, PRIV_NORMAL, 0);
    vm.register(1, SHARED_NORMAL, 0);

    assert_eq!(vm.call(1, Function::PrivateReset, &[]), SUCCESS);

    assert_eq!(vm.status(1, PRIV_NORMAL), 0);
    assert_eq!(vm.status(0, PRIV_NORMAL), 1);
    assert_eq!(vm.status(1, SHARED_NORMAL), 1);
}

#[test]
fn event_signal_needs_event_0_and_a_known_target() {
    let mut vm = Vm::new(2);
    assert_eq!(
        vm.call(0, Function::EventSignal, &[u64::from(PRIV_NORMAL), 1]),
        INVALID_PARAMETERS
    );
    assert_eq!(
        vm.call(0, Function::EventSignal, &[0, 0x200]),
        INVALID_PARAMETERS
    );
    // Target that has not registered event 0: refused, and nothing is left pending.
    assert_eq!(
        vm.call(0, Function::EventSignal, &[0, 1]),
        INVALID_PARAMETERS
    );
    vm.ready(1, EVENT_0);
    assert!(!vm.sdei.pending_dispatch(1));
    // Target with a handler: delivered there, not on the caller.
    assert_eq!(vm.call(0, Function::EventSignal, &[0, 1]), SUCCESS);
    vm.unmask(0);
    assert!(vm.dispatch(0).is_none());
    assert_eq!(vm.dispatch(1).map(|d| d.event), Some(EVENT_0));
    assert_eq!(vm.regs[1].x[0], 0);
}
