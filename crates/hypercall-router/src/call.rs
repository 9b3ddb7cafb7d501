//! What a service receives and what it answers.

use crate::function_id::{Convention, FunctionId};
use crate::registers::SMCCC_REGISTERS;
use crate::return_code::SmcccReturn;

/// The instruction the guest used to make the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conduit {
    /// `HVC`: a call to the hypervisor.
    Hvc,
    /// `SMC`: a call to the secure monitor, trapped by the hypervisor.
    Smc,
}

/// `KVM_HYPERCALL_EXIT_SMC`: bit 0 of an arm64 `KVM_EXIT_HYPERCALL`'s flags, set when the
/// guest used `SMC` (clear for `HVC`).
pub const KVM_HYPERCALL_EXIT_SMC: u64 = 1 << 0;

impl Conduit {
    /// The conduit of a `KVM_EXIT_HYPERCALL` with these exit flags
    /// ([`KVM_HYPERCALL_EXIT_SMC`] set: `SMC`; otherwise `HVC`). Other flag bits are ignored.
    pub const fn from_kvm_exit_flags(flags: u64) -> Self {
        if flags & KVM_HYPERCALL_EXIT_SMC != 0 {
            Conduit::Smc
        } else {
            Conduit::Hvc
        }
    }
}

/// Where a call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallContext {
    /// Index of the calling vCPU.
    pub vcpu_index: usize,
    /// The instruction used.
    pub conduit: Conduit,
}

impl CallContext {
    /// A context for `vcpu_index` and `conduit`.
    pub const fn new(vcpu_index: usize, conduit: Conduit) -> Self {
        CallContext {
            vcpu_index,
            conduit,
        }
    }
}

/// A decoded call with its arguments, read per its convention.
///
/// `args[0]` is `x1`/`w1`. SMC32 arguments are `w1`–`w7` zero-extended
/// (upper halves of the registers ignored); SMC64 arguments are `x1`–`x17`.
/// Registers the convention (or the range's argument count) does not pass
/// read as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The function ID, SVE hint masked from routing but visible.
    pub id: FunctionId,
    /// Arguments `x1`–`x17` (`args[n - 1]` is `x<n>`).
    pub args: [u64; 17],
}

impl Call {
    /// Argument `x<n>` for `n` in 1..=17; zero for any other `n`.
    pub fn arg(&self, n: usize) -> u64 {
        n.checked_sub(1)
            .and_then(|i| self.args.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// The convention the call uses.
    pub const fn convention(&self) -> Convention {
        self.id.convention()
    }
}

/// Result registers a service returns; the router writes them per the
/// call's convention.
///
/// `x0` is always written. SMC32 calls get at most `w0`–`w7`, each
/// truncated to 32 bits and zero-extended; SMC64 calls get up to `x0`–`x17`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Results {
    values: [u64; SMCCC_REGISTERS as usize],
    len: u8,
}

impl Results {
    /// Only `x0` = `code`.
    pub const fn code(code: SmcccReturn) -> Self {
        Results::value(code.as_u64())
    }

    /// Only `x0` = `x0`.
    pub const fn value(x0: u64) -> Self {
        let mut values = [0; SMCCC_REGISTERS as usize];
        values[0] = x0;
        Results { values, len: 1 }
    }

    /// `x0`.. from `values`; values past `x17` are dropped, and an empty
    /// slice still writes `x0` = 0.
    pub fn from_slice(values: &[u64]) -> Self {
        let mut out = Results::value(0);
        for (n, v) in (0..SMCCC_REGISTERS).zip(values) {
            out.set(n, *v);
        }
        out
    }

    /// The same results with `x<n>` = `value` (ignored for `n` ≥ 18).
    /// Registers between the last set one and `n` are written as zero.
    #[must_use]
    pub const fn with(mut self, n: u8, value: u64) -> Self {
        if n < SMCCC_REGISTERS {
            self.values[n as usize] = value;
            if n + 1 > self.len {
                self.len = n + 1;
            }
        }
        self
    }

    /// Sets `x<n>` = `value` in place (ignored for `n` ≥ 18); see [`Results::with`].
    pub fn set(&mut self, n: u8, value: u64) {
        if let Some(slot) = self.values.get_mut(usize::from(n)) {
            *slot = value;
            self.len = self.len.max(n + 1);
        }
    }

    /// The result registers to write, `x0` first.
    pub fn as_slice(&self) -> &[u64] {
        self.values
            .get(..usize::from(self.len))
            .unwrap_or(&self.values)
    }

    /// Number of result registers, `x0` included (at least 1).
    pub const fn len(&self) -> u8 {
        self.len
    }

    /// Always false: `x0` is always part of the results.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Result register `x<n>` as the service set it (zero if not set).
    pub fn get(&self, n: u8) -> u64 {
        self.values.get(usize::from(n)).copied().unwrap_or(0)
    }
}

/// What a service did with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The router writes these results (always `x0`).
    Return(Results),
    /// The service already rewrote the registers itself (for example a
    /// call that restores a whole saved context); the router writes nothing.
    Handled,
}

impl From<SmcccReturn> for Outcome {
    fn from(code: SmcccReturn) -> Self {
        Outcome::Return(Results::code(code))
    }
}

impl From<Results> for Outcome {
    fn from(results: Results) -> Self {
        Outcome::Return(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_always_include_x0() {
        let empty = Results::from_slice(&[]);

        assert_eq!(empty.len(), 1);
        assert_eq!(empty.get(0), 0);
    }

    #[test]
    fn results_beyond_x17_are_dropped() {
        let results = Results::value(1).with(18, 5).with(3, 9);

        assert_eq!(results.len(), 4);
        assert_eq!(results.get(3), 9);
        assert_eq!(results.get(18), 0);
    }

    #[test]
    fn call_arg_outside_one_to_seventeen_is_zero() {
        let mut args = [0; 17];
        args[0] = 11;
        args[16] = 17;
        let call = Call {
            id: FunctionId::SMCCC_VERSION,
            args,
        };

        assert_eq!(call.arg(1), 11);
        assert_eq!(call.arg(17), 17);
        assert_eq!(call.arg(0), 0);
        assert_eq!(call.arg(18), 0);
    }
}
