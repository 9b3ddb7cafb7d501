//! The payload of format version 1: wire types owned by this crate, and conversions.
//!
//! These structs *are* the format. They mirror `sdei_dispatch`'s state types but do not
//! follow them: when the dispatcher's structs change, only the conversions here change, and
//! snapshots written earlier keep their meaning. A field is never reordered, retyped or
//! removed within major version 1; postcard encodes structs as their fields in order, integers
//! as LEB128 varints, enums as a varint variant index, `Option` as a 0/1 byte, and fixed-size
//! arrays without a length.
//!
//! Decoding checks each field's encoding (see [`TryFrom`] impls); whether the decoded state is
//! one the dispatcher could reach is checked by `Dispatcher::restore`.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use sdei_dispatch::abi::{STATUS_ENABLED, STATUS_REGISTERED, STATUS_RUNNING};
use sdei_dispatch::config::{FIRST_PPI, LAST_SPI, MAX_BIND_SLOTS, MAX_DECLARED_EVENTS, MAX_VCPUS};
use sdei_dispatch::state::{
    EventEntry, HandlerFrame, Routing, SavedContext, SharedEvent, VcpuState,
};
use sdei_dispatch::{
    BindSlots, DispatcherConfig, DispatcherState, EventDecl, EventKind, HandlerState, Priority,
};

use crate::error::{Result, SnapshotError};

/// Most private events per vCPU: event 0, every declared event, every private bind slot.
const MAX_PRIVATE_EVENTS: usize = 1 + MAX_DECLARED_EVENTS + MAX_BIND_SLOTS as usize;
/// Most shared events: every declared event and every shared bind slot.
const MAX_SHARED_EVENTS: usize = MAX_DECLARED_EVENTS + MAX_BIND_SLOTS as usize;
/// Most bindable interrupts: every PPI and SPI.
const MAX_BINDABLE: usize = (LAST_SPI - FIRST_PPI + 1) as usize;
const MAX_SLOTS: usize = MAX_BIND_SLOTS as usize;

/// A sequence of at most `MAX` elements, encoded as a plain postcard sequence.
///
/// Decoding refuses a length prefix over `MAX` before reading or allocating for any element,
/// so a payload within the size cap cannot make the decoder hold much more than the largest
/// state the dispatcher accepts (every `MAX` is one of the dispatcher's own limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bounded<T, const MAX: usize>(pub Vec<T>);

impl<T: Serialize, const MAX: usize> Serialize for Bounded<T, MAX> {
    fn serialize<S: Serializer>(&self, serializer: S) -> core::result::Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

struct BoundedVisitor<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for BoundedVisitor<T, MAX> {
    type Value = Bounded<T, MAX>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {MAX} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> core::result::Result<Self::Value, A::Error> {
        let announced = seq.size_hint().unwrap_or(0);
        if announced > MAX {
            return Err(de::Error::invalid_length(announced, &self));
        }
        let mut items = Vec::with_capacity(announced);
        while let Some(item) = seq.next_element()? {
            if items.len() == MAX {
                return Err(de::Error::invalid_length(MAX + 1, &self));
            }
            items.push(item);
        }
        Ok(Bounded(items))
    }
}

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Bounded<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> core::result::Result<Self, D::Error> {
        deserializer.deserialize_seq(BoundedVisitor(PhantomData))
    }
}

/// The whole payload of format 1.x (before any optional section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotV1 {
    pub config: ConfigV1,
    pub vcpus: Bounded<VcpuV1, MAX_VCPUS>,
    pub shared_events: Bounded<SharedEventV1, MAX_SHARED_EVENTS>,
    pub private_bindings: Bounded<Option<u32>, MAX_SLOTS>,
    pub shared_bindings: Bounded<Option<u32>, MAX_SLOTS>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfigV1 {
    pub vcpus: u32,
    pub mpidrs: Option<Bounded<u64, MAX_VCPUS>>,
    pub events: Bounded<EventDeclV1, MAX_DECLARED_EVENTS>,
    pub bindable_interrupts: Bounded<u32, MAX_BINDABLE>,
    pub private_bind_slots: u16,
    pub shared_bind_slots: u16,
    pub mte_tco: bool,
    pub vendor_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KindV1 {
    Private,
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PriorityV1 {
    Normal,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventDeclV1 {
    pub number: u32,
    pub kind: KindV1,
    pub priority: PriorityV1,
}

/// One handler registration. `status` uses the `EVENT_STATUS` bits: 0 registered,
/// 1 enabled, 2 running; the other bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventEntryV1 {
    pub number: u32,
    pub status: u8,
    pub entry_point: u64,
    pub argument: u64,
    pub pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrameV1 {
    pub event: u32,
    pub x: [u64; 18],
    pub pc: u64,
    pub pstate: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VcpuV1 {
    pub masked: bool,
    pub private_events: Bounded<EventEntryV1, MAX_PRIVATE_EVENTS>,
    pub normal: Option<FrameV1>,
    pub critical: Option<FrameV1>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RoutingV1 {
    Any,
    Pe(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SharedEventV1 {
    pub entry: EventEntryV1,
    pub routing: RoutingV1,
    pub running_on: Option<u32>,
}

// The dispatcher's registers saved around a handler must match the wire array.
const _: () = assert!(sdei_dispatch::abi::SAVED_GPRS == 18);

/// A `usize` the dispatcher holds, as its fixed-width wire form. The dispatcher bounds every
/// such count and index far below `u32::MAX`; a value past it is written as `u32::MAX`,
/// which restore refuses.
fn wire_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn wire_usize(value: u32, what: &'static str) -> Result<usize> {
    usize::try_from(value).map_err(|_| SnapshotError::Malformed(what))
}

impl From<&DispatcherConfig> for ConfigV1 {
    fn from(c: &DispatcherConfig) -> Self {
        ConfigV1 {
            vcpus: wire_u32(c.vcpus),
            mpidrs: c.mpidrs.clone().map(Bounded),
            events: Bounded(
                c.events
                    .iter()
                    .map(|e| EventDeclV1 {
                        number: e.number,
                        kind: match e.kind {
                            EventKind::Private => KindV1::Private,
                            EventKind::Shared => KindV1::Shared,
                        },
                        priority: match e.priority {
                            Priority::Normal => PriorityV1::Normal,
                            Priority::Critical => PriorityV1::Critical,
                        },
                    })
                    .collect(),
            ),
            bindable_interrupts: Bounded(c.bindable_interrupts.clone()),
            private_bind_slots: c.bind_slots.private,
            shared_bind_slots: c.bind_slots.shared,
            mte_tco: c.mte_tco,
            vendor_id: c.vendor_id,
        }
    }
}

impl TryFrom<ConfigV1> for DispatcherConfig {
    type Error = SnapshotError;

    fn try_from(c: ConfigV1) -> Result<Self> {
        let mut config = DispatcherConfig::new(wire_usize(c.vcpus, "vCPU count")?);
        config.mpidrs = c.mpidrs.map(|m| m.0);
        config.events = c
            .events
            .0
            .into_iter()
            .map(|e| EventDecl {
                number: e.number,
                kind: match e.kind {
                    KindV1::Private => EventKind::Private,
                    KindV1::Shared => EventKind::Shared,
                },
                priority: match e.priority {
                    PriorityV1::Normal => Priority::Normal,
                    PriorityV1::Critical => Priority::Critical,
                },
            })
            .collect();
        config.bindable_interrupts = c.bindable_interrupts.0;
        config.bind_slots = BindSlots {
            private: c.private_bind_slots,
            shared: c.shared_bind_slots,
        };
        config.mte_tco = c.mte_tco;
        config.vendor_id = c.vendor_id;
        Ok(config)
    }
}

impl From<&EventEntry> for EventEntryV1 {
    fn from(e: &EventEntry) -> Self {
        EventEntryV1 {
            number: e.number,
            // Three bits: always fits.
            status: u8::try_from(e.state.status_bits()).unwrap_or(u8::MAX),
            entry_point: e.entry_point,
            argument: e.argument,
            pending: e.pending,
        }
    }
}

impl TryFrom<EventEntryV1> for EventEntry {
    type Error = SnapshotError;

    fn try_from(e: EventEntryV1) -> Result<Self> {
        let status = u64::from(e.status);
        if status & !(STATUS_REGISTERED | STATUS_ENABLED | STATUS_RUNNING) != 0 {
            return Err(SnapshotError::Malformed("event status"));
        }
        Ok(EventEntry {
            number: e.number,
            state: HandlerState::new(
                status & STATUS_REGISTERED != 0,
                status & STATUS_ENABLED != 0,
                status & STATUS_RUNNING != 0,
            ),
            entry_point: e.entry_point,
            argument: e.argument,
            pending: e.pending,
        })
    }
}

impl From<&HandlerFrame> for FrameV1 {
    fn from(f: &HandlerFrame) -> Self {
        FrameV1 {
            event: f.event,
            x: f.context.x,
            pc: f.context.pc,
            pstate: f.context.pstate,
        }
    }
}

impl From<FrameV1> for HandlerFrame {
    fn from(f: FrameV1) -> Self {
        HandlerFrame {
            event: f.event,
            context: SavedContext {
                x: f.x,
                pc: f.pc,
                pstate: f.pstate,
            },
        }
    }
}

impl From<&VcpuState> for VcpuV1 {
    fn from(v: &VcpuState) -> Self {
        VcpuV1 {
            masked: v.masked,
            private_events: Bounded(v.private_events.iter().map(EventEntryV1::from).collect()),
            normal: v.normal.as_ref().map(FrameV1::from),
            critical: v.critical.as_ref().map(FrameV1::from),
        }
    }
}

impl TryFrom<VcpuV1> for VcpuState {
    type Error = SnapshotError;

    fn try_from(v: VcpuV1) -> Result<Self> {
        Ok(VcpuState {
            masked: v.masked,
            private_events: v
                .private_events
                .0
                .into_iter()
                .map(EventEntry::try_from)
                .collect::<Result<_>>()?,
            normal: v.normal.map(HandlerFrame::from),
            critical: v.critical.map(HandlerFrame::from),
        })
    }
}

impl From<&SharedEvent> for SharedEventV1 {
    fn from(s: &SharedEvent) -> Self {
        SharedEventV1 {
            entry: EventEntryV1::from(&s.entry),
            routing: match s.routing {
                Routing::Any => RoutingV1::Any,
                Routing::Pe(mpidr) => RoutingV1::Pe(mpidr),
            },
            running_on: s.running_on.map(wire_u32),
        }
    }
}

impl TryFrom<SharedEventV1> for SharedEvent {
    type Error = SnapshotError;

    fn try_from(s: SharedEventV1) -> Result<Self> {
        Ok(SharedEvent {
            entry: EventEntry::try_from(s.entry)?,
            routing: match s.routing {
                RoutingV1::Any => Routing::Any,
                RoutingV1::Pe(mpidr) => Routing::Pe(mpidr),
            },
            running_on: s
                .running_on
                .map(|v| wire_usize(v, "shared event vCPU"))
                .transpose()?,
        })
    }
}

impl From<&DispatcherState> for SnapshotV1 {
    fn from(s: &DispatcherState) -> Self {
        SnapshotV1 {
            config: ConfigV1::from(&s.config),
            vcpus: Bounded(s.vcpus.iter().map(VcpuV1::from).collect()),
            shared_events: Bounded(s.shared_events.iter().map(SharedEventV1::from).collect()),
            private_bindings: Bounded(s.private_bindings.clone()),
            shared_bindings: Bounded(s.shared_bindings.clone()),
        }
    }
}

impl TryFrom<SnapshotV1> for DispatcherState {
    type Error = SnapshotError;

    fn try_from(s: SnapshotV1) -> Result<Self> {
        Ok(DispatcherState {
            config: DispatcherConfig::try_from(s.config)?,
            vcpus: s
                .vcpus
                .0
                .into_iter()
                .map(VcpuState::try_from)
                .collect::<Result<_>>()?,
            shared_events: s
                .shared_events
                .0
                .into_iter()
                .map(SharedEvent::try_from)
                .collect::<Result<_>>()?,
            private_bindings: s.private_bindings.0,
            shared_bindings: s.shared_bindings.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: u8) -> EventEntryV1 {
        EventEntryV1 {
            number: 0x0100_0000,
            status,
            entry_point: 0x1000,
            argument: 7,
            pending: true,
        }
    }

    #[test]
    fn status_bits_map_to_handler_state() {
        let decoded = EventEntry::try_from(entry(0b101)).unwrap();

        assert_eq!(decoded.state, HandlerState::new(true, false, true));
        assert_eq!(EventEntryV1::from(&decoded), entry(0b101));
    }

    #[test]
    fn status_with_undefined_bits_is_malformed() {
        let err = EventEntry::try_from(entry(0b1001)).unwrap_err();

        assert!(matches!(err, SnapshotError::Malformed("event status")));
    }

    #[test]
    fn config_survives_the_wire_form() {
        let mut config = DispatcherConfig::new(3);
        config.mpidrs = Some(vec![0x100, 0x101, 0x1_0000_0000]);
        config.events = vec![EventDecl {
            number: 0x0100_0004,
            kind: EventKind::Shared,
            priority: Priority::Critical,
        }];
        config.bindable_interrupts = vec![40, 23];
        config.bind_slots = BindSlots {
            private: 2,
            shared: 5,
        };
        config.mte_tco = true;
        config.vendor_id = 0xABCD;

        let back = DispatcherConfig::try_from(ConfigV1::from(&config)).unwrap();

        assert_eq!(back, config);
    }

    #[test]
    fn bounded_sequence_refuses_a_longer_length_prefix() {
        let at_bound: Bounded<u8, 3> = postcard::from_bytes(&[3, 1, 2, 3]).unwrap();
        // Announces a million elements: refused without reading (or allocating for) them.
        let over = postcard::from_bytes::<Bounded<u8, 3>>(&[0xC0, 0x84, 0x3D, 1, 2, 3, 4]);

        assert_eq!(at_bound.0, [1, 2, 3]);
        assert!(over.is_err());
    }

    #[test]
    fn bounded_sequence_encodes_as_a_plain_sequence() {
        let bounded = postcard::to_allocvec(&Bounded::<u32, 4>(vec![1, 300])).unwrap();

        assert_eq!(bounded, postcard::to_allocvec(&vec![1u32, 300]).unwrap());
    }

    #[test]
    fn wire_layout_of_an_entry_is_stable() {
        // Field order and encodings are the format: this is what 1.0 writes for an entry.
        let bytes = postcard::to_allocvec(&entry(0b011)).unwrap();

        assert_eq!(
            bytes,
            [0x80, 0x80, 0x80, 0x08, 0x03, 0x80, 0x20, 0x07, 0x01]
        );
    }
}
