//! Which function IDs a hypervisor must forward for a router to see them.
//!
//! This is the pure part of the KVM adapter (`KVM_ARM_VM_SMCCC_FILTER`),
//! kept here so it is tested on every host.

use crate::function_id::{CallType, Owner, ServiceQuery, SVE_HINT_BIT};
use crate::router::{Router, Target};
use crate::service::Service;

/// An inclusive block of 32-bit function IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdRange {
    /// First function ID.
    pub first: u32,
    /// Last function ID (inclusive).
    pub last: u32,
}

impl IdRange {
    /// Number of IDs in the block.
    pub const fn count(&self) -> u32 {
        self.last - self.first + 1
    }

    /// Whether the block contains `id`.
    pub const fn contains(&self, id: u32) -> bool {
        id >= self.first && id <= self.last
    }
}

/// The blocks KVM reserves for the Arm Architecture owner (fast SMC32 and
/// fast SMC64 calls of owner 0); a filter may never request them.
pub const ARM_ARCHITECTURE_RESERVED: [IdRange; 2] = [
    IdRange {
        first: 0x8000_0000,
        last: 0x8000_FFFF,
    },
    IdRange {
        first: 0xC000_0000,
        last: 0xC000_FFFF,
    },
];

impl<S: Service, const SERVICES: usize, const RANGES: usize> Router<S, SERVICES, RANGES> {
    /// The sorted, merged ID blocks a hypervisor must forward to user space
    /// for this router to receive every call it serves:
    ///
    /// - every registered service range, except the Arm Architecture owner
    ///   (owner 0), which KVM reserves and the built-in service never needs
    ///   forwarded;
    /// - the per-owner query block (0xFF00–0xFF03, fast SMC32) of every
    ///   served owner, which the router answers;
    /// - for fast calls, the same blocks with the SVE hint (bit 16) set, since
    ///   a hypervisor matches the ID as the guest wrote it.
    ///
    /// Adjacent and overlapping blocks are merged.
    pub fn forwarded_ranges(&self) -> Vec<IdRange> {
        let mut blocks = Vec::new();
        for route in self.active_routes() {
            if route.target == Target::ArmArchitecture
                || route.range.owner == Owner::ArmArchitecture
            {
                continue;
            }
            blocks.push(IdRange {
                first: route.start,
                last: route.end,
            });
            if route.range.call_type == CallType::Fast {
                blocks.push(IdRange {
                    first: route.start | SVE_HINT_BIT,
                    last: route.end | SVE_HINT_BIT,
                });
            }
        }
        for owner in self
            .served_owners()
            .filter(|o| *o != Owner::ArmArchitecture)
        {
            let first = ServiceQuery::CallCount.id(owner).raw();
            let last = ServiceQuery::Revision.id(owner).raw();
            blocks.push(IdRange { first, last });
            blocks.push(IdRange {
                first: first | SVE_HINT_BIT,
                last: last | SVE_HINT_BIT,
            });
        }
        blocks.sort_unstable();
        let mut merged: Vec<IdRange> = Vec::with_capacity(blocks.len());
        for block in blocks {
            match merged.last_mut() {
                Some(prev) if block.first <= prev.last.saturating_add(1) => {
                    prev.last = prev.last.max(block.last)
                }
                _ => merged.push(block),
            }
        }
        merged
    }
}
