//! The structured input of `sdei_sequences`: a list of [`Op`]s decoded from fuzzer bytes
//! with [`arbitrary`], and encoded back for the seed corpus.
//!
//! Byte layout of one op: a tag byte (taken modulo the number of kinds), then its fields in
//! order. A vCPU byte is taken modulo `VCPUS + 1` (the extra value is an index the
//! dispatcher must refuse); an event byte modulo the number of harness events. An argument
//! is a selector byte: below [`RAW_ARG`] it picks an entry of [`ARG_VALUES`] (modulo its
//! length), otherwise a little-endian `u64` follows. Missing bytes read as zero.
//!
//! What an op does is the step of the shared harness it converts into
//! (`sdei_dispatch::testing::Op`, through `From`).

use arbitrary::{Arbitrary, Unstructured};

use super::harness::{EVENTS, HANDLER, INTIDS, VCPUS};
use sdei_dispatch::abi::{Function, SMC32_BASE, SMC64_BASE};
use sdei_dispatch::testing::Op as Step;

/// Most ops one input runs (keeps a run short however long the input is).
pub const MAX_OPS: usize = 96;
/// Argument selector bytes from this value up are followed by a raw `u64`.
pub const RAW_ARG: u8 = 0xF0;
/// Arguments an SDEI call takes (x1–x5).
pub const ARGS: usize = 5;

/// Argument values worth trying more often than random ones: the harness's events, its
/// handler address, small numbers (routing modes, flags, register indices, slot numbers),
/// bindable and unbindable INTIDs and a few out-of-range values.
pub const ARG_VALUES: [u64; 32] = [
    EVENTS[0] as u64,
    EVENTS[1] as u64,
    EVENTS[2] as u64,
    EVENTS[3] as u64,
    EVENTS[4] as u64,
    EVENTS[5] as u64,
    EVENTS[6] as u64,
    HANDLER,
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    16,
    17,
    18,
    23,
    24,
    27,
    40,
    41,
    99,
    1023,
    0x100,
    0x8_0000_0001,
    0x0200_0001,
    0x0201_0001,
    u64::MAX,
];

/// One call argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// Index into [`ARG_VALUES`].
    Table(u8),
    /// Any value.
    Raw(u64),
}

impl Arg {
    /// The register value.
    pub fn value(self) -> u64 {
        match self {
            Arg::Table(i) => ARG_VALUES[usize::from(i) % ARG_VALUES.len()],
            Arg::Raw(v) => v,
        }
    }
}

/// One step of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The SDEI call `Function::ALL[function]` on `vcpu`.
    Call {
        /// Calling vCPU.
        vcpu: usize,
        /// Index into `Function::ALL`.
        function: usize,
        /// x1–x5.
        args: [Arg; ARGS],
    },
    /// A raw function identifier from the SDEI SMC64 or SMC32 range (reserved ones too).
    Raw {
        /// Calling vCPU.
        vcpu: usize,
        /// Offset in the range.
        offset: u8,
        /// SMC32 rather than SMC64.
        smc32: bool,
        /// x1–x5.
        args: [u64; ARGS],
    },
    /// `EVENT_REGISTER` (`RM_ANY`) with the harness handler, `EVENT_ENABLE`, `PE_UNMASK`.
    Ready {
        /// Calling vCPU.
        vcpu: usize,
        /// Index into the harness events.
        event: usize,
    },
    /// `Dispatcher::raise`.
    Raise {
        /// Index into the harness events.
        event: usize,
        /// Target vCPU (may be out of range).
        target: Option<usize>,
    },
    /// `Dispatcher::raise_interrupt`.
    RaiseInterrupt {
        /// Index into the harness INTIDs.
        intid: usize,
        /// Target vCPU (may be out of range).
        target: Option<usize>,
    },
    /// `Dispatcher::dispatch_pending`.
    Dispatch {
        /// vCPU taken out of `KVM_RUN`.
        vcpu: usize,
    },
    /// `EVENT_COMPLETE`, or `EVENT_COMPLETE_AND_RESUME` at the given address.
    Complete {
        /// Calling vCPU.
        vcpu: usize,
        /// Resume address.
        resume: Option<u64>,
    },
    /// `Dispatcher::reset_vcpu`.
    ResetVcpu {
        /// vCPU to reset.
        vcpu: usize,
    },
    /// `Dispatcher::reset`.
    Reset,
    /// Replaces the dispatcher by `Dispatcher::restore` of its own state (a migration).
    Migrate,
    /// The guest runs on: fills the registers of `vcpu` from `seed`.
    Run {
        /// vCPU that runs.
        vcpu: usize,
        /// Value the registers are derived from.
        seed: u64,
    },
}

const KINDS: u8 = 11;

impl From<Op> for Step {
    fn from(op: Op) -> Step {
        match op {
            Op::Call {
                vcpu,
                function,
                args,
            } => Step::Call {
                vcpu,
                function,
                args: args.map(Arg::value),
            },
            Op::Raw {
                vcpu,
                offset,
                smc32,
                args,
            } => {
                let base = if smc32 { SMC32_BASE } else { SMC64_BASE };
                let id = base + u32::from(offset % 0x20);
                Step::Raw { vcpu, id, args }
            }
            Op::Ready { vcpu, event } => Step::Ready { vcpu, event },
            Op::Raise { event, target } => Step::Raise { event, target },
            Op::RaiseInterrupt { intid, target } => Step::RaiseInterrupt {
                intid: INTIDS[intid % INTIDS.len()],
                target,
            },
            Op::Dispatch { vcpu } => Step::Dispatch { vcpu },
            Op::Complete { vcpu, resume } => Step::Complete { vcpu, resume },
            Op::ResetVcpu { vcpu } => Step::ResetVcpu { vcpu },
            Op::Reset => Step::Reset,
            Op::Migrate => Step::Migrate,
            Op::Run { vcpu, seed } => Step::SetRegs {
                vcpu,
                x: std::array::from_fn(|n| seed.rotate_left(n as u32 * 7) ^ n as u64),
                pc: seed & !3,
                // EL1h or EL0t with some NZCV and DAIF bits from the seed.
                pstate: (seed >> 32) & 0xF000_03C0 | if seed & 1 == 0 { 0x5 } else { 0 },
            },
        }
    }
}

fn vcpu(u: &mut Unstructured<'_>) -> arbitrary::Result<usize> {
    Ok(usize::from(u.arbitrary::<u8>()?) % (VCPUS + 1))
}

fn target(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<usize>> {
    let byte = u.arbitrary::<u8>()?;
    Ok((byte % 2 == 1).then_some(usize::from(byte >> 1) % (VCPUS + 1)))
}

fn arg(u: &mut Unstructured<'_>) -> arbitrary::Result<Arg> {
    let selector = u.arbitrary::<u8>()?;
    if selector < RAW_ARG {
        Ok(Arg::Table(selector))
    } else {
        Ok(Arg::Raw(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.arbitrary::<u8>()? % KINDS {
            0 => Op::Call {
                vcpu: vcpu(u)?,
                function: usize::from(u.arbitrary::<u8>()?) % Function::ALL.len(),
                args: [arg(u)?, arg(u)?, arg(u)?, arg(u)?, arg(u)?],
            },
            1 => Op::Raw {
                vcpu: vcpu(u)?,
                offset: u.arbitrary()?,
                smc32: u.arbitrary::<u8>()? % 2 == 1,
                args: u.arbitrary()?,
            },
            2 => Op::Ready {
                vcpu: vcpu(u)?,
                event: usize::from(u.arbitrary::<u8>()?) % EVENTS.len(),
            },
            3 => Op::Raise {
                event: usize::from(u.arbitrary::<u8>()?) % EVENTS.len(),
                target: target(u)?,
            },
            4 => Op::RaiseInterrupt {
                intid: usize::from(u.arbitrary::<u8>()?) % INTIDS.len(),
                target: target(u)?,
            },
            5 => Op::Dispatch { vcpu: vcpu(u)? },
            6 => Op::Complete {
                vcpu: vcpu(u)?,
                resume: match u.arbitrary::<u8>()? % 2 {
                    0 => None,
                    _ => Some(u.arbitrary()?),
                },
            },
            7 => Op::ResetVcpu { vcpu: vcpu(u)? },
            8 => Op::Reset,
            9 => Op::Migrate,
            _ => Op::Run {
                vcpu: vcpu(u)?,
                seed: u.arbitrary()?,
            },
        })
    }
}

/// Decodes a sequence: ops until the input runs out, at most [`MAX_OPS`].
pub fn decode_ops(data: &[u8]) -> Vec<Op> {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

fn put_arg(out: &mut Vec<u8>, arg: Arg) {
    match arg {
        Arg::Table(i) => out.push(i % RAW_ARG),
        Arg::Raw(v) => {
            out.push(RAW_ARG);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn put_target(out: &mut Vec<u8>, target: Option<usize>) {
    out.push(match target {
        None => 0,
        Some(v) => ((v as u8) << 1) | 1,
    });
}

/// Encodes `ops` so that [`decode_ops`] gives them back (vCPU, event, INTID and function
/// indices must be in range: they are written as single bytes).
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match *op {
            Op::Call {
                vcpu,
                function,
                args,
            } => {
                out.extend_from_slice(&[0, vcpu as u8, function as u8]);
                args.into_iter().for_each(|a| put_arg(&mut out, a));
            }
            Op::Raw {
                vcpu,
                offset,
                smc32,
                args,
            } => {
                out.extend_from_slice(&[1, vcpu as u8, offset, u8::from(smc32)]);
                args.iter()
                    .for_each(|a| out.extend_from_slice(&a.to_le_bytes()));
            }
            Op::Ready { vcpu, event } => out.extend_from_slice(&[2, vcpu as u8, event as u8]),
            Op::Raise { event, target } => {
                out.extend_from_slice(&[3, event as u8]);
                put_target(&mut out, target);
            }
            Op::RaiseInterrupt { intid, target } => {
                out.extend_from_slice(&[4, intid as u8]);
                put_target(&mut out, target);
            }
            Op::Dispatch { vcpu } => out.extend_from_slice(&[5, vcpu as u8]),
            Op::Complete { vcpu, resume } => {
                out.extend_from_slice(&[6, vcpu as u8, u8::from(resume.is_some())]);
                if let Some(at) = resume {
                    out.extend_from_slice(&at.to_le_bytes());
                }
            }
            Op::ResetVcpu { vcpu } => out.extend_from_slice(&[7, vcpu as u8]),
            Op::Reset => out.push(8),
            Op::Migrate => out.push(9),
            Op::Run { vcpu, seed } => {
                out.extend_from_slice(&[10, vcpu as u8]);
                out.extend_from_slice(&seed.to_le_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_op_round_trips_through_bytes() {
        let ops = vec![
            Op::Call {
                vcpu: 1,
                function: 5,
                args: [
                    Arg::Table(0),
                    Arg::Raw(u64::MAX),
                    Arg::Table(7),
                    Arg::Raw(0),
                    Arg::Table(31),
                ],
            },
            Op::Raw {
                vcpu: 3,
                offset: 0x40,
                smc32: true,
                args: [1, 2, 3, 4, 5],
            },
            Op::Ready { vcpu: 2, event: 6 },
            Op::Raise {
                event: 1,
                target: Some(0),
            },
            Op::Raise {
                event: 3,
                target: None,
            },
            Op::RaiseInterrupt {
                intid: 4,
                target: Some(3),
            },
            Op::Dispatch { vcpu: 0 },
            Op::Complete {
                vcpu: 0,
                resume: Some(0x1000),
            },
            Op::Complete {
                vcpu: 1,
                resume: None,
            },
            Op::ResetVcpu { vcpu: 2 },
            Op::Reset,
            Op::Migrate,
            Op::Run {
                vcpu: 1,
                seed: 0xDEAD_BEEF,
            },
        ];

        let decoded = decode_ops(&encode_ops(&ops));

        assert_eq!(decoded, ops);
    }

    #[test]
    fn decoding_stops_at_the_op_limit() {
        let bytes = vec![8u8; MAX_OPS * 2];

        let ops = decode_ops(&bytes);

        assert_eq!(ops.len(), MAX_OPS);
        assert!(ops.iter().all(|op| *op == Op::Reset));
    }

    #[test]
    fn table_arguments_pick_harness_values() {
        assert_eq!(Arg::Table(7).value(), HANDLER);
        assert_eq!(Arg::Table(32).value(), ARG_VALUES[0]);
        assert_eq!(Arg::Raw(12345).value(), 12345);
    }
}
