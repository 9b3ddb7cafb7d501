//! Runs every committed corpus input and regression input through its target's function,
//! on the stable toolchain, and checks that the committed corpus is the generated one.

use std::path::Path;

use fuzz_common::corpus::{default_dir, regressions_dir, seeds};
use fuzz_common::sdei::{decode_ops, harness, Model};
use fuzz_common::TARGETS;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let data = std::fs::read(e.path()).expect("corpus file is readable");
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_runs_clean() {
    for (target, run) in TARGETS {
        let files = inputs(&default_dir().join(target));

        for (name, data) in &files {
            println!("{target}/{name}");
            run(data);
        }

        assert!(
            files.len() >= 10,
            "{target}: only {} corpus inputs",
            files.len()
        );
    }
}

#[test]
fn every_regression_input_runs_clean() {
    let mut ran = 0;
    for (target, run) in TARGETS {
        for (name, data) in inputs(&regressions_dir().join(target)) {
            println!("regression {target}/{name}");
            run(&data);
            ran += 1;
        }
    }
    println!("ran {ran} regression inputs");
}

#[test]
fn committed_corpus_holds_every_generated_seed() {
    for seed in seeds() {
        let path = default_dir().join(seed.target).join(&seed.name);

        let committed = std::fs::read(&path);

        assert_eq!(
            committed.ok().as_deref(),
            Some(seed.data.as_slice()),
            "{} is missing or stale: run `cargo run --manifest-path fuzz/Cargo.toml -p fuzz-common --bin gen_corpus`",
            path.display()
        );
    }
}

#[test]
fn committed_corpus_holds_nothing_but_generated_seeds() {
    let seeds = seeds();
    for (target, _) in TARGETS {
        for (name, _) in inputs(&default_dir().join(target)) {
            assert!(
                seeds.iter().any(|s| s.target == target && s.name == name),
                "{target}/{name} is not a generated seed (fuzzer finds belong in fuzz/work or fuzz/regressions)"
            );
        }
    }
}

#[test]
fn sdei_seed_sequences_start_and_complete_handlers() {
    let mut dispatched = 0;
    let mut completed = 0;

    for (_, data) in inputs(&default_dir().join("sdei_sequences")) {
        let mut model = Model::new(harness::config());
        for op in decode_ops(&data) {
            model.step(op.into());
            model.check_invariants();
        }
        dispatched += model.dispatched;
        completed += model.completed;
    }

    assert!(dispatched >= 10, "seeds started {dispatched} handlers");
    assert!(completed >= 8, "seeds completed {completed} handlers");
}

#[test]
fn decoder_seeds_include_inputs_that_decode() {
    let decodes = |target: &str, ok: &dyn Fn(&[u8]) -> bool| {
        inputs(&default_dir().join(target))
            .iter()
            .filter(|(_, d)| ok(d))
            .count()
    };

    let sdei = decodes("sdei_snapshot_decode", &|d| {
        sdei_migration::fuzz_decode(d).is_ok()
    });
    let mte = decodes("mte_tag_snapshot_decode", &|d| {
        mte_memory::TagSnapshot::decode(d).is_ok()
    });
    let api = decodes("refvmm_api", &|d| {
        refvmm::api::parse_request(&String::from_utf8_lossy(d)).is_ok()
    });

    assert!(sdei >= 10, "{sdei} SDEI snapshots decode");
    assert!(mte >= 5, "{mte} tag snapshots decode");
    assert!(api >= 4, "{api} API requests parse");
}

#[test]
fn header_seeds_of_every_snapshot_format_meet_the_rule_they_break() {
    fn kind<E: std::fmt::Debug>(r: Result<(), E>, header: impl Fn(&E) -> Option<String>) -> String {
        match r {
            Ok(()) => "accepted".into(),
            Err(e) => header(&e).unwrap_or_else(|| format!("payload {e:?}")),
        }
    }
    fn name(e: &impl std::fmt::Debug) -> String {
        let d = format!("{e:?}");
        d.split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_owned()
    }
    let refvmm_kind = |r: Result<(), refvmm::snapshot::Error>| {
        kind(r, |e| match e {
            refvmm::snapshot::Error::Header { error, .. } => Some(name(error)),
            _ => None,
        })
    };
    /// A target's name and how it names the header rule an input broke.
    type Decoder<'a> = (&'a str, &'a dyn Fn(&[u8]) -> String);
    let decoders: [Decoder; 6] = [
        ("sdei_snapshot_decode", &|d| {
            kind(sdei_migration::fuzz_decode(d), |e| match e {
                sdei_migration::SnapshotError::Header(h) => Some(name(h)),
                _ => None,
            })
        }),
        ("mte_tag_snapshot_decode", &|d| {
            kind(mte_memory::TagSnapshot::decode(d).map(drop), |e| match e {
                mte_memory::snapshot::Error::Header(h) => Some(name(h)),
                _ => None,
            })
        }),
        ("refvmm_snapshot_manifest", &|d| {
            refvmm_kind(refvmm::snapshot::decode_manifest(d).map(drop))
        }),
        ("refvmm_gic_state", &|d| {
            use refvmm::gic::state::{Error, GicState};
            kind(GicState::decode(d).map(drop), |e| match e {
                Error::Header(h) => Some(name(h)),
                _ => None,
            })
        }),
        ("refvmm_vcpu_state", &|d| {
            refvmm_kind(
                refvmm::snapshot::VCPUS
                    .decode::<Vec<refvmm::vcpu::state::VcpuState>>(d)
                    .map(drop),
            )
        }),
        ("refvmm_console_state", &|d| {
            refvmm_kind(
                refvmm::snapshot::SERIAL
                    .decode::<refvmm::devices::serial::ConsoleState>(d)
                    .map(drop),
            )
        }),
    ];
    let rules = [
        ("empty", "Truncated"),
        ("header-only", "Truncated"),
        ("short-header", "Truncated"),
        ("bad-magic", "BadMagic"),
        ("newer-major", "UnsupportedMajor"),
        ("major-zero", "UnsupportedMajor"),
        ("newer-minor", "UnsupportedMinor"),
        ("newer-minor-optional-only", "accepted"),
        ("unknown-flags", "UnknownFlags"),
        ("oversized-payload", "Oversized"),
        ("header-checksum", "HeaderChecksumMismatch"),
        ("payload-bit-flip", "PayloadChecksumMismatch"),
        ("truncated", "Truncated"),
        ("trailing-byte", "TrailingBytes"),
    ];

    for (target, decode) in decoders {
        let seeds = inputs(&default_dir().join(target));
        for (seed, want) in rules {
            let data = &seeds
                .iter()
                .find(|(n, _)| n == seed)
                .unwrap_or_else(|| panic!("{target} has no seed {seed}"))
                .1;

            assert_eq!(decode(data), want, "{target}/{seed}");
        }
    }
}

#[test]
fn virtio_pmem_seeds_flush_answer_and_fail() {
    use fuzz_common::virtio_pmem::{run_device, HEADER_LEN};

    let reports: Vec<_> = inputs(&default_dir().join("virtio_pmem"))
        .into_iter()
        .filter(|(_, d)| d.len() >= HEADER_LEN)
        .map(|(name, d)| (name, run_device(&d)))
        .inspect(|(name, r)| println!("virtio_pmem/{name}: {r:?}"))
        .collect();
    let count = |f: &dyn Fn(&fuzz_common::virtio_pmem::Report) -> bool| {
        reports.iter().filter(|(_, r)| f(r)).count()
    };

    let flushed_ok = count(&|r| r.flushes == 1 && r.answered_ok > 0);
    let answered_eio = count(&|r| r.answered_eio > 0);
    let resets = count(&|r| r.needs_reset);
    let refused = count(&|r| !r.running);
    let many = count(&|r| r.returned >= 100);

    assert!(flushed_ok >= 5, "{flushed_ok} seeds flush and answer 0");
    assert!(
        answered_eio >= 5,
        "{answered_eio} seeds get an error answer"
    );
    assert!(
        resets >= 2,
        "{resets} seeds make the device ask for a reset"
    );
    assert!(refused >= 4, "{refused} seeds never get the device running");
    assert_eq!(many, 1, "one seed fills a 256-entry queue");
}

#[test]
fn cli_seeds_include_accepted_pmem_devices() {
    use clap::Parser;
    use fuzz_common::refvmm_cli::arguments;

    let accepted = inputs(&default_dir().join("refvmm_cli"))
        .into_iter()
        .filter(|(name, _)| name.starts_with("pmem-"))
        .filter_map(|(_, d)| {
            let cli = refvmm::config::Cli::try_parse_from(
                std::iter::once("refvmm".to_string()).chain(arguments(&d)),
            )
            .ok()?;
            match refvmm::config::Launch::from_cli(cli, &refvmm::files::HostFiles).ok()? {
                refvmm::config::Launch::Boot(c) => Some(c.pmem.len()),
                refvmm::config::Launch::Restore(_) => None,
            }
        })
        .collect::<Vec<_>>();

    assert_eq!(accepted, vec![1, 2], "pmem seeds accepted, devices each");
}

#[test]
fn state_seeds_include_states_restore_accepts_and_refuses() {
    use refvmm::gic::state::GicState;
    use refvmm::vcpu::state::VcpuState;

    let gic = inputs(&default_dir().join("refvmm_gic_state"));
    let gic_ok = gic
        .iter()
        .filter(|(_, d)| GicState::decode(d).is_ok())
        .count();
    let built = gic
        .iter()
        .filter_map(|(_, d)| fuzz_common::refvmm_state::gic_input(d))
        .filter(|i| i.damage.is_some() && i.valid_shape && i.state.check().is_err())
        .count();
    let vcpus: Vec<Option<Vec<VcpuState>>> = inputs(&default_dir().join("refvmm_vcpu_state"))
        .iter()
        .map(|(_, d)| refvmm::snapshot::VCPUS.decode(d).ok())
        .collect();
    let all_ok = |states: &Vec<VcpuState>, want: bool| {
        states.iter().enumerate().all(|(i, s)| s.check(i).is_ok()) == want
    };
    let accepted = vcpus
        .iter()
        .flatten()
        .filter(|s| !s.is_empty() && all_ok(s, true));
    let refused = vcpus.iter().flatten().filter(|s| all_ok(s, false));

    // Five shapes, and the newer minor whose header says all it adds is optional.
    assert_eq!(gic_ok, 6, "GIC states that decode");
    assert_eq!(
        built, 6,
        "every kind of damage to a built GIC state is refused"
    );
    assert!(accepted.count() >= 4, "vCPU states restore accepts");
    assert!(refused.count() >= 4, "vCPU states restore refuses");
}

#[test]
fn mmio_seeds_write_read_interrupt_and_set_up_virtio() {
    use fuzz_common::refvmm_mmio::run_mmio;

    let reports: Vec<_> = inputs(&default_dir().join("refvmm_mmio_sequences"))
        .into_iter()
        .map(|(name, d)| (name, run_mmio(&d)))
        .inspect(|(name, r)| println!("refvmm_mmio_sequences/{name}: {r:?}"))
        .collect();
    let count = |f: &dyn Fn(&fuzz_common::refvmm_mmio::Report) -> bool| {
        reports.iter().filter(|(_, r)| f(r)).count()
    };

    assert_eq!(count(&|r| r.output >= 30), 1, "one seed prints a line");
    assert!(
        count(&|r| r.input_read >= 5) >= 2,
        "seeds read console input"
    );
    assert!(
        count(&|r| r.console_irqs > 0) >= 3,
        "seeds raise the console interrupt"
    );
    assert!(
        count(&|r| r.unbacked >= 4) >= 2,
        "seeds access unbacked addresses"
    );
    assert_eq!(
        count(&|r| r.driver_ok),
        1,
        "one seed sets the virtio device up"
    );
}

#[test]
fn console_seeds_restore_with_and_without_pending_interrupts() {
    use refvmm::devices::serial::ConsoleState;

    let wires: Vec<ConsoleState> = inputs(&default_dir().join("refvmm_console_state"))
        .iter()
        .filter_map(|(_, d)| refvmm::snapshot::SERIAL.decode(d).ok())
        .collect();
    let restorable = wires.iter().filter(|w| w.input.len() <= 64);
    let pending = restorable.clone().filter(|w| {
        let [_, _, ier, iir, ..] = w.regs;
        (ier & 2 != 0 && iir & 2 != 0) || (ier & 1 != 0 && iir & 4 != 0)
    });

    assert!(restorable.count() >= 9, "console states restore");
    assert!(pending.count() >= 3, "console states raise an interrupt");
    assert!(wires.iter().any(|w| w.input.len() > 64), "one is refused");
}

#[test]
fn component_seeds_read_intact_components_and_refuse_damaged_ones() {
    use fuzz_common::refvmm_components::run_components;

    let reports: Vec<_> = inputs(&default_dir().join("refvmm_snapshot_components"))
        .into_iter()
        .map(|(name, d)| (name, run_components(&d)))
        .inspect(|(name, r)| println!("refvmm_snapshot_components/{name}: {r:?}"))
        .collect();
    let get = |n: &str| reports.iter().find(|(name, _)| name == n).map(|(_, r)| *r);

    let full = get("refvmm-snapshot").expect("the refvmm-shaped seed");
    assert!(
        full.opened && full.read == 6 && full.refused == 0,
        "{full:?}"
    );
    let refused_once = reports
        .iter()
        .filter(|(_, r)| r.opened && r.read == 5 && r.refused == 1)
        .count();
    let not_opened = reports.iter().filter(|(_, r)| !r.opened).count();

    assert!(
        refused_once >= 8,
        "{refused_once} seeds with one damaged component"
    );
    assert!(not_opened >= 6, "{not_opened} seeds that open refuses");
    assert!(get("raw-manifest").is_some_and(|r| r.opened));
}

#[test]
fn every_fuzz_target_file_is_a_bin_and_a_listed_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    files.sort();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ")))
        .map(|n| n.trim_matches('"').to_string())
        .collect();
    bins.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(t, _)| t.to_string()).collect();
    listed.sort();

    assert_eq!(files, bins, "fuzz_targets/*.rs and [[bin]] entries");
    assert_eq!(files, listed, "fuzz_targets/*.rs and fuzz_common::TARGETS");
}
