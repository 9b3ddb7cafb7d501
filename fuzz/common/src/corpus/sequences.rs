//! Seeds of `sdei_sequences`: SDEI sequences that register, enable, raise, dispatch and
//! complete handlers, nest them, bind interrupts, reset and migrate.

use sdei_dispatch::abi::Function;
use sdei_dispatch::config::{default_mpidr, PRIVATE_BIND_BASE, SHARED_BIND_BASE};

use super::Seed;
use crate::sdei::harness::{HANDLER, SHARED_CRITICAL};
use crate::sdei::input::ARG_VALUES;
use crate::sdei::{encode_ops, Arg, Op};

fn arg(value: u64) -> Arg {
    match ARG_VALUES.iter().position(|v| *v == value) {
        Some(i) => Arg::Table(i as u8),
        None => Arg::Raw(value),
    }
}

fn call(vcpu: usize, function: Function, args: &[u64]) -> Op {
    let mut all = [Arg::Table(8); 5]; // ARG_VALUES[8] = 0.
    for (slot, value) in all.iter_mut().zip(args) {
        *slot = arg(*value);
    }
    Op::Call {
        vcpu,
        function: Function::ALL
            .iter()
            .position(|f| *f == function)
            .expect("every function is in ALL"),
        args: all,
    }
}

fn ready(vcpu: usize, event: usize) -> Op {
    Op::Ready { vcpu, event }
}

fn raise(event: usize, target: Option<usize>) -> Op {
    Op::Raise { event, target }
}

fn dispatch(vcpu: usize) -> Op {
    Op::Dispatch { vcpu }
}

fn complete(vcpu: usize) -> Op {
    Op::Complete { vcpu, resume: None }
}

/// The seed sequences, by name. Event indices are into `harness::EVENTS`: 0 is event 0,
/// 1/2 private normal/critical, 3/4 shared normal/critical, 5/6 the private/shared bind slots.
pub fn sdei_sequence_ops() -> Vec<(&'static str, Vec<Op>)> {
    use Function::*;
    let shared_critical = u64::from(SHARED_CRITICAL);
    let run = |vcpu, seed| Op::Run { vcpu, seed };
    vec![
        (
            "version-and-features",
            vec![
                call(0, Version, &[]),
                call(0, Features, &[0]),
                call(0, Features, &[1]),
                call(0, Features, &[2]),
            ],
        ),
        (
            "private-normal-runs",
            vec![
                run(0, 0x1111),
                ready(0, 1),
                raise(1, Some(0)),
                dispatch(0),
                call(0, EventContext, &[0]),
                call(0, EventContext, &[3]),
                complete(0),
            ],
        ),
        (
            "nested-critical-resume",
            vec![
                ready(0, 1),
                ready(0, 2),
                raise(1, Some(0)),
                dispatch(0),
                run(0, 0x2222),
                raise(2, Some(0)),
                dispatch(0),
                Op::Complete {
                    vcpu: 0,
                    resume: Some(0x4000_9000),
                },
                complete(0),
            ],
        ),
        (
            "shared-any",
            vec![
                ready(1, 3),
                raise(3, None),
                dispatch(2),
                dispatch(1),
                dispatch(0),
                complete(1),
            ],
        ),
        (
            "shared-routed-to-one-pe",
            vec![
                call(
                    2,
                    EventRegister,
                    &[shared_critical, HANDLER, 7, 1, default_mpidr(2)],
                ),
                call(2, EventEnable, &[shared_critical]),
                call(2, PeUnmask, &[]),
                call(0, PeUnmask, &[]),
                raise(4, None),
                dispatch(0),
                dispatch(2),
                call(2, EventGetInfo, &[shared_critical, 4]),
                complete(2),
                call(2, EventDisable, &[shared_critical]),
                call(2, EventRoutingSet, &[shared_critical, 0, 0]),
            ],
        ),
        (
            "shared-routed-pending",
            vec![
                call(
                    1,
                    EventRegister,
                    &[shared_critical, HANDLER, 9, 1, default_mpidr(1)],
                ),
                call(1, EventEnable, &[shared_critical]),
                raise(4, None),
            ],
        ),
        (
            "interrupt-bind-ppi",
            vec![
                call(0, InterruptBind, &[23]),
                ready(0, 5),
                Op::RaiseInterrupt {
                    intid: 0,
                    target: Some(0),
                },
                dispatch(0),
                complete(0),
                call(0, EventUnregister, &[u64::from(PRIVATE_BIND_BASE)]),
                call(0, InterruptRelease, &[u64::from(PRIVATE_BIND_BASE)]),
            ],
        ),
        (
            "interrupt-bind-spi",
            vec![
                call(1, InterruptBind, &[40]),
                ready(1, 6),
                Op::RaiseInterrupt {
                    intid: 2,
                    target: None,
                },
                Op::RaiseInterrupt {
                    intid: 4,
                    target: None,
                },
                dispatch(1),
                complete(1),
                call(1, EventUnregister, &[u64::from(SHARED_BIND_BASE)]),
                call(1, InterruptRelease, &[u64::from(SHARED_BIND_BASE)]),
            ],
        ),
        (
            "unregister-while-running",
            vec![
                ready(0, 1),
                raise(1, Some(0)),
                dispatch(0),
                call(0, EventUnregister, &[0x0100_0000]),
                call(0, EventStatus, &[0x0100_0000]),
                complete(0),
                call(0, EventStatus, &[0x0100_0000]),
            ],
        ),
        (
            "event-signal",
            vec![
                ready(1, 0),
                call(1, EventSignal, &[0, default_mpidr(1)]),
                dispatch(1),
                complete(1),
            ],
        ),
        (
            "disable-and-unregister-while-running",
            vec![
                ready(0, 1),
                raise(1, Some(0)),
                dispatch(0),
                call(0, EventDisable, &[0x0100_0000]),
                call(0, EventContext, &[1]),
                call(0, EventEnable, &[0x0100_0000]),
                call(0, EventDisable, &[0x0100_0000]),
                call(0, EventUnregister, &[0x0100_0000]),
                call(0, EventEnable, &[0x0100_0000]),
                call(0, EventDisable, &[0x0100_0000]),
                call(0, EventRegister, &[0x0100_0000, HANDLER, 0, 0, 0]),
                call(0, EventGetInfo, &[0x0100_0000, 1]),
                complete(0),
                call(0, EventStatus, &[0x0100_0000]),
            ],
        ),
        (
            "mask-while-pending",
            vec![
                ready(1, 1),
                call(1, PeMask, &[]),
                raise(1, Some(1)),
                dispatch(1),
                call(1, PeUnmask, &[]),
                dispatch(1),
                complete(1),
            ],
        ),
        (
            "disable-while-pending",
            vec![
                ready(2, 2),
                raise(2, Some(2)),
                call(2, EventDisable, &[0x0100_0001]),
                dispatch(2),
                call(2, EventEnable, &[0x0100_0001]),
                dispatch(2),
                complete(2),
            ],
        ),
        (
            "reset-vcpu-mid-handler",
            vec![
                ready(0, 1),
                ready(0, 3),
                raise(1, Some(0)),
                raise(3, None),
                dispatch(0),
                Op::ResetVcpu { vcpu: 0 },
                dispatch(0),
            ],
        ),
        (
            "migrate-mid-handler",
            vec![
                ready(2, 1),
                ready(2, 2),
                raise(1, Some(2)),
                dispatch(2),
                raise(2, Some(2)),
                dispatch(2),
                Op::Migrate,
                complete(2),
                complete(2),
            ],
        ),
        (
            "private-and-shared-reset",
            vec![
                ready(0, 1),
                ready(0, 3),
                call(0, PrivateReset, &[]),
                call(0, SharedReset, &[]),
                ready(1, 4),
                Op::Reset,
            ],
        ),
        (
            "get-info-every-event",
            (0..7u64)
                .flat_map(|e| {
                    (0..5).map(move |info| call(0, EventGetInfo, &[ARG_VALUES[e as usize], info]))
                })
                .collect(),
        ),
        (
            "invalid-vcpu",
            vec![
                call(3, Version, &[]),
                dispatch(3),
                Op::ResetVcpu { vcpu: 3 },
                raise(1, Some(3)),
                raise(3, Some(0)),
            ],
        ),
        (
            "raw-reserved-identifiers",
            (0x13..0x20u8)
                .flat_map(|offset| {
                    [false, true].map(|smc32| Op::Raw {
                        vcpu: 0,
                        offset,
                        smc32,
                        args: [1, 2, 3, 4, 5],
                    })
                })
                .collect(),
        ),
        (
            "bad-arguments",
            Function::ALL
                .iter()
                .flat_map(|f| {
                    [
                        call(1, *f, &[u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX]),
                        call(1, *f, &[0x1234, HANDLER, 0, 2, 0x8_0000_0001]),
                        call(1, *f, &[u64::from(SHARED_BIND_BASE), 0, 5, 1, 0]),
                        call(1, *f, &[u64::from(PRIVATE_BIND_BASE), HANDLER, 0, 0, 0]),
                    ]
                })
                .collect(),
        ),
        (
            "raise-edge-cases",
            vec![
                raise(1, None),
                raise(1, Some(0)),
                ready(0, 1),
                raise(1, Some(0)),
                raise(1, Some(0)),
                raise(3, Some(0)),
                Op::RaiseInterrupt {
                    intid: 1,
                    target: None,
                },
                Op::RaiseInterrupt {
                    intid: 3,
                    target: Some(1),
                },
            ],
        ),
        (
            "reset-vcpu-while-shared-runs",
            vec![
                ready(0, 3),
                raise(3, None),
                dispatch(0),
                Op::ResetVcpu { vcpu: 0 },
                call(0, EventStatus, &[0x0100_0002]),
            ],
        ),
        (
            "complete-without-handler",
            vec![
                complete(0),
                Op::Complete {
                    vcpu: 1,
                    resume: Some(0x1000),
                },
            ],
        ),
    ]
}

/// The sequences as encoded seed inputs.
pub fn sdei_sequence_seeds() -> Vec<Seed> {
    sdei_sequence_ops()
        .into_iter()
        .map(|(name, ops)| Seed::new("sdei_sequences", name, encode_ops(&ops)))
        .collect()
}
