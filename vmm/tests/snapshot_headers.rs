//! One snapshot-header policy for every snapshot format (`docs/snapshot-format.md`):
//!
//! - sdei-migration and mte-memory each carry the policy's code and its test vectors (neither
//!   may depend on the other); the two copies must stay identical;
//! - refvmm's own files (the manifest, `vcpus.bin`, `gic.bin`, `serial.bin`) use
//!   sdei-migration's copy and pass the same vectors;
//! - a snapshot directory of format 1.0 (bare state files, written by refvmm before the
//!   headers were unified: `golden/snapshot-v1.0/`) keeps loading.

#[path = "../../crates/sdei-migration/tests/header_vectors/mod.rs"]
mod header_vectors;

use header_vectors::{run, variant, Subject};
use refvmm::devices::serial::ConsoleState;
use refvmm::gic::state::{
    dist_layout, icc_layout, CpuState, Error as GicError, GicState, ICC_CTLR_EL1, REDIST_REGS,
};
use refvmm::snapshot::{
    decode_manifest, encode_manifest, Error, Reader, VmShape, Writer, HEADER_LEN, MANIFEST, SERIAL,
    VCPUS,
};
use refvmm::vcpu::state::{VcpuState, COUNTERS};

#[test]
fn both_copies_of_the_policy_code_are_identical() {
    let sdei = include_str!("../../crates/sdei-migration/src/header/policy.rs");
    let mte = include_str!("../../crates/mte-memory/src/snapshot/header/policy.rs");

    assert!(
        sdei == mte,
        "the two copies of header/policy.rs differ: change both together"
    );
}

#[test]
fn both_copies_of_the_test_vectors_are_identical() {
    let sdei = include_str!("../../crates/sdei-migration/tests/header_vectors/mod.rs");
    let mte = include_str!("../../crates/mte-memory/tests/header_vectors/mod.rs");

    assert!(
        sdei == mte,
        "the two copies of header_vectors/mod.rs differ: change both together"
    );
}

#[test]
fn both_libraries_implement_the_same_policy() {
    // The same format, given to both implementations, answers every vector the same way.
    let format = |magic| sdei_migration::header::SnapshotFormat {
        magic,
        major: 2,
        minor: 1,
        flags: 1,
        max_payload_len: 100,
    };
    let mte_format = mte_memory::snapshot::header::SnapshotFormat {
        magic: *b"BOTHLIBS",
        major: 2,
        minor: 1,
        flags: 1,
        max_payload_len: 100,
    };
    let sdei_format = format(*b"BOTHLIBS");
    let valid = sdei_format.seal(b"the same payload").unwrap();
    assert_eq!(mte_format.seal(b"the same payload").unwrap(), valid);
    let sdei = |b: &[u8]| {
        sdei_format
            .open(b)
            .map(drop)
            .map_err(|e| variant(&format!("{e:?}")))
    };
    let mte = |b: &[u8]| {
        mte_format
            .open(b)
            .map(drop)
            .map_err(|e| variant(&format!("{e:?}")))
    };
    let both = |b: &[u8]| {
        let (a, m) = (sdei(b), mte(b));
        assert_eq!(a, m, "the two implementations disagree on {b:02x?}");
        a
    };

    let ran = run(&Subject {
        valid,
        optional_tail: b"tail".to_vec(),
        max_payload_len: 100,
        decode: &both,
    });

    assert!(ran > 200);
}

fn shape() -> VmShape {
    VmShape {
        cpus: 2,
        memory: 64 << 20,
        mte: false,
        sdei: false,
        pmu: false,
        sve: false,
        pauth: false,
        cmdline: "console=ttyS0 rdinit=/init".into(),
    }
}

/// The GIC state of the golden snapshot (frozen: `golden/snapshot-v1.0/gic.bin` holds it).
fn golden_gic() -> GicState {
    let nr_irqs = 128;
    let ctlr: u64 = 4 << 8;
    GicState {
        nr_irqs,
        dist: dist_layout(nr_irqs)
            .iter()
            .enumerate()
            .map(|(i, &(off, _))| (off, i as u32 * 7))
            .collect(),
        spi_levels: vec![1, 2, 4],
        cpus: [0x8000_0000u64, 0x8000_0001]
            .iter()
            .map(|&mpidr| CpuState {
                mpidr,
                redist: REDIST_REGS.iter().map(|&(off, _)| (off, off ^ 5)).collect(),
                ppi_levels: 0x8000_0001,
                icc: icc_layout(ctlr)
                    .iter()
                    .map(|&(reg, _)| (reg, if reg == ICC_CTLR_EL1 { ctlr } else { 3 }))
                    .collect(),
            })
            .collect(),
    }
}

/// The vCPU states of the golden snapshot (frozen).
fn golden_vcpus() -> Vec<VcpuState> {
    let pc = 0x6030_0000_0010_0040u64;
    (0..2u64)
        .map(|i| VcpuState {
            mp_state: i as u32,
            regs: vec![
                (pc, (0x4008_0000 + i * 0x100).to_le_bytes().to_vec()),
                (COUNTERS[0], (1_000_000 + i).to_le_bytes().to_vec()),
                (COUNTERS[1], (2_000_000 + i).to_le_bytes().to_vec()),
            ],
        })
        .collect()
}

/// The console state of the golden snapshot (frozen).
fn golden_serial() -> ConsoleState {
    ConsoleState {
        regs: [0x01, 0x00, 0x05, 0xc1, 0x03, 0x60, 0x08, 0xb0, 0x42],
        input: b"ls\n".to_vec(),
    }
}

const GOLDEN_V1_0: [(&str, &[u8]); 4] = [
    (
        "manifest.bin",
        include_bytes!("golden/snapshot-v1.0/manifest.bin"),
    ),
    (
        "vcpus.bin",
        include_bytes!("golden/snapshot-v1.0/vcpus.bin"),
    ),
    ("gic.bin", include_bytes!("golden/snapshot-v1.0/gic.bin")),
    (
        "serial.bin",
        include_bytes!("golden/snapshot-v1.0/serial.bin"),
    ),
];

/// A scratch directory of its own, removed at the end.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "refvmm-snapshot-headers-{what}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A snapshot directory of the current format holding the golden states.
fn current_snapshot(s: &Scratch) -> std::path::PathBuf {
    let dir = s.0.join("snap");
    let mut w = Writer::create(&dir).unwrap();
    w.put("vcpus.bin", &VCPUS.encode(&golden_vcpus()).unwrap())
        .unwrap();
    w.put("gic.bin", &golden_gic().encode()).unwrap();
    w.put("serial.bin", &SERIAL.encode(&golden_serial()).unwrap())
        .unwrap();
    w.finish(shape(), vec![0x8000_0000, 0x8000_0001]).unwrap();
    dir
}

fn read_states(r: &Reader) -> (Vec<VcpuState>, GicState, ConsoleState) {
    (
        VCPUS.decode(&r.read("vcpus.bin").unwrap()).unwrap(),
        GicState::decode(&r.read("gic.bin").unwrap()).unwrap(),
        SERIAL.decode(&r.read("serial.bin").unwrap()).unwrap(),
    )
}

#[test]
fn a_current_snapshot_reads_back() {
    let s = Scratch::new("current");
    let r = Reader::open(&current_snapshot(&s)).unwrap();

    let (vcpus, gic, serial) = read_states(&r);

    assert_eq!(vcpus, golden_vcpus());
    assert_eq!(gic, golden_gic());
    assert_eq!(serial, golden_serial());
}

#[test]
fn every_state_file_of_a_current_snapshot_starts_with_its_header() {
    let s = Scratch::new("magics");
    let dir = current_snapshot(&s);

    for (name, magic) in [
        (MANIFEST, b"REFVMSNP"),
        ("vcpus.bin", b"REFVMCPU"),
        ("gic.bin", b"REFVMGIC"),
        ("serial.bin", b"REFVMCON"),
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(&bytes[..8], magic, "{name}");
        assert_eq!(
            bytes[8..12],
            [1, 0, u8::from(name == MANIFEST), 0],
            "{name} version"
        );
    }
}

#[test]
fn a_format_1_0_snapshot_keeps_loading() {
    let s = Scratch::new("golden");
    for (name, bytes) in GOLDEN_V1_0 {
        std::fs::write(s.0.join(name), bytes).unwrap();
    }

    let r = Reader::open(&s.0).unwrap();
    let (vcpus, gic, serial) = read_states(&r);

    assert_eq!(r.manifest.shape, shape());
    assert_eq!(r.manifest.mpidrs, [0x8000_0000, 0x8000_0001]);
    assert_eq!(vcpus, golden_vcpus());
    assert_eq!(gic, golden_gic());
    assert_eq!(serial, golden_serial());
}

#[test]
fn format_1_0_state_files_are_this_format_without_the_header() {
    // The payloads did not change: 1.0's files are the current payloads (the GIC state's
    // behind its old version word), and what replaces the version word is the header.
    let golden = |n: &str| GOLDEN_V1_0.iter().find(|(name, _)| *name == n).unwrap().1;
    let vcpus = VCPUS.encode(&golden_vcpus()).unwrap();
    let gic = golden_gic().encode();
    let serial = SERIAL.encode(&golden_serial()).unwrap();

    assert_eq!(&vcpus[HEADER_LEN..], golden("vcpus.bin"));
    assert_eq!(&serial[HEADER_LEN..], golden("serial.bin"));
    assert_eq!(golden("gic.bin")[..4], 1u32.to_le_bytes());
    assert_eq!(&gic[HEADER_LEN..], &golden("gic.bin")[4..]);
}

#[test]
fn a_format_1_1_snapshot_with_bare_state_files_is_refused() {
    // The manifest's version decides: bare files in a current snapshot are not read as 1.0's.
    let s = Scratch::new("mixed");
    let dir = s.0.join("snap");
    let mut w = Writer::create(&dir).unwrap();
    w.put(
        "vcpus.bin",
        &postcard::to_allocvec(&golden_vcpus()).unwrap(),
    )
    .unwrap();
    w.put("gic.bin", GOLDEN_V1_0[2].1).unwrap();
    w.finish(shape(), vec![0x8000_0000, 0x8000_0001]).unwrap();
    let r = Reader::open(&dir).unwrap();

    let vcpus = VCPUS.decode::<Vec<VcpuState>>(&r.read("vcpus.bin").unwrap());
    let gic = GicState::decode(&r.read("gic.bin").unwrap());

    assert!(
        matches!(
            vcpus,
            Err(Error::Header {
                file: "vcpus.bin",
                ..
            })
        ),
        "{vcpus:?}"
    );
    assert!(matches!(gic, Err(GicError::Header(_))), "{gic:?}");
}

fn refvmm_error(e: &Error) -> String {
    match e {
        Error::Header { error, .. } => variant(&format!("{error:?}")),
        other => format!("payload: {other}"),
    }
}

#[test]
fn the_manifest_follows_the_shared_header_vectors() {
    let m = decode_manifest(GOLDEN_V1_0[0].1).unwrap();
    let decode = |b: &[u8]| decode_manifest(b).map(drop).map_err(|e| refvmm_error(&e));

    run(&Subject {
        valid: encode_manifest(&m).unwrap(),
        optional_tail: b"a newer minor's data".to_vec(),
        max_payload_len: refvmm::snapshot::MAX_MANIFEST,
        decode: &decode,
    });
}

#[test]
fn the_vcpu_state_file_follows_the_shared_header_vectors() {
    let decode = |b: &[u8]| {
        VCPUS
            .decode::<Vec<VcpuState>>(b)
            .map(drop)
            .map_err(|e| refvmm_error(&e))
    };

    run(&Subject {
        valid: VCPUS.encode(&golden_vcpus()).unwrap(),
        optional_tail: b"a newer minor's data".to_vec(),
        max_payload_len: VCPUS.format.max_payload_len,
        decode: &decode,
    });
}

#[test]
fn the_console_state_file_follows_the_shared_header_vectors() {
    let decode = |b: &[u8]| {
        SERIAL
            .decode::<ConsoleState>(b)
            .map(drop)
            .map_err(|e| refvmm_error(&e))
    };

    run(&Subject {
        valid: SERIAL.encode(&golden_serial()).unwrap(),
        optional_tail: b"a newer minor's data".to_vec(),
        max_payload_len: SERIAL.format.max_payload_len,
        decode: &decode,
    });
}

#[test]
fn the_gic_state_file_follows_the_shared_header_vectors() {
    let decode = |b: &[u8]| {
        GicState::decode(b).map(drop).map_err(|e| match e {
            GicError::Header(h) => variant(&format!("{h:?}")),
            other => format!("payload: {other}"),
        })
    };

    run(&Subject {
        valid: golden_gic().encode(),
        optional_tail: b"a newer minor's data".to_vec(),
        max_payload_len: refvmm::gic::state::MAX_PAYLOAD_LEN,
        decode: &decode,
    });
}
