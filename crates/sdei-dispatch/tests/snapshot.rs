//! `Dispatcher::state` / `Dispatcher::restore`: round trips, refusal of unreachable states, and
//! the memory footprint reported in the README.

mod common;

use common::*;
use sdei_dispatch::abi::Function;
use sdei_dispatch::state::{HandlerFrame, Routing, SavedContext};
use sdei_dispatch::{Dispatcher, DispatcherConfig, DispatcherState, HandlerState, RestoreError};

/// A busy VM: nested handlers on vCPU 0, a shared handler on vCPU 1 with an unregister
/// pending, bindings, pending events and a masked vCPU.
fn busy() -> Vm {
    let mut vm = Vm::new(3);
    vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_PPI)]);
    vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_SPI)]);
    vm.ready(0, PRIV_NORMAL);
    vm.ready(0, PRIV_CRITICAL);
    vm.sdei.raise(PRIV_NORMAL, Some(0)).unwrap();
    vm.mark(0, 1);
    vm.dispatch(0).unwrap();
    vm.sdei.raise(PRIV_CRITICAL, Some(0)).unwrap();
    vm.dispatch(0).unwrap();
    vm.register_pe(1, SHARED_NORMAL, 1);
    vm.enable(1, SHARED_NORMAL);
    vm.unmask(1);
    vm.sdei.raise(SHARED_NORMAL, None).unwrap();
    vm.dispatch(1).unwrap();
    vm.call(2, Function::EventUnregister, &[u64::from(SHARED_NORMAL)]);
    vm.register(2, PRIV_SLOT0, 0);
    vm.sdei.raise(PRIV_SLOT0, Some(2)).unwrap();
    vm.register(2, SHARED_SLOT0, 0);
    vm
}

fn restore(state: DispatcherState) -> Result<Dispatcher, RestoreError> {
    Dispatcher::restore(config(3), state)
}

#[test]
fn restored_dispatcher_continues_where_the_original_was() {
    let mut original = busy();
    let state = original.sdei.state();

    let mut copy = Vm {
        sdei: restore(state.clone()).unwrap(),
        regs: original.regs.clone(),
    };

    assert_eq!(copy.sdei.state(), state);
    for vm in [&mut original, &mut copy] {
        assert!(matches!(
            vm.complete(0),
            sdei_dispatch::CallOutcome::Completed {
                event: PRIV_CRITICAL,
                ..
            }
        ));
        vm.complete(1);
        assert_eq!(
            vm.status(0, SHARED_NORMAL),
            0,
            "pending unregister finished"
        );
    }
    assert_eq!(original.regs, copy.regs);
    assert_eq!(original.sdei.state(), copy.sdei.state());
}

#[test]
fn restore_refuses_a_different_configuration() {
    let state = busy().sdei.state();
    assert_eq!(
        Dispatcher::restore(config(2), state).err(),
        Some(RestoreError::ConfigMismatch)
    );
    let mut bad = config(3);
    bad.vcpus = 0;
    assert!(matches!(
        Dispatcher::restore(bad, busy().sdei.state()),
        Err(RestoreError::Config(_))
    ));
}

/// Applies `tamper` to a busy state and expects `restore` to refuse it with `expected`.
fn refused(tamper: impl FnOnce(&mut DispatcherState), expected: RestoreError) {
    let mut state = busy().sdei.state();
    tamper(&mut state);
    assert_eq!(restore(state).err(), Some(expected));
}

#[test]
fn restore_refuses_tables_of_the_wrong_shape() {
    refused(
        |s| {
            s.vcpus.pop();
        },
        RestoreError::Shape("vCPU table"),
    );
    refused(
        |s| {
            s.vcpus[1].private_events.pop();
        },
        RestoreError::Shape("private event table"),
    );
    refused(
        |s| s.vcpus[1].private_events[1].number = 77,
        RestoreError::Shape("private event table"),
    );
    refused(
        |s| {
            s.shared_events.pop();
        },
        RestoreError::Shape("shared event table"),
    );
    refused(
        |s| s.shared_bindings.push(None),
        RestoreError::Shape("bind slot table"),
    );
}

#[test]
fn restore_refuses_states_the_state_machine_cannot_reach() {
    let event = PRIV_NORMAL;
    // Enabled but not registered.
    refused(
        |s| s.vcpus[1].private_events[1].state = HandlerState::new(false, true, false),
        RestoreError::EventState { event },
    );
    // Registered without an entry point; unregistered with stale handler data.
    refused(
        |s| s.vcpus[0].private_events[1].entry_point = 0,
        RestoreError::EventState { event },
    );
    refused(
        |s| s.vcpus[1].private_events[1].argument = 5,
        RestoreError::EventState { event },
    );
    // Pending while unregistered.
    refused(
        |s| s.vcpus[1].private_events[1].pending = true,
        RestoreError::EventState { event },
    );
    // Shared running flag without a vCPU running it.
    refused(
        |s| s.shared_events[0].running_on = None,
        RestoreError::EventState {
            event: SHARED_NORMAL,
        },
    );
}

#[test]
fn restore_refuses_running_handlers_without_matching_frames() {
    // Running event with no frame.
    refused(
        |s| s.vcpus[0].critical = None,
        RestoreError::Frames { vcpu: 0 },
    );
    // Frame for an event that is not running there.
    let stray = HandlerFrame {
        event: PRIV_NORMAL,
        context: SavedContext::default(),
    };
    refused(
        move |s| s.vcpus[2].normal = Some(stray),
        RestoreError::Frames { vcpu: 2 },
    );
    // Frames in the wrong priority slot.
    refused(
        |s| s.vcpus[0].normal = s.vcpus[0].critical,
        RestoreError::Frames { vcpu: 0 },
    );
    // Frame naming an event that does not exist.
    refused(
        |s| s.vcpus[0].critical.as_mut().unwrap().event = 0x0300_0000,
        RestoreError::Frames { vcpu: 0 },
    );
    // Shared event claiming to run on another vCPU.
    refused(
        |s| s.shared_events[0].running_on = Some(2),
        RestoreError::Frames { vcpu: 1 },
    );
}

#[test]
fn restore_refuses_inconsistent_bindings_and_routing() {
    // Slot in use while unbound.
    refused(
        |s| s.private_bindings[0] = None,
        RestoreError::Binding { event: PRIV_SLOT0 },
    );
    // Interrupt not offered, wrong kind for the slot, or bound twice.
    refused(
        |s| s.shared_bindings[0] = Some(99),
        RestoreError::Binding {
            event: SHARED_SLOT0,
        },
    );
    refused(
        |s| s.shared_bindings[0] = Some(24),
        RestoreError::Binding {
            event: SHARED_SLOT0,
        },
    );
    let mut config = config(3);
    config.bind_slots.shared = 2;
    let mut state = Dispatcher::new(config.clone()).unwrap().state();
    state.shared_bindings = vec![Some(40), Some(40)];
    assert_eq!(
        Dispatcher::restore(config, state).err(),
        Some(RestoreError::Binding {
            event: SHARED_SLOT0
        })
    );
    // RM_PE to an affinity no vCPU has; routing kept on an unregistered event.
    refused(
        |s| s.shared_events[2].routing = Routing::Pe(0x40),
        RestoreError::Routing {
            event: SHARED_SLOT0,
        },
    );
    refused(
        |s| s.shared_events[1].routing = Routing::Pe(1),
        RestoreError::Routing {
            event: SHARED_CRITICAL,
        },
    );
}

#[test]
fn memory_footprint_grows_with_vcpus_and_events() {
    // Sizes reported in the README (printed with --nocapture).
    let footprint = |vcpus: usize, events: usize| {
        let mut config = DispatcherConfig::new(vcpus);
        config.events = (0..events as u32)
            .map(|i| sdei_dispatch::EventDecl {
                number: 0x0100_0000 + i,
                kind: if i % 2 == 0 {
                    sdei_dispatch::EventKind::Private
                } else {
                    sdei_dispatch::EventKind::Shared
                },
                priority: sdei_dispatch::Priority::Normal,
            })
            .collect();
        Dispatcher::new(config).unwrap().memory_footprint()
    };
    println!(
        "size_of::<Dispatcher>() = {}",
        core::mem::size_of::<Dispatcher>()
    );
    println!(
        "size_of::<EventEntry>() = {}",
        core::mem::size_of::<sdei_dispatch::state::EventEntry>()
    );
    println!(
        "size_of::<VcpuState>() = {}",
        core::mem::size_of::<sdei_dispatch::state::VcpuState>()
    );
    println!(
        "size_of::<SharedEvent>() = {}",
        core::mem::size_of::<sdei_dispatch::state::SharedEvent>()
    );
    for (vcpus, events) in [(1, 0), (4, 8), (8, 8), (64, 16), (512, 32)] {
        println!(
            "N = {vcpus} vCPUs, M = {events} events: {} bytes",
            footprint(vcpus, events)
        );
    }
    assert!(footprint(4, 8) < footprint(8, 8));
    assert!(footprint(8, 8) < footprint(8, 16));
    assert_eq!(
        footprint(8, 8) - footprint(4, 8),
        4 * (core::mem::size_of::<sdei_dispatch::state::VcpuState>()
            + 5 * core::mem::size_of::<sdei_dispatch::state::EventEntry>()
            + core::mem::size_of::<u64>()),
        "per vCPU: its state, its 5 private entries (event 0 + 4 declared), its MPIDR"
    );
}

#[test]
fn restore_refuses_a_running_shared_event_routed_to_another_vcpu() {
    // Rule: routing only changes while an event is registered, disabled and not running, so a
    // registered shared handler always runs on the vCPU it is routed to.
    let mut vm = Vm::new(3);
    assert_eq!(vm.register_pe(1, SHARED_NORMAL, 1), 0);
    assert_eq!(vm.enable(1, SHARED_NORMAL), 0);
    vm.unmask(1);
    vm.sdei.raise(SHARED_NORMAL, None).unwrap();
    vm.dispatch(1).unwrap();
    let good = vm.sdei.state();
    assert!(restore(good.clone()).is_ok());
    let mut bad = good;
    bad.shared_events[0].routing = Routing::Pe(2);
    assert_eq!(
        restore(bad).err(),
        Some(RestoreError::Routing {
            event: SHARED_NORMAL
        })
    );
}
