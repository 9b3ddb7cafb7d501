//! Target `smccc_dispatch`: SMCCC function-ID decoding and router dispatch.
//!
//! Input layout: byte 0 picks the conduit (even: HVC, odd: SMC), then `x0`–`x17` as
//! little-endian `u64`s; a short input is padded with zeros.

use hypercall_router::testing::{fuzz_dispatch, fuzz_router};
use hypercall_router::{Conduit, FunctionId, Router, Service, SMCCC_REGISTERS};

/// Registers the router reads: `x0`–`x17`.
pub const REGISTERS: usize = SMCCC_REGISTERS as usize;
/// Length of a complete input; longer inputs are truncated, shorter ones padded.
pub const INPUT_LEN: usize = 1 + 8 * REGISTERS;

/// One decoded input: the call's registers and the instruction that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterInput {
    /// `x0`–`x17` at the call.
    pub x: [u64; REGISTERS],
    /// HVC or SMC.
    pub conduit: Conduit,
}

impl RouterInput {
    /// Decodes fuzzer bytes (never fails: missing bytes read as zero).
    pub fn from_bytes(data: &[u8]) -> Self {
        let conduit = match data.first() {
            Some(b) if b % 2 == 1 => Conduit::Smc,
            _ => Conduit::Hvc,
        };
        let mut x = [0u64; REGISTERS];
        for (n, slot) in x.iter_mut().enumerate() {
            let mut word = [0u8; 8];
            for (i, byte) in word.iter_mut().enumerate() {
                *byte = data.get(1 + n * 8 + i).copied().unwrap_or(0);
            }
            *slot = u64::from_le_bytes(word);
        }
        RouterInput { x, conduit }
    }

    /// Encodes the input so that [`RouterInput::from_bytes`] gives it back.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INPUT_LEN);
        out.push(match self.conduit {
            Conduit::Hvc => 0,
            Conduit::Smc => 1,
        });
        for x in self.x {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }
}

thread_local! {
    static ROUTER: Router<&'static dyn Service> = fuzz_router();
}

/// Checks that a decoded function ID gives back the word it was decoded from.
fn check_function_id(x0: u64) {
    let word = x0 as u32;
    let Ok(id) = FunctionId::decode(x0) else {
        return;
    };
    assert_eq!(id.raw_with_hint(), word, "decode loses bits of {word:#x}");
    if id.reserved_bits() == 0 {
        let rebuilt = FunctionId::new(id.call_type(), id.convention(), id.owner(), id.number())
            .with_sve_hint(id.sve_hint());
        assert_eq!(rebuilt, id, "fields of {word:#x} do not rebuild it");
    }
}

/// Decodes `data` into registers and dispatches them through
/// [`hypercall_router::testing::fuzz_router`], which panics if a calling-convention rule is
/// broken; also checks that function-ID decoding is lossless and that dispatch is
/// deterministic.
pub fn run_smccc_dispatch(data: &[u8]) {
    let input = RouterInput::from_bytes(data);
    check_function_id(input.x[0]);
    ROUTER.with(|router| {
        let first = fuzz_dispatch(router, input.x, input.conduit);
        let second = fuzz_dispatch(router, input.x, input.conduit);
        assert_eq!(first.0, second.0, "the same call dispatched differently");
        assert_eq!(first.1.x, second.1.x, "the same call left other registers");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_encoding_round_trips() {
        let mut x = [0u64; REGISTERS];
        x[0] = 0x8400_0000;
        x[17] = u64::MAX;
        let input = RouterInput {
            x,
            conduit: Conduit::Smc,
        };

        let bytes = input.to_bytes();

        assert_eq!(bytes.len(), INPUT_LEN);
        assert_eq!(RouterInput::from_bytes(&bytes), input);
    }

    #[test]
    fn short_input_reads_as_zero_registers_over_hvc() {
        let input = RouterInput::from_bytes(&[2, 0xFF]);

        assert_eq!(input.conduit, Conduit::Hvc);
        assert_eq!(input.x[0], 0xFF);
        assert!(input.x[1..].iter().all(|x| *x == 0));
    }
}
