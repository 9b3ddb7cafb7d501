//! Comparing the configuration a snapshot was taken under with the VM restoring it.

use sdei_dispatch::config::default_mpidr;
use sdei_dispatch::{BindSlots, DispatcherConfig, EventDecl, EventKind, Priority};

/// How the VM restoring a snapshot differs from the VM that took it: the first difference
/// found, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigMismatch {
    /// Different vCPU counts.
    #[error("snapshot has {snapshot} vCPUs, this VM has {vm}")]
    VcpuCount {
        /// vCPUs in the snapshot.
        snapshot: usize,
        /// vCPUs of this VM.
        vm: usize,
    },
    /// A vCPU has another MPIDR affinity.
    #[error("vCPU {vcpu} has MPIDR {snapshot:#x} in the snapshot, {vm:#x} in this VM")]
    Mpidr {
        /// vCPU index.
        vcpu: usize,
        /// Its MPIDR in the snapshot.
        snapshot: u64,
        /// Its MPIDR in this VM.
        vm: u64,
    },
    /// A different number of declared events.
    #[error("snapshot declares {snapshot} VMM events, this VM declares {vm}")]
    EventCount {
        /// Events declared in the snapshot.
        snapshot: usize,
        /// Events declared by this VM.
        vm: usize,
    },
    /// A declared event differs (number, kind, priority, or position in the list).
    #[error(
        "declared event {index} is {} in the snapshot, {} in this VM",
        describe(snapshot),
        describe(vm)
    )]
    Event {
        /// Position in the configuration's event list.
        index: usize,
        /// The declaration in the snapshot.
        snapshot: EventDecl,
        /// The declaration of this VM.
        vm: EventDecl,
    },
    /// A different set of bindable interrupts.
    #[error("snapshot offers interrupts {snapshot:?} for binding, this VM offers {vm:?}")]
    BindableInterrupts {
        /// Bindable INTIDs in the snapshot, sorted.
        snapshot: Vec<u32>,
        /// Bindable INTIDs of this VM, sorted.
        vm: Vec<u32>,
    },
    /// Different bind slot counts.
    #[error(
        "snapshot has {} private and {} shared bind slots, this VM has {} and {}",
        snapshot.private, snapshot.shared, vm.private, vm.shared
    )]
    BindSlots {
        /// Slots in the snapshot.
        snapshot: BindSlots,
        /// Slots of this VM.
        vm: BindSlots,
    },
    /// The guest has MTE on one side only.
    #[error("snapshot sets PSTATE.TCO on handler entry: {snapshot}, this VM: {vm}")]
    MteTco {
        /// Setting in the snapshot.
        snapshot: bool,
        /// Setting of this VM.
        vm: bool,
    },
    /// Another `SDEI_VERSION` vendor field.
    #[error("snapshot reports vendor field {snapshot:#x}, this VM {vm:#x}")]
    VendorId {
        /// Vendor field in the snapshot.
        snapshot: u32,
        /// Vendor field of this VM.
        vm: u32,
    },
}

fn describe(e: &EventDecl) -> String {
    let kind = match e.kind {
        EventKind::Private => "private",
        EventKind::Shared => "shared",
    };
    let priority = match e.priority {
        Priority::Normal => "normal",
        Priority::Critical => "critical",
    };
    format!("{:#x} ({kind}, {priority})", e.number)
}

/// The MPIDR of `vcpu` under `config`, without building the whole list.
fn mpidr_at(config: &DispatcherConfig, vcpu: usize) -> Option<u64> {
    match &config.mpidrs {
        Some(list) => list.get(vcpu).copied(),
        None => (vcpu < config.vcpus).then(|| default_mpidr(vcpu)),
    }
}

fn sorted(list: &[u32]) -> Vec<u32> {
    let mut list = list.to_vec();
    list.sort_unstable();
    list
}

impl ConfigMismatch {
    /// The first way `vm` differs from `snapshot` in meaning, or `None` when they describe
    /// the same VM.
    ///
    /// Two spellings of the same VM match: an MPIDR list equal to KVM's default layout and
    /// `None`, or the same bindable interrupts in another order.
    pub fn find(snapshot: &DispatcherConfig, vm: &DispatcherConfig) -> Option<ConfigMismatch> {
        if snapshot.vcpus != vm.vcpus {
            return Some(ConfigMismatch::VcpuCount {
                snapshot: snapshot.vcpus,
                vm: vm.vcpus,
            });
        }
        // Only explicit lists need comparing entry by entry: two default layouts of the same
        // vCPU count are equal. (This stays cheap for any vCPU count an input may claim.)
        let explicit = [&snapshot.mpidrs, &vm.mpidrs]
            .iter()
            .map(|list| list.as_ref().map_or(0, Vec::len))
            .max()
            .unwrap_or(0);
        for vcpu in 0..explicit {
            // A list of the wrong length is an invalid configuration: the dispatcher refuses it.
            if let (Some(s), Some(v)) = (mpidr_at(snapshot, vcpu), mpidr_at(vm, vcpu)) {
                if s != v {
                    return Some(ConfigMismatch::Mpidr {
                        vcpu,
                        snapshot: s,
                        vm: v,
                    });
                }
            }
        }
        if snapshot.events.len() != vm.events.len() {
            return Some(ConfigMismatch::EventCount {
                snapshot: snapshot.events.len(),
                vm: vm.events.len(),
            });
        }
        let differing = snapshot.events.iter().zip(&vm.events).enumerate();
        if let Some((index, (s, v))) = differing.clone().find(|(_, (s, v))| s != v) {
            return Some(ConfigMismatch::Event {
                index,
                snapshot: *s,
                vm: *v,
            });
        }
        let (ours, theirs) = (
            sorted(&snapshot.bindable_interrupts),
            sorted(&vm.bindable_interrupts),
        );
        if ours != theirs {
            return Some(ConfigMismatch::BindableInterrupts {
                snapshot: ours,
                vm: theirs,
            });
        }
        if snapshot.bind_slots != vm.bind_slots {
            return Some(ConfigMismatch::BindSlots {
                snapshot: snapshot.bind_slots,
                vm: vm.bind_slots,
            });
        }
        if snapshot.mte_tco != vm.mte_tco {
            return Some(ConfigMismatch::MteTco {
                snapshot: snapshot.mte_tco,
                vm: vm.mte_tco,
            });
        }
        if snapshot.vendor_id != vm.vendor_id {
            return Some(ConfigMismatch::VendorId {
                snapshot: snapshot.vendor_id,
                vm: vm.vendor_id,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vcpus: usize) -> DispatcherConfig {
        let mut config = DispatcherConfig::new(vcpus);
        config.events = vec![
            EventDecl {
                number: 0x0100_0000,
                kind: EventKind::Private,
                priority: Priority::Normal,
            },
            EventDecl {
                number: 0x0100_0001,
                kind: EventKind::Shared,
                priority: Priority::Critical,
            },
        ];
        config.bindable_interrupts = vec![23, 40];
        config.bind_slots = BindSlots {
            private: 1,
            shared: 1,
        };
        config
    }

    #[test]
    fn vcpu_count_mismatch_names_both_counts() {
        let found = ConfigMismatch::find(&config(4), &config(2)).unwrap();

        assert_eq!(found.to_string(), "snapshot has 4 vCPUs, this VM has 2");
    }

    #[test]
    fn default_mpidr_layout_matches_its_explicit_spelling() {
        let mut explicit = config(3);
        explicit.mpidrs = Some(vec![0, 1, 2]);

        assert_eq!(ConfigMismatch::find(&config(3), &explicit), None);
    }

    #[test]
    fn other_mpidr_names_the_vcpu() {
        let mut other = config(3);
        other.mpidrs = Some(vec![0, 1, 0x100]);

        let found = ConfigMismatch::find(&config(3), &other).unwrap();

        assert_eq!(
            found,
            ConfigMismatch::Mpidr {
                vcpu: 2,
                snapshot: 2,
                vm: 0x100
            }
        );
    }

    #[test]
    fn changed_event_priority_is_described() {
        let mut other = config(1);
        other.events[1].priority = Priority::Normal;

        let found = ConfigMismatch::find(&config(1), &other).unwrap();

        assert_eq!(
            found.to_string(),
            "declared event 1 is 0x1000001 (shared, critical) in the snapshot, \
             0x1000001 (shared, normal) in this VM"
        );
    }

    #[test]
    fn every_other_field_is_compared() {
        let base = config(2);
        type Change = fn(&mut DispatcherConfig);
        let mut changes: Vec<(Change, &str)> = vec![
            (
                |c| {
                    c.events.pop();
                },
                "EventCount",
            ),
            (
                |c| c.bindable_interrupts = vec![24, 40],
                "BindableInterrupts",
            ),
            (|c| c.bind_slots.shared = 3, "BindSlots"),
            (|c| c.mte_tco = true, "MteTco"),
            (|c| c.vendor_id = 9, "VendorId"),
        ];
        for (change, name) in changes.drain(..) {
            let mut other = base.clone();
            change(&mut other);

            let found = ConfigMismatch::find(&base, &other).unwrap();

            assert!(format!("{found:?}").starts_with(name), "{found:?}");
        }
    }

    #[test]
    fn huge_claimed_vcpu_count_is_compared_without_building_lists() {
        let mut huge = config(1);
        huge.vcpus = usize::MAX;

        assert_eq!(ConfigMismatch::find(&huge, &huge.clone()), None);
    }

    #[test]
    fn bindable_interrupts_in_another_order_match() {
        let mut other = config(1);
        other.bindable_interrupts.reverse();

        assert_eq!(ConfigMismatch::find(&config(1), &other), None);
    }
}
