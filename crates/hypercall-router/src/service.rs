//! The service trait and the metadata a service registers with.

use crate::call::{Call, CallContext, Outcome};
use crate::function_id::{CallType, Convention, FunctionId, Owner};
use crate::registers::RegisterView;
use crate::return_code::SmcccReturn;

/// A contiguous block of function numbers of one owner, call type and
/// convention that a service serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FunctionRange {
    /// Fast or yielding.
    pub call_type: CallType,
    /// SMC32 or SMC64.
    pub convention: Convention,
    /// The owning entity.
    pub owner: Owner,
    /// First function number served.
    pub first: u16,
    /// Last function number served (inclusive).
    pub last: u16,
    /// How many argument registers (`x1`..) the router reads for a call in
    /// this range; at most the convention's maximum (7 for SMC32, 17 for SMC64).
    pub arg_count: u8,
}

impl FunctionRange {
    /// Fast calls `first..=last` of `owner`, reading every argument register
    /// the convention defines.
    pub const fn fast(convention: Convention, owner: Owner, first: u16, last: u16) -> Self {
        FunctionRange {
            call_type: CallType::Fast,
            convention,
            owner,
            first,
            last,
            arg_count: convention.max_args(),
        }
    }

    /// The same range with `arg_count` argument registers read per call.
    pub const fn with_arg_count(mut self, arg_count: u8) -> Self {
        self.arg_count = arg_count;
        self
    }

    /// The same range with the given call type.
    pub const fn with_call_type(mut self, call_type: CallType) -> Self {
        self.call_type = call_type;
        self
    }

    /// The function ID of the first number.
    pub const fn first_id(&self) -> FunctionId {
        FunctionId::new(self.call_type, self.convention, self.owner, self.first)
    }

    /// The function ID of the last number.
    pub const fn last_id(&self) -> FunctionId {
        FunctionId::new(self.call_type, self.convention, self.owner, self.last)
    }

    /// Whether the range contains `id` (SVE hint ignored).
    pub const fn contains(&self, id: FunctionId) -> bool {
        id.raw() >= self.first_id().raw() && id.raw() <= self.last_id().raw()
    }

    /// Number of function numbers in the range (0 if `first > last`).
    pub const fn len(&self) -> u32 {
        if self.first > self.last {
            0
        } else {
            (self.last - self.first) as u32 + 1
        }
    }

    /// Whether the range is empty (`first > last`, refused at registration).
    pub const fn is_empty(&self) -> bool {
        self.first > self.last
    }
}

/// The 128-bit UID an owner answers to the Call UID query (0xFF01), as the
/// four 32-bit words returned in `w0`–`w3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uid(pub [u32; 4]);

/// The revision an owner answers to the Revision query (0xFF03).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revision {
    /// Major revision, returned in `w0`.
    pub major: u32,
    /// Minor revision, returned in `w1`.
    pub minor: u32,
}

/// Identity the router answers for the owners of a service's ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerIdentity {
    /// Call UID (0xFF01); `None` answers NOT_SUPPORTED.
    pub uid: Option<Uid>,
    /// Revision (0xFF03); `None` answers NOT_SUPPORTED.
    pub revision: Option<Revision>,
}

/// What a service tells the router at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceInfo<'a> {
    /// Name used in errors and dispatch outcomes.
    pub name: &'static str,
    /// Identity answered for each owner of `ranges`; at most one service
    /// per owner may carry one.
    pub identity: Option<OwnerIdentity>,
    /// The function ranges served; copied by the router at registration.
    pub ranges: &'a [FunctionRange],
}

/// A hypercall service: a block of function IDs and their handler.
///
/// Services take `&self` so one router can be shared by every vCPU thread;
/// keep per-call state behind your own synchronisation.
pub trait Service {
    /// Name, identity and ranges. Read once, at registration.
    fn info(&self) -> ServiceInfo<'_>;

    /// Handles a call routed to one of the service's ranges.
    ///
    /// `regs` gives the calling vCPU's `x0`–`x17` for services that need
    /// more than [`Call::args`] (for example to restore a saved context and
    /// answer [`Outcome::Handled`]).
    fn call(&self, ctx: &CallContext, call: &Call, regs: &mut RegisterView<'_>) -> Outcome;

    /// The answer to `SMCCC_ARCH_FEATURES` for `id`, one of this service's
    /// IDs: 0 or a positive feature word if implemented, a negative code if
    /// not. Every routed ID is implemented unless the service says otherwise.
    fn arch_features(&self, id: FunctionId) -> i32 {
        let _ = id;
        SmcccReturn::Success.as_i32()
    }
}

impl<T: Service + ?Sized> Service for &T {
    fn info(&self) -> ServiceInfo<'_> {
        (**self).info()
    }

    fn call(&self, ctx: &CallContext, call: &Call, regs: &mut RegisterView<'_>) -> Outcome {
        (**self).call(ctx, call, regs)
    }

    fn arch_features(&self, id: FunctionId) -> i32 {
        (**self).arch_features(id)
    }
}

#[cfg(feature = "std")]
impl<T: Service + ?Sized> Service for Box<T> {
    fn info(&self) -> ServiceInfo<'_> {
        (**self).info()
    }

    fn call(&self, ctx: &CallContext, call: &Call, regs: &mut RegisterView<'_>) -> Outcome {
        (**self).call(ctx, call, regs)
    }

    fn arch_features(&self, id: FunctionId) -> i32 {
        (**self).arch_features(id)
    }
}

#[cfg(feature = "std")]
impl<T: Service + ?Sized> Service for std::sync::Arc<T> {
    fn info(&self) -> ServiceInfo<'_> {
        (**self).info()
    }

    fn call(&self, ctx: &CallContext, call: &Call, regs: &mut RegisterView<'_>) -> Outcome {
        (**self).call(ctx, call, regs)
    }

    fn arch_features(&self, id: FunctionId) -> i32 {
        (**self).arch_features(id)
    }
}

/// A boxed service shareable across vCPU threads, for routers holding
/// services of different types.
#[cfg(feature = "std")]
pub type BoxedService = Box<dyn Service + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_contains_its_bounds_and_ignores_sve_hint() {
        let range = FunctionRange::fast(Convention::Smc64, Owner::SiP, 4, 6);
        let inside =
            FunctionId::new(CallType::Fast, Convention::Smc64, Owner::SiP, 6).with_sve_hint(true);
        let other_convention = FunctionId::new(CallType::Fast, Convention::Smc32, Owner::SiP, 5);

        assert!(range.contains(range.first_id()));
        assert!(range.contains(inside));
        assert!(!range.contains(other_convention));
        assert_eq!(range.len(), 3);
    }

    #[test]
    fn inverted_range_is_empty() {
        let range = FunctionRange::fast(Convention::Smc32, Owner::Oem, 9, 8);

        assert!(range.is_empty());
        assert_eq!(range.len(), 0);
    }
}
