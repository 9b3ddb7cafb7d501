//! Arm SMCCC function-ID decoding and a hypercall router for arm64 VMMs.
//!
//! - [`FunctionId::decode`] turns a raw `x0` into a typed identifier
//!   ([`CallType`], [`Convention`], [`Owner`], function number, SVE hint),
//!   refusing fast calls with reserved bits set.
//! - [`RouterBuilder`] registers [`Service`]s for [`FunctionRange`]s,
//!   refusing overlaps with an error naming both services; the built
//!   [`Router`] reads the arguments a call's convention passes, calls the
//!   service and writes its [`Results`] back per the convention.
//! - [`RegisterFile`] abstracts one vCPU's registers (`x0`–`x17` and the
//!   [`ControlRegister`]s PC, PSTATE, `ELR_EL1`, `SPSR_EL1`): [`InMemoryRegisters`] in
//!   tests, the `kvm` adapter (feature `kvm`) over any hypervisor that can get and set a
//!   register by ONE_REG ID, with implementations for kvm-ioctls on aarch64.
//!
//! The crate is `#![no_std]` without the default `std` feature and never
//! allocates on the dispatch path: tables are sized by const generics.
//!
//! # Example
//!
//! ```
//! use hypercall_router::{
//!     Call, CallContext, Conduit, Convention, FunctionRange, InMemoryRegisters, Outcome, Owner,
//!     RegisterView, Results, RouterBuilder, Service, ServiceInfo, SmcccReturn,
//! };
//!
//! /// Adds its two arguments.
//! struct Adder;
//!
//! const ADDER_RANGES: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 0)];
//!
//! impl Service for Adder {
//!     fn info(&self) -> ServiceInfo<'_> {
//!         ServiceInfo { name: "adder", identity: None, ranges: ADDER_RANGES }
//!     }
//!
//!     fn call(&self, _ctx: &CallContext, call: &Call, _regs: &mut RegisterView<'_>) -> Outcome {
//!         let sum = call.arg(1).wrapping_add(call.arg(2));
//!         Outcome::Return(Results::code(SmcccReturn::Success).with(1, sum))
//!     }
//! }
//!
//! let mut builder = RouterBuilder::<Adder>::new();
//! builder.register(Adder).unwrap();
//! let router = builder.build();
//!
//! let mut regs = InMemoryRegisters::new([0; 18]);
//! regs.x[0] = 0xC200_0000; // fast SMC64, SiP, function 0
//! regs.x[1] = 40;
//! regs.x[2] = 2;
//! router.dispatch(&CallContext::new(0, Conduit::Hvc), &mut regs).unwrap();
//! assert_eq!(regs.x[0], 0);
//! assert_eq!(regs.x[1], 42);
//!
//! regs.x[0] = 0xC200_0001; // not registered
//! router.dispatch(&CallContext::new(0, Conduit::Hvc), &mut regs).unwrap();
//! assert_eq!(regs.x[0], SmcccReturn::NotSupported.as_u64());
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

mod arch;
mod call;
#[cfg(feature = "std")]
mod filter;
mod function_id;
#[cfg(feature = "kvm")]
pub mod kvm;
mod registers;
mod return_code;
mod router;
mod service;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use arch::{ArmArchitecture, SmcccVersion, SocId};
pub use call::{Call, CallContext, Conduit, Outcome, Results, KVM_HYPERCALL_EXIT_SMC};
#[cfg(feature = "std")]
pub use filter::{IdRange, ARM_ARCHITECTURE_RESERVED};
pub use function_id::{
    CallType, Convention, DecodeError, FunctionId, Owner, ServiceQuery, FAST_CALL_MBZ_MASK,
    SVE_HINT_BIT,
};
pub use registers::{
    ControlRegister, InMemoryRegisters, RegisterError, RegisterFile, RegisterView, SMCCC_REGISTERS,
};
pub use return_code::SmcccReturn;
pub use router::{
    DispatchOutcome, Router, RouterBuilder, RouterError, Unsupported, ARM_ARCHITECTURE_NAME,
    DEFAULT_MAX_RANGES, DEFAULT_MAX_SERVICES,
};
#[cfg(feature = "std")]
pub use service::BoxedService;
pub use service::{FunctionRange, OwnerIdentity, Revision, Service, ServiceInfo, Uid};

/// Runs the README's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
