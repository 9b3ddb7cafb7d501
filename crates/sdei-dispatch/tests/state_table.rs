//! Every state-dependent call in every handler state, with the architected return code.
//!
//! The expectations are the SDEI specification's handler state table (section 6.1; TF-A's
//! `sdei_state.c` is the reading used) and the per-call error lists: a call the table forbids
//! answers DENIED, except UNREGISTER of a running handler (PENDING, also when repeated), a
//! call naming an unusable event (INVALID_PARAMETERS), and ROUTING_SET / RELEASE on events they
//! do not apply to (INVALID_PARAMETERS).

mod common;

use common::*;
use sdei_dispatch::abi::{self, Function, DENIED, INVALID_PARAMETERS, PENDING, SUCCESS};
use sdei_dispatch::CallOutcome;

/// Handler states named as in TF-A: upper case = Running / Enabled / reGistered set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S {
    Unregistered,        // reg: unregistered
    Registered,          // reG: registered
    Enabled,             // rEG: registered, enabled
    Running,             // REG: registered, enabled, running
    RunningDisabled,     // ReG: registered, disabled, running
    RunningUnregistered, // Reg: unregistered while running (unregister pending)
}

const STATES: [S; 6] = [
    S::Unregistered,
    S::Registered,
    S::Enabled,
    S::Running,
    S::RunningDisabled,
    S::RunningUnregistered,
];
const SAVED_X0: u64 = 0x5A5A;

fn status_of(s: S) -> i64 {
    match s {
        S::Unregistered => 0b000,
        S::Registered => 0b001,
        S::Enabled => 0b011,
        S::Running => 0b111,
        S::RunningDisabled => 0b101,
        S::RunningUnregistered => 0b100,
    }
}

fn running(s: S) -> bool {
    matches!(s, S::Running | S::RunningDisabled | S::RunningUnregistered)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    Private,
    Shared,
    PrivateSlot,
    SharedSlot,
}

impl Variant {
    fn event(self) -> u32 {
        match self {
            Variant::Private => PRIV_NORMAL,
            Variant::Shared => SHARED_NORMAL,
            Variant::PrivateSlot => PRIV_SLOT0,
            Variant::SharedSlot => SHARED_SLOT0,
        }
    }
    fn shared(self) -> bool {
        matches!(self, Variant::Shared | Variant::SharedSlot)
    }
    fn slot(self) -> bool {
        matches!(self, Variant::PrivateSlot | Variant::SharedSlot)
    }
}

/// Builds a VM whose event `v` is in state `s` on vCPU 0.
fn enter(v: Variant, s: S) -> Vm {
    let mut vm = Vm::new(2);
    let event = v.event();
    let e = u64::from(event);
    match v {
        Variant::PrivateSlot => assert_eq!(
            vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_PPI)]),
            i64::from(event)
        ),
        Variant::SharedSlot => assert_eq!(
            vm.call(0, Function::InterruptBind, &[u64::from(BINDABLE_SPI)]),
            i64::from(event)
        ),
        _ => {}
    }
    if s != S::Unregistered {
        assert_eq!(vm.register(0, event, 7), SUCCESS);
    }
    if matches!(
        s,
        S::Enabled | S::Running | S::RunningDisabled | S::RunningUnregistered
    ) {
        assert_eq!(vm.enable(0, event), SUCCESS);
    }
    if running(s) {
        assert_eq!(vm.unmask(0), SUCCESS);
        let target = if v.shared() { None } else { Some(0) };
        vm.sdei.raise(event, target).unwrap();
        vm.regs[0].x[0] = SAVED_X0;
        assert_eq!(vm.dispatch(0).map(|d| d.event), Some(event));
    }
    match s {
        S::RunningDisabled => assert_eq!(vm.call(0, Function::EventDisable, &[e]), SUCCESS),
        S::RunningUnregistered => assert_eq!(vm.call(0, Function::EventUnregister, &[e]), PENDING),
        _ => {}
    }
    assert_eq!(vm.status(0, event), status_of(s), "setup of {v:?} {s:?}");
    vm
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Code(i64),
    Completed,
}

/// The expected result of `call` in state `s` and the state that follows.
fn expected(v: Variant, s: S, call: Function) -> (Expect, S, &'static str) {
    use Expect::*;
    use S::*;
    match call {
        Function::EventRegister => match s {
            Unregistered => (Code(SUCCESS), Registered, "REGISTER: reg -> reG"),
            _ => (
                Code(DENIED),
                s,
                "REGISTER: only from reg (Reg: unregister not finished)",
            ),
        },
        Function::EventEnable => match s {
            Registered | Enabled => (Code(SUCCESS), Enabled, "ENABLE: reG -> rEG, rEG unchanged"),
            Running | RunningDisabled => {
                (Code(SUCCESS), Running, "ENABLE: ReG -> REG, REG unchanged")
            }
            Unregistered | RunningUnregistered => {
                (Code(DENIED), s, "ENABLE: needs a registered handler")
            }
        },
        Function::EventDisable => match s {
            Registered | Enabled => (
                Code(SUCCESS),
                Registered,
                "DISABLE: rEG -> reG, reG unchanged",
            ),
            Running | RunningDisabled => (
                Code(SUCCESS),
                RunningDisabled,
                "DISABLE: REG -> ReG, ReG unchanged",
            ),
            Unregistered | RunningUnregistered => {
                (Code(DENIED), s, "DISABLE: needs a registered handler")
            }
        },
        Function::EventUnregister => match s {
            Unregistered => (Code(DENIED), s, "UNREGISTER: nothing registered"),
            Registered | Enabled => (Code(SUCCESS), Unregistered, "UNREGISTER: -> reg"),
            Running | RunningDisabled | RunningUnregistered => (
                Code(PENDING),
                RunningUnregistered,
                "UNREGISTER: running -> Reg, PENDING until completion",
            ),
        },
        Function::EventRoutingSet if !v.shared() => (
            Code(INVALID_PARAMETERS),
            s,
            "ROUTING_SET: private events have no routing",
        ),
        Function::EventRoutingSet => match s {
            Registered => (
                Code(SUCCESS),
                s,
                "ROUTING_SET: only registered, disabled, not running",
            ),
            _ => (Code(DENIED), s, "ROUTING_SET: denied in every other state"),
        },
        Function::InterruptRelease if !v.slot() => (
            Code(INVALID_PARAMETERS),
            s,
            "RELEASE: only bound (dynamic) events",
        ),
        Function::InterruptRelease => match s {
            Unregistered => (
                Code(SUCCESS),
                s,
                "RELEASE: allowed only when unregistered and not running",
            ),
            _ => (Code(DENIED), s, "RELEASE: registered or running"),
        },
        Function::EventContext => match s {
            Running | RunningDisabled | RunningUnregistered => (
                Code(SAVED_X0 as i64),
                s,
                "CONTEXT: allowed in every running state",
            ),
            _ => (Code(DENIED), s, "CONTEXT: only from a running handler"),
        },
        Function::EventComplete | Function::EventCompleteAndResume => match s {
            Running => (Completed, Enabled, "COMPLETE: REG -> rEG"),
            RunningDisabled => (Completed, Registered, "COMPLETE: ReG -> reG"),
            RunningUnregistered => (
                Completed,
                Unregistered,
                "COMPLETE: Reg -> reg, the pending unregister finishes",
            ),
            _ => (Code(DENIED), s, "COMPLETE: only from a running handler"),
        },
        Function::EventStatus => (
            Code(status_of(s)),
            s,
            "STATUS: bit 0 registered, 1 enabled, 2 running",
        ),
        Function::EventGetInfo if !v.shared() => (
            Code(INVALID_PARAMETERS),
            s,
            "GET_INFO(ROUTING_MODE): private event",
        ),
        Function::EventGetInfo => match s {
            Unregistered | RunningUnregistered => {
                (Code(DENIED), s, "GET_INFO(ROUTING_MODE): not registered")
            }
            _ => (Code(0), s, "GET_INFO(ROUTING_MODE): RM_ANY"),
        },
        Function::PrivateReset => match (v.shared(), s) {
            (false, Running | RunningDisabled | RunningUnregistered) => (
                Code(DENIED),
                RunningUnregistered,
                "PRIVATE_RESET: a running private handler makes it fail",
            ),
            (false, _) => (
                Code(SUCCESS),
                Unregistered,
                "PRIVATE_RESET: unregisters every private event",
            ),
            (true, _) => (Code(SUCCESS), s, "PRIVATE_RESET: shared events untouched"),
        },
        Function::SharedReset => match (v.shared(), s) {
            (true, Running | RunningDisabled | RunningUnregistered) => (
                Code(DENIED),
                RunningUnregistered,
                "SHARED_RESET: a running shared handler makes it fail",
            ),
            (true, _) => (
                Code(SUCCESS),
                Unregistered,
                "SHARED_RESET: unregisters every shared event",
            ),
            (false, Registered | Enabled | Running | RunningDisabled | RunningUnregistered)
                if v.slot() =>
            {
                (
                    Code(DENIED),
                    s,
                    "SHARED_RESET: a registered or running private slot cannot be released",
                )
            }
            (false, _) => (Code(SUCCESS), s, "SHARED_RESET: private events untouched"),
        },
        other => panic!("{other:?} is not state-dependent"),
    }
}

const CALLS: [Function; 13] = [
    Function::EventRegister,
    Function::EventEnable,
    Function::EventDisable,
    Function::EventUnregister,
    Function::EventRoutingSet,
    Function::InterruptRelease,
    Function::EventContext,
    Function::EventComplete,
    Function::EventCompleteAndResume,
    Function::EventStatus,
    Function::EventGetInfo,
    Function::PrivateReset,
    Function::SharedReset,
];

fn args(call: Function, event: u32) -> Vec<u64> {
    let e = u64::from(event);
    match call {
        Function::EventRegister => vec![e, HANDLER, 1, 0, 0],
        Function::EventRoutingSet => vec![e, 0, 0],
        Function::EventContext => vec![0],
        Function::EventComplete => vec![abi::SUCCESS as u64],
        Function::EventCompleteAndResume => vec![0x9000],
        Function::EventGetInfo => vec![e, u64::from(abi::INFO_EV_ROUTING_MODE)],
        Function::PrivateReset | Function::SharedReset => vec![],
        _ => vec![e],
    }
}

fn check(v: Variant) {
    for s in STATES {
        for call in CALLS {
            let mut vm = enter(v, s);
            let (expect, next, rule) = expected(v, s, call);
            let outcome = vm.outcome(0, call, &args(call, v.event()));
            let got = match outcome {
                CallOutcome::Returned(code) => Expect::Code(code),
                CallOutcome::Completed { event, .. } => {
                    assert_eq!(event, v.event());
                    Expect::Completed
                }
                CallOutcome::NotSdei => panic!("SDEI call not recognised"),
            };
            assert_eq!(got, expect, "{v:?} in {s:?}: {call:?} ({rule})");
            assert_eq!(
                vm.status(0, v.event()),
                status_of(next),
                "{v:?} in {s:?}: state after {call:?} ({rule})"
            );
        }
    }
}

#[test]
fn private_event_follows_the_state_table() {
    check(Variant::Private);
}

#[test]
fn shared_event_follows_the_state_table() {
    check(Variant::Shared);
}

#[test]
fn private_bind_slot_follows_the_state_table() {
    check(Variant::PrivateSlot);
}

#[test]
fn shared_bind_slot_follows_the_state_table() {
    check(Variant::SharedSlot);
}

#[test]
fn critical_events_follow_the_same_table() {
    // Rule: the state table does not depend on priority. Walk a critical event through
    // register, enable, dispatch, disable, unregister (PENDING) and completion.
    let mut vm = Vm::new(1);
    let e = u64::from(PRIV_CRITICAL);
    vm.ready(0, PRIV_CRITICAL);
    vm.sdei.raise(PRIV_CRITICAL, Some(0)).unwrap();
    assert!(vm.dispatch(0).is_some());
    assert_eq!(vm.status(0, PRIV_CRITICAL), 0b111);
    assert_eq!(vm.call(0, Function::EventDisable, &[e]), SUCCESS);
    assert_eq!(vm.call(0, Function::EventUnregister, &[e]), PENDING);
    assert_eq!(vm.call(0, Function::EventUnregister, &[e]), PENDING);
    assert_eq!(vm.register(0, PRIV_CRITICAL, 0), DENIED);
    assert!(matches!(vm.complete(0), CallOutcome::Completed { .. }));
    assert_eq!(vm.status(0, PRIV_CRITICAL), 0);
    assert_eq!(vm.register(0, PRIV_CRITICAL, 0), SUCCESS);
}
