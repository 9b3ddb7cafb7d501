//! A pure-logic Arm SDEI v1.1 dispatcher for virtual machines, driven at register level.
//!
//! The Software Delegated Exception Interface lets a guest kernel register handlers for
//! events that interrupt it even when it runs with interrupts masked. This crate is the
//! firmware side of that interface for a VMM: it decodes the SDEI calls a vCPU makes
//! (function IDs `0xC4000020`–`0xC4000032`), keeps every handler's state machine, and enters
//! and leaves handlers by rewriting the vCPU's registers through [`RegisterFile`] (the
//! register trait of `hypercall-router`, shared with every other hypercall service).
//!
//! It has no KVM dependency and no `unsafe`. With `default-features = false` it is
//! `#![no_std]` (it needs `alloc`: tables are allocated once, sized by the configuration).
//!
//! # Example
//!
//! ```
//! use sdei_dispatch::abi::{Function, SUCCESS};
//! use sdei_dispatch::{
//!     CallOutcome, Dispatcher, DispatcherConfig, EventDecl, EventKind, Priority, InMemoryRegisters,
//! };
//!
//! const WATCHDOG: u32 = 0x0100_0000;
//! let mut config = DispatcherConfig::new(2);
//! config.events.push(EventDecl { number: WATCHDOG, kind: EventKind::Shared, priority: Priority::Critical });
//! let mut sdei = Dispatcher::new(config)?;
//!
//! // vCPU 0 registers a handler at 0x8000 (routing RM_ANY), enables the event, unmasks.
//! let mut regs = InMemoryRegisters::default();
//! for (function, args) in [
//!     (Function::EventRegister, &[u64::from(WATCHDOG), 0x8000, 42, 0, 0][..]),
//!     (Function::EventEnable, &[u64::from(WATCHDOG)][..]),
//!     (Function::PeUnmask, &[][..]),
//! ] {
//!     regs.load_call(function.id(), args);
//!     assert_eq!(sdei.handle_call(0, &mut regs)?, CallOutcome::Returned(SUCCESS));
//! }
//!
//! // The VMM raises the event; vCPU 0 is the only unmasked vCPU, so it needs a kick.
//! sdei.raise(WATCHDOG, None)?;
//! assert_eq!(sdei.vcpus_needing_kick().collect::<Vec<_>>(), [0]);
//!
//! // Out of KVM_RUN, the VMM dispatches: the vCPU now runs the handler.
//! regs.pc = 0x1234;
//! let info = sdei.dispatch_pending(0, &mut regs)?.expect("an event is deliverable");
//! assert_eq!(info.event, WATCHDOG);
//! assert_eq!((regs.pc, regs.x[0], regs.x[1], regs.x[2]), (0x8000, u64::from(WATCHDOG), 42, 0x1234));
//!
//! // The handler completes and the interrupted context comes back.
//! regs.load_call(Function::EventComplete.id(), &[0]);
//! sdei.handle_call(0, &mut regs)?;
//! assert_eq!(regs.pc, 0x1234);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod abi;
mod calls;
pub mod config;
mod delivery;
mod dispatcher;
#[cfg(feature = "kvm")]
pub mod kvm;
pub mod machine;
pub mod regs;
#[cfg(feature = "router")]
pub mod service;
pub mod state;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod vmm;

pub use config::{BindSlots, ConfigError, DispatcherConfig, EventDecl, EventKind, Priority};
pub use delivery::DispatchInfo;
pub use dispatcher::{CallError, CallOutcome, Dispatcher};
pub use machine::HandlerState;
pub use regs::{ControlRegister, InMemoryRegisters, RegisterFile};
#[cfg(feature = "router")]
pub use service::{DispatcherGuard, Kick, SdeiService};
pub use state::{DispatcherState, RestoreError};
pub use vmm::{RaiseOutcome, VmmError};

/// Runs the README's examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
