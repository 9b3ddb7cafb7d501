//! Seeds of the binary decoders: router registers, SDEI snapshots, MTE tag snapshots.

use hypercall_router::{CallType, Conduit, Convention, FunctionId, Owner, ServiceQuery};
use mte_memory::{
    PageBitmap, SoftwareTagStore, TagSnapshot, TagStore, TAGS_PER_PAGE, TAG_PAGE_SIZE,
};
use vm_memory::GuestAddress;

use super::headers::header_seeds;
use super::sequences::sdei_sequence_ops;
use super::Seed;
use crate::router::{RouterInput, REGISTERS};
use crate::sdei::{harness, Model};

fn call(id: u32, args: &[u64], conduit: Conduit) -> Vec<u8> {
    let mut x = [0u64; REGISTERS];
    x[0] = u64::from(id);
    for (slot, arg) in x.iter_mut().skip(1).zip(args) {
        *slot = *arg;
    }
    RouterInput { x, conduit }.to_bytes()
}

fn fast(convention: Convention, owner: Owner, number: u16) -> u32 {
    FunctionId::new(CallType::Fast, convention, owner, number).raw()
}

/// Real router calls: the Arm Architecture calls, the echo and inverting services, owner
/// queries, unsupported identifiers, reserved bits, the SVE hint and a dirty upper half.
pub fn router_seeds() -> Vec<Seed> {
    use Convention::{Smc32, Smc64};
    let t = "smccc_dispatch";
    let version = FunctionId::SMCCC_VERSION.raw();
    let features = FunctionId::SMCCC_ARCH_FEATURES.raw();
    let soc_id = FunctionId::SMCCC_ARCH_SOC_ID.raw();
    let sip32 = fast(Smc32, Owner::SiP, 0x05);
    let sip64 = fast(Smc64, Owner::SiP, 0x1F);
    let tos = FunctionId::new(CallType::Yielding, Smc64, Owner::TrustedOs(50), 0x10).raw();
    let vendor = fast(Smc32, Owner::VendorHypervisor, 2);
    let mut seeds = vec![
        Seed::new(t, "arch-version-hvc", call(version, &[], Conduit::Hvc)),
        Seed::new(t, "arch-version-smc", call(version, &[], Conduit::Smc)),
        Seed::new(
            t,
            "arch-features-version",
            call(features, &[u64::from(version)], Conduit::Hvc),
        ),
        Seed::new(
            t,
            "arch-features-soc-id",
            call(features, &[u64::from(soc_id)], Conduit::Hvc),
        ),
        Seed::new(
            t,
            "arch-features-sip",
            call(features, &[u64::from(sip64)], Conduit::Smc),
        ),
        Seed::new(
            t,
            "arch-features-workaround-1",
            call(features, &[0x8000_8000], Conduit::Hvc),
        ),
        Seed::new(t, "arch-soc-id-version", call(soc_id, &[0], Conduit::Hvc)),
        Seed::new(t, "arch-soc-id-revision", call(soc_id, &[1], Conduit::Hvc)),
        Seed::new(t, "arch-soc-id-name", call(soc_id, &[2], Conduit::Hvc)),
        Seed::new(t, "arch-workaround-1", call(0x8000_8000, &[], Conduit::Smc)),
        Seed::new(
            t,
            "sip-smc32-echo",
            call(
                sip32,
                &[1, 0xFFFF_FFFF_0000_0002, 3, 4, 5, 6, 7],
                Conduit::Smc,
            ),
        ),
        Seed::new(
            t,
            "sip-smc64-echo",
            call(sip64, &[u64::MAX; 17], Conduit::Hvc),
        ),
        Seed::new(
            t,
            "sip-out-of-range",
            call(fast(Smc32, Owner::SiP, 0x20), &[], Conduit::Hvc),
        ),
        Seed::new(
            t,
            "trusted-os-yielding",
            call(tos, &[9, 8, 7], Conduit::Smc),
        ),
        Seed::new(
            t,
            "vendor-hyp-inverting",
            call(vendor, &[0x1234, 0x5678], Conduit::Hvc),
        ),
        Seed::new(
            t,
            "standard-hyp-unsupported",
            call(
                fast(Smc64, Owner::StandardHypervisor, 0x21),
                &[],
                Conduit::Hvc,
            ),
        ),
        Seed::new(
            t,
            "reserved-bits-set",
            call(version | 0x0002_0000, &[], Conduit::Hvc),
        ),
        Seed::new(
            t,
            "reserved-bits-set-smc64",
            call(sip64 | 0x0080_0000, &[1], Conduit::Smc),
        ),
        Seed::new(
            t,
            "sve-hint",
            call(
                sip64 | hypercall_router::SVE_HINT_BIT,
                &[1, 2],
                Conduit::Smc,
            ),
        ),
    ];
    let mut dirty_upper = call(sip32, &[1, 2], Conduit::Smc);
    dirty_upper[5..9].copy_from_slice(&[0xAA; 4]);
    seeds.push(Seed::new(t, "smc32-dirty-upper-half", dirty_upper));
    for (name, owner) in [
        ("sip", Owner::SiP),
        ("vendor-hyp", Owner::VendorHypervisor),
        ("trusted-os", Owner::TrustedOs(50)),
        ("arch", Owner::ArmArchitecture),
        ("oem", Owner::Oem),
        ("cpu", Owner::Cpu),
        ("standard-secure", Owner::StandardSecure),
        ("el3-monitor", Owner::VendorEl3Monitor),
        ("reserved-10", Owner::Reserved(10)),
        ("trusted-app-48", Owner::TrustedApplication(48)),
    ] {
        for (query, q) in [
            ("call-count", ServiceQuery::CallCount),
            ("uid", ServiceQuery::Uid),
            ("revision", ServiceQuery::Revision),
        ] {
            seeds.push(Seed::new(
                t,
                format!("query-{name}-{query}"),
                call(q.id(owner).raw(), &[], Conduit::Hvc),
            ));
        }
    }
    seeds
}

/// What a newer minor of a format that takes any bytes after its data could append.
pub(super) const NEWER_DATA: &[u8] = b"optional data of a newer minor";

/// Snapshots of live dispatchers (idle, and after each SDEI sequence seed), the golden
/// v1.0 file, and the shared header damage (a newer minor with an optional section).
pub fn sdei_snapshot_seeds() -> Vec<Seed> {
    let t = "sdei_snapshot_decode";
    let golden = include_bytes!("../../../../crates/sdei-migration/tests/golden/sdei-v1.0.bin");
    let mut seeds = vec![Seed::new(t, "golden-v1.0", golden.to_vec())];
    let idle = Model::new(harness::config());
    let idle = sdei_migration::save(idle.dispatcher()).expect("an idle dispatcher saves");
    seeds.push(Seed::new(t, "idle", idle.clone()));
    for (name, ops) in sdei_sequence_ops() {
        let mut model = Model::new(harness::config());
        ops.into_iter().for_each(|op| model.step(op.into()));
        let bytes = sdei_migration::save(model.dispatcher()).expect("a live dispatcher saves");
        seeds.push(Seed::new(t, format!("after-{name}"), bytes));
    }
    // A newer minor's optional data: one optional section (tag 7, 3 bytes).
    let section = [7, 0, 3, 0, 0, 0, b'n', b'e', b'w'];
    seeds.extend(header_seeds(t, &idle, &section));
    seeds
}

/// A copy of `bytes` with `value` written at payload offset `at` (the target's checksum
/// fix-up makes the damaged payload reach the decoder).
fn patched(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = crate::header::HEADER_LEN + at;
    out[at..at + value.len()].copy_from_slice(value);
    out
}

fn tag_pattern(store: &mut SoftwareTagStore, base: u64, page: u64, seed: u8) {
    let tags: Vec<u8> = (0..TAGS_PER_PAGE)
        .map(|i| (i as u8).wrapping_mul(seed) & 0xF)
        .collect();
    store
        .write_tags(GuestAddress(base + page * TAG_PAGE_SIZE), &tags)
        .expect("the page is inside the store");
}

/// Full and incremental tag snapshots of [`SoftwareTagStore`]s with and without tags, over
/// one and several regions, the golden format 1.0 files, the shared header damage, and
/// damaged payloads.
pub fn mte_snapshot_seeds() -> Vec<Seed> {
    let t = "mte_tag_snapshot_decode";
    let a = 0x4000_0000u64;
    let b = 0x8000_0000u64;
    let one = [(GuestAddress(a), 8 * TAG_PAGE_SIZE)];
    let two = [
        (GuestAddress(a), 70 * TAG_PAGE_SIZE),
        (GuestAddress(b), 3 * TAG_PAGE_SIZE),
    ];
    let mut seeds = Vec::new();

    let blank = SoftwareTagStore::new(&one).expect("valid layout");
    let full_blank = TagSnapshot::capture_full(&blank, &one).expect("capture");
    seeds.push(Seed::new(t, "full-untagged", full_blank.encode()));

    let mut tagged = SoftwareTagStore::new(&one).expect("valid layout");
    (0..8).for_each(|p| tag_pattern(&mut tagged, a, p, 3));
    let full_all = TagSnapshot::capture_full(&tagged, &one).expect("capture");
    seeds.push(Seed::new(t, "full-all-tagged", full_all.encode()));

    let mut some = SoftwareTagStore::new(&two).expect("valid layout");
    for p in [0, 5, 64, 69] {
        tag_pattern(&mut some, a, p, 5);
    }
    tag_pattern(&mut some, b, 1, 7);
    let full_some = TagSnapshot::capture_full(&some, &two).expect("capture");
    seeds.push(Seed::new(
        t,
        "full-two-regions-some-tagged",
        full_some.encode(),
    ));

    let mut dirty_a = PageBitmap::new(70);
    [0, 1, 5, 63, 64]
        .into_iter()
        .for_each(|p| dirty_a.insert(p));
    let dirty_b = PageBitmap::new(3);
    let incremental =
        TagSnapshot::capture_dirty(&some, &two, &[dirty_a, dirty_b]).expect("capture");
    seeds.push(Seed::new(t, "incremental-some-dirty", incremental.encode()));

    let mut every = PageBitmap::new(8);
    (0..8).for_each(|p| every.insert(p));
    let incremental_all = TagSnapshot::capture_dirty(&tagged, &one, &[every]).expect("capture");
    seeds.push(Seed::new(
        t,
        "incremental-all-dirty",
        incremental_all.encode(),
    ));

    let none = TagSnapshot::capture_dirty(&tagged, &one, &[PageBitmap::new(8)]).expect("capture");
    seeds.push(Seed::new(t, "incremental-nothing-dirty", none.encode()));

    let zero_regions = TagSnapshot::capture_full(&blank, &[]).expect("capture");
    seeds.push(Seed::new(t, "no-regions", zero_regions.encode()));

    let good = full_some.encode();
    seeds.extend(header_seeds(t, &good, NEWER_DATA));
    let golden = [
        (
            "golden-v1.0-full",
            &include_bytes!("../../../../crates/mte-memory/tests/golden/mte-tags-v1.0-full.bin")[..],
        ),
        (
            "golden-v1.0-incremental",
            &include_bytes!(
                "../../../../crates/mte-memory/tests/golden/mte-tags-v1.0-incremental.bin"
            )[..],
        ),
    ];
    for (name, bytes) in golden {
        seeds.push(Seed::new(t, name, bytes.to_vec()));
    }
    let mut reserved = golden[0].1.to_vec();
    reserved[12] = 1; // Format 1.0's flags were reserved as zero.
    seeds.push(Seed::new(t, "v1.0-reserved-flags", reserved));
    // Payload offsets: kind 0, reserved 1..4, count 4..8; first region: base 8..16,
    // pages 16..24, present mode 24, tagged mode 25, reserved 26..32.
    let all = full_all.encode();
    let dirty = incremental.encode();
    let payload_damage: [(&str, &[u8], usize, &[u8]); 12] = [
        ("unknown-kind", &all, 0, &[7]),
        ("reserved-payload", &all, 1, &[1]),
        ("too-many-regions", &all, 4, &[1, 4, 0, 0]),
        ("region-unaligned", &all, 8, &[1]),
        ("region-empty", &all, 16, &[0]),
        ("region-too-large", &all, 16, &[0, 0, 0, 0x80]),
        (
            "region-wraps",
            &all,
            8,
            &[0, 0xF0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ),
        ("unknown-set-mode", &all, 24, &[3]),
        ("reserved-region", &all, 26, &[1]),
        ("full-partial-region", &dirty, 0, &[0]),
        ("tagged-not-present", &dirty, 25, &[1]),
        ("present-empty-tagged", &dirty, 24, &[0]),
    ];
    for (name, bytes, at, value) in payload_damage {
        seeds.push(Seed::new(t, name, patched(bytes, at, value)));
    }
    let reversed = [two[1], two[0]];
    let out_of_order = TagSnapshot::capture_full(&some, &reversed).expect("capture");
    seeds.push(Seed::new(t, "regions-out-of-order", out_of_order.encode()));
    seeds
}

/// refvmm snapshot manifests: the shapes refvmm writes (one and four vCPUs, with and without
/// MTE and SDEI), the golden format 1.0 manifest, the shared header damage, and a header that
/// lies about the length.
pub fn refvmm_manifest_seeds() -> Vec<Seed> {
    use refvmm::snapshot::{encode_manifest, Component, Manifest, VmShape};
    let manifest = |cpus: u8, memory: u64, mte: bool, sdei: bool| {
        let mut components = vec![
            ("vcpus.bin", 4096 * u64::from(cpus)),
            ("gic.bin", 70_000),
            ("memory.bin", memory),
            ("serial.bin", 12),
        ];
        if mte {
            components.push(("mte-tags.bin", memory / 32 / 1024));
        }
        if sdei {
            components.push(("sdei.bin", 900));
        }
        Manifest {
            shape: VmShape {
                cpus,
                memory,
                mte,
                sdei,
                pmu: cpus > 1,
                sve: false,
                pauth: cpus > 2,
                cmdline: "console=ttyS0 rdinit=/init quiet".into(),
            },
            mpidrs: (0..u64::from(cpus)).map(|i| 0x8000_0000 | i).collect(),
            components: components
                .into_iter()
                .enumerate()
                .map(|(i, (name, len))| Component {
                    name: name.into(),
                    len,
                    crc: 0x1234_5678 ^ i as u32,
                })
                .collect(),
        }
    };
    let small = encode_manifest(&manifest(1, 64 << 20, false, false)).expect("encodes");
    let full = encode_manifest(&manifest(2, 512 << 20, true, true)).expect("encodes");
    let big = encode_manifest(&manifest(4, 4 << 30, true, false)).expect("encodes");
    let t = "refvmm_snapshot_manifest";
    let golden = include_bytes!("../../../../vmm/tests/golden/snapshot-v1.0/manifest.bin");
    let mut seeds = vec![
        Seed::new(t, "one-vcpu", small),
        Seed::new(t, "two-vcpus-mte-sdei", full.clone()),
        Seed::new(t, "four-vcpus-4g", big),
        Seed::new(t, "golden-v1.0", golden.to_vec()),
    ];
    seeds.extend(header_seeds(t, &full, NEWER_DATA));
    let mut lying = full.clone();
    lying[crate::header::LEN_AT] = 0xff;
    seeds.push(Seed::new(t, "length-lies", lying));
    seeds
}
