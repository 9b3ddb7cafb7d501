//! Configuration: the VMM's own events, bindable interrupts, vCPU affinities.
//!
//! A [`DispatcherConfig`] is validated once, by [`Dispatcher::new`](crate::Dispatcher::new),
//! into a `Layout`: the fixed tables every later call indexes into.

use alloc::vec::Vec;

use crate::abi::MPIDR_AFFINITY_MASK;

/// Event 0: the architected private, normal-priority event signalled with `EVENT_SIGNAL`.
pub const EVENT_0: u32 = 0;
/// First event number the VMM may declare (this crate's choice, see the README).
pub const VMM_EVENT_FIRST: u32 = 0x0100_0000;
/// Last event number the VMM may declare.
pub const VMM_EVENT_LAST: u32 = 0x01FF_FFFF;
/// Event number of private bind slot 0 (slot `i` is `PRIVATE_BIND_BASE + i`).
pub const PRIVATE_BIND_BASE: u32 = 0x0200_0000;
/// Event number of shared bind slot 0 (slot `i` is `SHARED_BIND_BASE + i`).
pub const SHARED_BIND_BASE: u32 = 0x0201_0000;
/// Most vCPUs a dispatcher accepts.
pub const MAX_VCPUS: usize = 1024;
/// Most events the VMM may declare.
pub const MAX_DECLARED_EVENTS: usize = 256;
/// Most bind slots of each kind.
pub const MAX_BIND_SLOTS: u16 = 256;
/// First private peripheral interrupt (PPI) INTID.
pub const FIRST_PPI: u32 = 16;
/// First shared peripheral interrupt (SPI) INTID.
pub const FIRST_SPI: u32 = 32;
/// Last SPI INTID (1020–1023 are special INTIDs).
pub const LAST_SPI: u32 = 1019;

/// Whether an event is per vCPU or per VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// One instance per vCPU, registered and handled on each vCPU separately.
    Private,
    /// One instance per VM, routed to one vCPU at a time.
    Shared,
}

/// SDEI event priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Normal priority: pre-empts nothing.
    Normal,
    /// Critical priority: may pre-empt a running normal handler.
    Critical,
}

/// One event the VMM declares and later raises with [`Dispatcher::raise`](crate::Dispatcher::raise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventDecl {
    /// Event number, in `VMM_EVENT_FIRST..=VMM_EVENT_LAST`.
    pub number: u32,
    /// Private or shared.
    pub kind: EventKind,
    /// Normal or critical.
    pub priority: Priority,
}

/// How many dynamic events `INTERRUPT_BIND` may create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BindSlots {
    /// Slots for PPIs (private events).
    pub private: u16,
    /// Slots for SPIs (shared events).
    pub shared: u16,
}

/// Everything the dispatcher needs to know about the VM, validated by `Dispatcher::new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// Number of vCPUs, indexed `0..vcpus`.
    pub vcpus: usize,
    /// MPIDR affinity of each vCPU; `None` uses KVM's default layout
    /// (Aff0 = index bits \[3:0\], Aff1 = bits \[11:4\], Aff2 = bits \[19:12\]).
    pub mpidrs: Option<Vec<u64>>,
    /// The VMM's own events.
    pub events: Vec<EventDecl>,
    /// INTIDs (PPIs and SPIs) the VMM owns and lets the guest bind with `INTERRUPT_BIND`.
    pub bindable_interrupts: Vec<u32>,
    /// Dynamic event slots for `INTERRUPT_BIND`.
    pub bind_slots: BindSlots,
    /// Set PSTATE.TCO on handler entry (the guest has FEAT_MTE).
    pub mte_tco: bool,
    /// Vendor-defined field of the `SDEI_VERSION` result.
    pub vendor_id: u32,
}

impl DispatcherConfig {
    /// Heap bytes held by the configuration's lists.
    pub(crate) fn heap_bytes(&self) -> usize {
        use core::mem::size_of;
        self.mpidrs
            .as_ref()
            .map_or(0, |m| m.capacity() * size_of::<u64>())
            + self.events.capacity() * size_of::<EventDecl>()
            + self.bindable_interrupts.capacity() * size_of::<u32>()
    }

    /// A configuration for `vcpus` vCPUs with no VMM events and nothing bindable.
    pub fn new(vcpus: usize) -> Self {
        DispatcherConfig {
            vcpus,
            mpidrs: None,
            events: Vec::new(),
            bindable_interrupts: Vec::new(),
            bind_slots: BindSlots::default(),
            mte_tco: false,
            vendor_id: 0,
        }
    }
}

/// KVM's default MPIDR affinity for vCPU `index`.
pub fn default_mpidr(index: usize) -> u64 {
    let id = index as u64;
    (id & 0xF) | (((id >> 4) & 0xFF) << 8) | (((id >> 12) & 0xFF) << 16)
}

/// A configuration the dispatcher refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Zero vCPUs, or more than [`MAX_VCPUS`].
    #[error("vCPU count {0} is outside 1..={MAX_VCPUS}")]
    VcpuCount(usize),
    /// The MPIDR list does not have one entry per vCPU.
    #[error("{given} MPIDR values given for {vcpus} vCPUs")]
    MpidrCount {
        /// Entries given.
        given: usize,
        /// vCPUs configured.
        vcpus: usize,
    },
    /// An MPIDR value has bits outside the affinity fields, or repeats another.
    #[error("MPIDR {0:#x} is not a unique affinity value")]
    Mpidr(u64),
    /// More than [`MAX_DECLARED_EVENTS`] events.
    #[error("{0} events declared, at most {MAX_DECLARED_EVENTS} allowed")]
    TooManyEvents(usize),
    /// An event number outside the VMM range.
    #[error("event number {0:#x} is outside the VMM range")]
    EventNumber(u32),
    /// The same event number declared twice.
    #[error("event number {0:#x} is declared twice")]
    DuplicateEvent(u32),
    /// A bindable INTID that is not a PPI or SPI, or is listed twice.
    #[error("interrupt {0} cannot be offered for binding")]
    Interrupt(u32),
    /// More than [`MAX_BIND_SLOTS`] slots of one kind.
    #[error("{0} bind slots requested, at most {MAX_BIND_SLOTS} allowed")]
    TooManyBindSlots(u16),
}

/// Shorthand for results of this module.
pub type Result<T> = core::result::Result<T, ConfigError>;

/// Static facts about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventInfo {
    pub number: u32,
    pub priority: Priority,
    pub bind_slot: bool,
}

/// Where an event's runtime entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventRef {
    Private(usize),
    Shared(usize),
}

/// The validated, fixed tables derived from a configuration.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub private: Vec<EventInfo>,
    pub shared: Vec<EventInfo>,
    /// Sorted by event number.
    index: Vec<(u32, EventRef)>,
    pub mpidrs: Vec<u64>,
    /// Sorted, unique.
    bindable: Vec<u32>,
}

impl Layout {
    pub fn new(config: &DispatcherConfig) -> Result<Layout> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(config.vcpus));
        }
        let mpidrs: Vec<u64> = match &config.mpidrs {
            Some(list) if list.len() != config.vcpus => {
                return Err(ConfigError::MpidrCount {
                    given: list.len(),
                    vcpus: config.vcpus,
                })
            }
            Some(list) => list.clone(),
            None => (0..config.vcpus).map(default_mpidr).collect(),
        };
        for (i, mpidr) in mpidrs.iter().enumerate() {
            let repeated = mpidrs.iter().take(i).any(|other| other == mpidr);
            if mpidr & !MPIDR_AFFINITY_MASK != 0 || repeated {
                return Err(ConfigError::Mpidr(*mpidr));
            }
        }
        if config.events.len() > MAX_DECLARED_EVENTS {
            return Err(ConfigError::TooManyEvents(config.events.len()));
        }
        for slots in [config.bind_slots.private, config.bind_slots.shared] {
            if slots > MAX_BIND_SLOTS {
                return Err(ConfigError::TooManyBindSlots(slots));
            }
        }
        let mut bindable = config.bindable_interrupts.clone();
        bindable.sort_unstable();
        for (i, intid) in bindable.iter().enumerate() {
            let repeated = i > 0 && bindable.get(i - 1) == Some(intid);
            if !(FIRST_PPI..=LAST_SPI).contains(intid) || repeated {
                return Err(ConfigError::Interrupt(*intid));
            }
        }

        let plain = |number| EventInfo {
            number,
            priority: Priority::Normal,
            bind_slot: false,
        };
        let mut private = alloc::vec![plain(EVENT_0)];
        let mut shared = Vec::new();
        for decl in &config.events {
            if !(VMM_EVENT_FIRST..=VMM_EVENT_LAST).contains(&decl.number) {
                return Err(ConfigError::EventNumber(decl.number));
            }
            let info = EventInfo {
                number: decl.number,
                priority: decl.priority,
                bind_slot: false,
            };
            match decl.kind {
                EventKind::Private => private.push(info),
                EventKind::Shared => shared.push(info),
            }
        }
        let slot = |number| EventInfo {
            number,
            priority: Priority::Normal,
            bind_slot: true,
        };
        private
            .extend((0..u32::from(config.bind_slots.private)).map(|i| slot(PRIVATE_BIND_BASE + i)));
        shared.extend((0..u32::from(config.bind_slots.shared)).map(|i| slot(SHARED_BIND_BASE + i)));

        let mut index: Vec<(u32, EventRef)> = private
            .iter()
            .enumerate()
            .map(|(i, info)| (info.number, EventRef::Private(i)))
            .chain(
                shared
                    .iter()
                    .enumerate()
                    .map(|(i, info)| (info.number, EventRef::Shared(i))),
            )
            .collect();
        index.sort_unstable_by_key(|(number, _)| *number);
        for pair in index.windows(2) {
            if let [(a, _), (b, _)] = pair {
                if a == b {
                    return Err(ConfigError::DuplicateEvent(*a));
                }
            }
        }
        Ok(Layout {
            private,
            shared,
            index,
            mpidrs,
            bindable,
        })
    }

    /// Finds an event by number.
    pub fn find(&self, number: u32) -> Option<EventRef> {
        let at = self.index.binary_search_by_key(&number, |(n, _)| *n).ok()?;
        self.index.get(at).map(|(_, r)| *r)
    }

    /// Static facts about an event.
    pub fn info(&self, event: EventRef) -> Option<EventInfo> {
        match event {
            EventRef::Private(i) => self.private.get(i).copied(),
            EventRef::Shared(i) => self.shared.get(i).copied(),
        }
    }

    /// The vCPU whose affinity is `mpidr` (non-affinity bits ignored).
    pub fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize> {
        let aff = mpidr & MPIDR_AFFINITY_MASK;
        self.mpidrs.iter().position(|m| *m == aff)
    }

    pub fn is_bindable(&self, intid: u32) -> bool {
        self.bindable.binary_search(&intid).is_ok()
    }

    pub fn vcpus(&self) -> usize {
        self.mpidrs.len()
    }

    pub fn private_slots(&self) -> usize {
        self.private.iter().filter(|e| e.bind_slot).count()
    }

    pub fn shared_slots(&self) -> usize {
        self.shared.iter().filter(|e| e.bind_slot).count()
    }

    /// The bind slot index of `event`, with `true` for a shared slot.
    pub fn slot(&self, event: EventRef) -> Option<(bool, usize)> {
        match event {
            EventRef::Private(i) => i
                .checked_sub(self.private.len() - self.private_slots())
                .map(|s| (false, s)),
            EventRef::Shared(i) => i
                .checked_sub(self.shared.len() - self.shared_slots())
                .map(|s| (true, s)),
        }
    }

    /// Heap bytes held by the tables.
    pub fn heap_bytes(&self) -> usize {
        use core::mem::size_of;
        (self.private.capacity() + self.shared.capacity()) * size_of::<EventInfo>()
            + self.index.capacity() * size_of::<(u32, EventRef)>()
            + self.mpidrs.capacity() * size_of::<u64>()
            + self.bindable.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(number: u32, kind: EventKind) -> EventDecl {
        EventDecl {
            number,
            kind,
            priority: Priority::Normal,
        }
    }

    #[test]
    fn default_mpidrs_follow_kvm_layout() {
        assert_eq!(default_mpidr(3), 3);
        assert_eq!(default_mpidr(17), 0x101);
        assert_eq!(default_mpidr(0x1234), 0x01_2304);
    }

    #[test]
    fn layout_puts_event_0_first_and_slots_last() {
        let mut config = DispatcherConfig::new(2);
        config.events = alloc::vec![
            decl(VMM_EVENT_FIRST, EventKind::Shared),
            decl(VMM_EVENT_FIRST + 1, EventKind::Private)
        ];
        config.bind_slots = BindSlots {
            private: 1,
            shared: 2,
        };
        let layout = Layout::new(&config).unwrap();
        assert_eq!(layout.private.len(), 3);
        assert_eq!(layout.shared.len(), 3);
        assert_eq!(layout.find(EVENT_0), Some(EventRef::Private(0)));
        assert_eq!(layout.find(SHARED_BIND_BASE + 1), Some(EventRef::Shared(2)));
        assert_eq!(layout.find(5), None);
        assert_eq!((layout.private_slots(), layout.shared_slots()), (1, 2));
    }

    #[test]
    fn invalid_configurations_are_refused() {
        assert_eq!(
            Layout::new(&DispatcherConfig::new(0)).err(),
            Some(ConfigError::VcpuCount(0))
        );
        let mut config = DispatcherConfig::new(1);
        config.events = alloc::vec![decl(7, EventKind::Private)];
        assert_eq!(
            Layout::new(&config).err(),
            Some(ConfigError::EventNumber(7))
        );
        config.events = alloc::vec![
            decl(VMM_EVENT_FIRST, EventKind::Private),
            decl(VMM_EVENT_FIRST, EventKind::Shared)
        ];
        assert_eq!(
            Layout::new(&config).err(),
            Some(ConfigError::DuplicateEvent(VMM_EVENT_FIRST))
        );
        let mut config = DispatcherConfig::new(1);
        config.bindable_interrupts = alloc::vec![40, 3];
        assert_eq!(Layout::new(&config).err(), Some(ConfigError::Interrupt(3)));
        config.bindable_interrupts = alloc::vec![40, 40];
        assert_eq!(Layout::new(&config).err(), Some(ConfigError::Interrupt(40)));
        let mut config = DispatcherConfig::new(2);
        config.mpidrs = Some(alloc::vec![1, 1]);
        assert_eq!(Layout::new(&config).err(), Some(ConfigError::Mpidr(1)));
        config.mpidrs = Some(alloc::vec![1]);
        assert_eq!(
            Layout::new(&config).err(),
            Some(ConfigError::MpidrCount { given: 1, vcpus: 2 })
        );
        let mut config = DispatcherConfig::new(1);
        config.bind_slots.shared = MAX_BIND_SLOTS + 1;
        assert_eq!(
            Layout::new(&config).err(),
            Some(ConfigError::TooManyBindSlots(MAX_BIND_SLOTS + 1))
        );
    }
}
