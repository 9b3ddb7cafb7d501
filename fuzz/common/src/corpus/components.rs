//! Seeds for `refvmm_snapshot_components`: a snapshot directory as refvmm writes it, and each
//! way a component or the manifest can be damaged, missing or replaced.

use super::Seed;

/// Name indexes in [`crate::refvmm_components::NAMES`].
const VCPUS: u8 = 0;
const GIC: u8 = 1;
const MEMORY: u8 = 2;
const MTE: u8 = 3;
const SDEI: u8 = 4;
const SERIAL: u8 = 5;
const NOTES: u8 = 6;
const SLASH: u8 = 7;
const DOT: u8 = 8;

/// Mode bits.
const MISSING: u8 = 1;
const LINK: u8 = 2;
const LEN_MORE: u8 = 1 << 2;
const LEN_LESS: u8 = 2 << 2;
const LEN_CAP: u8 = 3 << 2;
const BAD_CRC: u8 = 1 << 4;
const DIRECTORY: u8 = 1 << 5;
const CAP_PLUS_ONE: u8 = 1 << 6;
const LONG: u8 = 1 << 7;

fn contents(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(7)))
        .collect()
}

/// A snapshot directory: the flags byte, guest RAM / 64, then `(name, mode, contents)`.
fn snapshot(flags: u8, memory64: u8, components: &[(u8, u8, Vec<u8>)]) -> Vec<u8> {
    let mut d = vec![flags, memory64];
    for (name, mode, bytes) in components {
        let len = bytes.len() - if mode & LONG != 0 { 3840 } else { 0 };
        d.extend_from_slice(&[*name, *mode, u8::try_from(len).expect("at most 255")]);
        d.extend_from_slice(bytes);
    }
    d
}

/// The components refvmm writes, with plausible sizes (guest RAM 1 KiB).
fn refvmm_components() -> Vec<(u8, u8, Vec<u8>)> {
    vec![
        (VCPUS, 0, contents(200, 1)),
        (GIC, 0, contents(255, 2)),
        (MEMORY, 0, contents(128, 3)),
        (MTE, 0, contents(4, 4)),
        (SDEI, 0, contents(90, 5)),
        (SERIAL, 0, contents(11, 6)),
    ]
}

/// Every seed of the target.
pub fn component_seeds() -> Vec<Seed> {
    const T: &str = "refvmm_snapshot_components";
    let mut seeds = vec![
        Seed::new(T, "refvmm-snapshot", snapshot(0, 16, &refvmm_components())),
        Seed::new(
            T,
            "large-components",
            snapshot(
                0,
                255,
                &[
                    (MEMORY, LONG, contents(4000, 9)),
                    (GIC, LONG, contents(3840, 8)),
                ],
            ),
        ),
        Seed::new(T, "no-components", vec![0]),
        Seed::new(T, "empty", Vec::new()),
        Seed::new(T, "manifest-missing", snapshot(2, 16, &refvmm_components())),
        Seed::new(
            T,
            "manifest-directory",
            snapshot(4, 16, &refvmm_components()),
        ),
        Seed::new(T, "manifest-symlink", snapshot(6, 16, &refvmm_components())),
    ];
    let damaged = [
        ("length-one-more", GIC, LEN_MORE),
        ("length-one-less", GIC, LEN_LESS),
        ("crc-wrong", SERIAL, BAD_CRC),
        ("file-missing", VCPUS, MISSING),
        ("file-is-a-symlink", SDEI, LINK),
        ("file-is-a-directory", MTE, DIRECTORY),
        ("length-at-the-cap", GIC, LEN_CAP),
        ("length-over-the-cap", GIC, LEN_CAP | CAP_PLUS_ONE),
        ("memory-at-guest-ram", MEMORY, LEN_CAP),
        ("memory-over-guest-ram", MEMORY, LEN_CAP | CAP_PLUS_ONE),
    ];
    for (name, which, mode) in damaged {
        let mut c = refvmm_components();
        for comp in c.iter_mut().filter(|c| c.0 == which) {
            comp.1 = mode;
        }
        seeds.push(Seed::new(T, name, snapshot(0, 16, &c)));
    }
    let mut dup = refvmm_components();
    dup.push((GIC, LEN_MORE | BAD_CRC, Vec::new()));
    seeds.push(Seed::new(T, "name-listed-twice", snapshot(0, 16, &dup)));
    let mut first_lies = refvmm_components();
    first_lies.insert(0, (SERIAL, BAD_CRC, contents(11, 6)));
    seeds.push(Seed::new(
        T,
        "first-of-two-listings-lies",
        snapshot(0, 16, &first_lies),
    ));
    for (name, which) in [("name-with-slash", SLASH), ("name-with-leading-dot", DOT)] {
        let mut c = refvmm_components();
        c.push((which, 0, contents(3, 0)));
        seeds.push(Seed::new(T, name, snapshot(0, 16, &c)));
    }
    let many: Vec<_> = (0..18u8)
        .map(|i| (i % 7, 0, contents(usize::from(i) * 3, i)))
        .collect();
    seeds.push(Seed::new(T, "eighteen-components", snapshot(0, 16, &many)));
    seeds.push(Seed::new(
        T,
        "extra-name",
        snapshot(0, 16, &[(NOTES, 0, b"taken by hand".to_vec())]),
    ));

    let manifest = raw_manifest();
    let mut raw = vec![1];
    raw.extend_from_slice(&manifest);
    seeds.push(Seed::new(T, "raw-manifest", raw.clone()));
    seeds.push(Seed::new(
        T,
        "raw-manifest-truncated",
        raw[..raw.len() - 4].to_vec(),
    ));
    seeds
}

/// The manifest of a two-vCPU snapshot, for the raw-manifest mode.
fn raw_manifest() -> Vec<u8> {
    use refvmm::snapshot::{encode_manifest, Component, Manifest, VmShape};
    encode_manifest(&Manifest {
        shape: VmShape {
            cpus: 2,
            memory: 64 << 20,
            mte: false,
            sdei: true,
            pmu: false,
            sve: false,
            pauth: false,
            cmdline: "console=ttyS0".into(),
        },
        mpidrs: vec![0x8000_0000, 0x8000_0001],
        components: [
            "vcpus.bin",
            "gic.bin",
            "memory.bin",
            "sdei.bin",
            "serial.bin",
        ]
        .iter()
        .map(|n| Component {
            name: (*n).into(),
            len: 100,
            crc: 0xdead_beef,
        })
        .collect(),
    })
    .expect("the manifest encodes")
}
