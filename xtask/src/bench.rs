//! `cargo xtask bench [--rounds N] [--peer NAME=PATH]...`: ratio benchmarks in one run of the
//! emulated machine (never part of the test command; docs/measurements.md has the results).
//!
//! - Forwarded hypercalls: hypercall-router's `kvm_forward_ratio` (the barest forwarding loop,
//!   without and with an in-kernel GICv3) and refvmm's raw test payload (a forwarded
//!   `SDEI_VERSION`), each against an in-kernel `PSCI_VERSION` timed in the same VM, the runs
//!   interleaved; the figures are medians of the per-round ratios.
//! - SDEI delivery against SPI injection (`vmm/examples/sdei_latency.rs`).
//! - MTE page operations: mte-memory's `mte_page_ratio`, a tag-zeroing page clear against a
//!   plain one and a tag-copying page copy against a plain one (meaningful on arm64 hardware
//!   only: in emulation they say what QEMU makes of the instructions).
//! - Boots: Debian's kernel with a busybox init (2 vCPUs, 512 MiB) that first-touches 256 MiB
//!   and powers off, on refvmm's default backing and on a memfd, each without and with `--mte`
//!   (a guest that never uses tags), and on every `--peer`; rounds interleaved. Launch to
//!   `/init`, launch to exit, the guest's own time for the memory touch, and the VMM's peak
//!   RSS, as medians and as ratios to refvmm's default.
//!
//! A peer is another VMM binary a developer has at hand (nothing of it is committed). NAME
//! `firecracker`, `cloud-hypervisor` or `kvmtool` selects that VMM's documented command line
//! (Firecracker's from a generated `--config-file`); any other NAME runs PATH as
//! `PATH <kernel> <initrd> <cmdline> <cpus> <memory MiB>` with an 8250 console (`ttyS0`).

use crate::guest::GUEST_INIT_PRELUDE;
use crate::util::Fail;
use crate::{cross, l1, setup, Outcome};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    rounds: usize,
    peers: Vec<(String, PathBuf)>,
}

/// Parses `[--rounds N] [--peer NAME=PATH]...`.
pub fn parse(args: &[&str]) -> Result<Request, String> {
    let mut r = Request {
        rounds: 5,
        peers: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--rounds" => {
                r.rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (1..=50).contains(n))
                    .ok_or("--rounds needs a number from 1 to 50")?;
            }
            "--peer" => {
                let spec = it.next().ok_or("--peer needs NAME=PATH")?;
                let (name, path) = spec
                    .split_once('=')
                    .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                    .ok_or_else(|| format!("--peer {spec:?}: expected NAME=PATH"))?;
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(format!(
                        "--peer {spec:?}: NAME may hold letters, digits, - and _ only"
                    ));
                }
                if name.starts_with("refvmm") || r.peers.iter().any(|(n, _)| n == name) {
                    return Err(format!("--peer {spec:?}: the name {name} is taken"));
                }
                r.peers.push((name.to_string(), PathBuf::from(path)));
            }
            other => return Err(format!("unknown bench option {other:?}")),
        }
    }
    Ok(r)
}

/// The guest: report `/init`, first-touch 256 MiB (a file on the initramfs), report the
/// guest's own time for it, power off.
const BOOT_INIT: &str = r#"echo "@@INIT"
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/touch bs=1M count=256 2>/dev/null
echo "@@TOUCH $t0 $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"#;

/// The kernel command line of every boot, but for the console.
const CMDLINE_REST: &str = "rdinit=/init quiet panic=-1";

/// `boot NAME CMD...` in the emulated machine: runs CMD and prints `@@B NAME <event> <seconds
/// since launch>` for `/init`, the end of the memory touch (with the guest's own time and the
/// VMM's peak RSS) and the VMM's exit (with its status).
const L1_BOOT_FN: &str = r#"
up() { cut -d' ' -f1 /proc/uptime; }
since() { echo "$(up) $1" | awk '{ printf "%.3f", $1 - $2 }'; }
boot() {
  name=$1; shift
  prog=$(basename "$1")
  t0=$(up)
  ( "$@" < /dev/null; echo "@@EXITED $?" ) 2>&1 | while IFS= read -r line; do
    case "$line" in
      *@@INIT*) echo "@@B $name init $(since $t0)" ;;
      *@@TOUCH*)
        set -- ${line##*@@TOUCH }
        pid=$(pidof "$prog" | cut -d" " -f1)
        hwm=$(awk '/^VmHWM:/ {print $2}' /proc/$pid/status 2>/dev/null)
        echo "@@B $name touch $(since $t0) $(echo "$2 $1" | awk '{ printf "%.3f", $1 - $2 }') ${hwm:-0}" ;;
      *@@EXITED*) echo "@@B $name exit $(since $t0) ${line##* }" ;;
      *error*|*Error*) echo "@@B-LOG $name $line" ;;
    esac
  done
}
"#;

/// The shell command that boots the guest on peer `name` at `/work/<name>` (the binary).
fn peer_command(name: &str) -> String {
    let bin = format!("./peer-{name}");
    match name {
        "firecracker" => format!(
            r#"printf '{{"boot-source":{{"kernel_image_path":"Image","initrd_path":"guest.cpio","boot_args":"keep_bootcon console=ttyS0 reboot=k {CMDLINE_REST}"}},"machine-config":{{"vcpu_count":2,"mem_size_mib":512}}}}' > fc.json; boot {name} {bin} --no-api --config-file fc.json"#
        ),
        "cloud-hypervisor" => format!(
            r#"boot {name} {bin} --kernel Image --initramfs guest.cpio --cmdline "console=ttyAMA0 {CMDLINE_REST}" --cpus boot=2 --memory size=512M --serial tty --console off"#
        ),
        "kvmtool" => format!(
            r#"boot {name} {bin} run --kernel Image --initrd guest.cpio --params "console=ttyS0 {CMDLINE_REST}" --cpus 2 --mem 512 --console serial"#
        ),
        _ => format!(r#"boot {name} {bin} Image guest.cpio "console=ttyS0 {CMDLINE_REST}" 2 512"#),
    }
}

/// refvmm's boots: (name, extra options).
const REFVMM_BOOTS: [(&str, &str); 4] = [
    ("refvmm", ""),
    ("refvmm-mte", "--mte"),
    ("refvmm-memfd", "--memory-backing memfd"),
    ("refvmm-memfd-mte", "--memory-backing memfd --mte"),
];

fn script(req: &Request) -> String {
    let mut s = String::from(L1_BOOT_FN);
    for _ in 0..3 {
        s.push_str(
            "./kvm_forward_ratio || exit 1\n\
             ./refvmm --kernel raw-payload.bin --sdei --cpus 1 --memory 64M \
             --cmdline 'payload.cpus=1 payload.bench=2000' || exit 1\n",
        );
    }
    s.push_str("./sdei_latency ./refvmm ./raw-payload.bin 300 || exit 1\n");
    s.push_str("./mte_page_ratio || exit 1\n");
    for _ in 0..req.rounds {
        for (name, extra) in REFVMM_BOOTS {
            s.push_str(&format!(
                "boot {name} ./refvmm --kernel Image --initrd guest.cpio --cpus 2 --memory 512M {extra} --cmdline \"console=ttyS0 {CMDLINE_REST}\"\n"
            ));
        }
        for (name, _) in &req.peers {
            s.push_str(&peer_command(name));
            s.push('\n');
        }
    }
    s
}

/// The median of `v` (the upper one of an even count); `None` if empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn word<T: std::str::FromStr>(line: &str, name: &str) -> Option<T> {
    let mut it = line.split_whitespace();
    it.find(|w| *w == name)?;
    it.next()?.parse().ok()
}

/// Per-round ratios of forwarded to in-kernel calls: (bare, bare with GICv3, refvmm).
fn forward_ratios(out: &str) -> [Vec<f64>; 3] {
    let mut r: [Vec<f64>; 3] = Default::default();
    for l in out.lines() {
        let which = if l.starts_with("kvm_forward_ratio: bare: round") {
            0
        } else if l.starts_with("kvm_forward_ratio: with GICv3: round") {
            1
        } else if l.starts_with("raw-payload: bench round") {
            let (Some(p), Some(s)) = (
                word::<f64>(l, "psci_version_ticks"),
                word::<f64>(l, "sdei_version_ticks"),
            ) else {
                continue;
            };
            if p > 0.0 {
                r[2].push(s / p);
            }
            continue;
        } else {
            continue;
        };
        let (Some(k), Some(f)) = (word::<f64>(l, "in-kernel"), word::<f64>(l, "forwarded")) else {
            continue;
        };
        if k > 0.0 {
            r[which].push(f / k);
        }
    }
    r
}

/// One VMM's boots: seconds to `/init`, to exit, the guest's touch time, peak RSS (KiB), and
/// the exit statuses seen.
#[derive(Debug, Default, PartialEq)]
struct Boots {
    init: Vec<f64>,
    exit: Vec<f64>,
    touch: Vec<f64>,
    hwm: Vec<f64>,
    statuses: Vec<String>,
}

fn boots(out: &str) -> BTreeMap<String, Boots> {
    let mut m: BTreeMap<String, Boots> = BTreeMap::new();
    for l in out.lines() {
        let Some(rest) = l.strip_prefix("@@B ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        let (Some(name), Some(event)) = (f.first(), f.get(1)) else {
            continue;
        };
        let b = m.entry(name.to_string()).or_default();
        match *event {
            "init" => b.init.extend(num(2)),
            "touch" => {
                b.touch.extend(num(3));
                b.hwm.extend(num(4).filter(|k| *k > 0.0));
            }
            "exit" => {
                b.exit.extend(num(2));
                b.statuses.push(f.get(3).unwrap_or(&"?").to_string());
            }
            _ => {}
        }
    }
    m
}

/// `cargo xtask bench`.
pub fn run(req: &Request) -> Result<Outcome, Fail> {
    let tb = if l1::native_kvm() {
        None
    } else {
        Some(setup::run()?)
    };
    let tb_ref = tb
        .as_ref()
        .ok_or_else(|| Fail::new("bench needs the test bed's kernel and busybox"))?;
    let refvmm = cross::refvmm()?;
    let payload = cross::raw_payload()?;
    let driver = cross::vmm_example("sdei_latency")?;
    let forward = cross::example("hypercall-router", "kvm_forward_ratio", &["kvm"])?;
    let pages = cross::example("mte-memory", "mte_page_ratio", &[])?;
    let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dir.display())))?;
    let cpio = dir.join("guest.cpio");
    crate::guest::initramfs(
        tb_ref,
        &format!("{GUEST_INIT_PRELUDE}{BOOT_INIT}"),
        &[],
        &cpio,
    )?;
    let mut files = vec![
        ("refvmm".into(), refvmm),
        ("raw-payload.bin".into(), payload),
        ("sdei_latency".into(), driver),
        ("kvm_forward_ratio".into(), forward),
        ("mte_page_ratio".into(), pages),
        ("Image".into(), tb_ref.kernel.clone()),
        ("guest.cpio".into(), cpio),
    ];
    for (name, path) in &req.peers {
        if !path.is_file() {
            return Err(Fail::new(format!(
                "--peer {name}={}: no such file",
                path.display()
            )));
        }
        files.push((format!("peer-{name}"), path.clone()));
    }
    let job = l1::Job {
        files,
        script: script(req),
        timeout: Duration::from_secs(600 + 240 * req.rounds as u64 * (4 + req.peers.len() as u64)),
        memory_mib: 2048,
        echo: true,
    };
    let res = l1::run(tb.as_ref(), &job);
    let _ = std::fs::remove_dir_all(&dir);
    let res = res?;
    let out = &res.output;
    crate::guest::save_log("bench", out);
    let [bare, gic, refvmm] = forward_ratios(out);
    let (Some(bare), Some(gic), Some(fwd)) = (median(bare), median(gic), median(refvmm)) else {
        return Ok(Outcome::Failed(format!(
            "the hypercall benchmarks did not complete (status {})",
            res.exit
        )));
    };
    println!(
        "xtask: bench: forwarded call / in-kernel PSCI_VERSION, medians of the per-round ratios:"
    );
    println!("xtask: bench:   barest loop, no interrupt controller   {bare:.2}");
    println!("xtask: bench:   barest loop, in-kernel GICv3           {gic:.2}");
    println!(
        "xtask: bench:   refvmm, SDEI_VERSION (GICv3)           {fwd:.2}  (refvmm / barest with GICv3 = {:.3})",
        fwd / gic
    );
    let latency = out
        .lines()
        .find(|l| l.starts_with("sdei_latency: ratio SDEI/SPI"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    match latency {
        Some(r) => {
            println!("xtask: bench: SDEI raise -> handler / SPI -> IRQ handler (medians) {r:.2}")
        }
        None => println!("xtask: bench: the SDEI latency benchmark printed no ratio"),
    }
    match out
        .lines()
        .find(|l| l.starts_with("mte_page_ratio: tag-zeroing"))
    {
        Some(l) => println!(
            "xtask: bench: MTE page operations (emulated: QEMU's cost, not hardware's): {}",
            l.trim_start_matches("mte_page_ratio: ")
        ),
        None => println!("xtask: bench: the MTE page benchmark printed no ratios"),
    }
    let all = boots(out);
    let base = all
        .get("refvmm")
        .and_then(|b| Some((median(b.init.clone())?, median(b.exit.clone())?)));
    println!("xtask: bench: boots, medians of {} rounds (seconds since launch; touch = the guest's own time to first-touch 256 MiB; peak RSS of the VMM):", req.rounds);
    let mut failed = Vec::new();
    for (name, b) in &all {
        let m = |v: &Vec<f64>| median(v.clone());
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
        let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
            (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
            _ => "-".into(),
        };
        let touch_base = all.get("refvmm").and_then(|r| m(&r.touch));
        println!(
            "xtask: bench:   {name:<18} /init {} (x{})  exit {} (x{})  touch {} (x{})  peak RSS {} MiB  [{} boots, statuses {:?}]",
            fmt(m(&b.init)),
            ratio(m(&b.init), base.map(|b| b.0)),
            fmt(m(&b.exit)),
            ratio(m(&b.exit), base.map(|b| b.1)),
            fmt(m(&b.touch)),
            ratio(m(&b.touch), touch_base),
            m(&b.hwm).map_or("-".into(), |k| format!("{:.0}", k / 1024.0)),
            b.init.len(),
            b.statuses
        );
        if b.init.len() != req.rounds || b.touch.len() != req.rounds {
            failed.push(name.clone());
        }
    }
    for (name, _) in REFVMM_BOOTS {
        if !all.contains_key(name) {
            failed.push(name.to_string());
        }
    }
    if res.exit != 0 || !failed.is_empty() {
        return Ok(Outcome::Failed(format!(
            "not every boot completed: {failed:?} (job status {}; see target/xtask-logs/bench.log)",
            res.exit
        )));
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_bad_ones_are_refused() {
        let r = parse(&[
            "--rounds",
            "3",
            "--peer",
            "firecracker=/opt/fc",
            "--peer",
            "x=./y",
        ])
        .unwrap();
        assert_eq!(r.rounds, 3);
        assert_eq!(
            r.peers,
            [
                ("firecracker".to_string(), PathBuf::from("/opt/fc")),
                ("x".to_string(), PathBuf::from("./y"))
            ]
        );
        assert_eq!(parse(&[]).unwrap().rounds, 5);
        for bad in [
            &["--rounds", "0"][..],
            &["--rounds"],
            &["--peer", "nopath"],
            &["--peer", "=/x"],
            &["--peer", "a b=/x"],
            &["--peer", "refvmm=/x"],
            &["--peer", "a=/x", "--peer", "a=/y"],
            &["--fast"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_known_peer_gets_its_own_command_line_and_others_the_generic_one() {
        assert!(peer_command("firecracker").contains("--no-api --config-file fc.json"));
        assert!(peer_command("cloud-hypervisor").contains("console=ttyAMA0"));
        assert!(peer_command("kvmtool").contains("./peer-kvmtool run --kernel Image"));
        assert_eq!(
            peer_command("mine"),
            "boot mine ./peer-mine Image guest.cpio \"console=ttyS0 rdinit=/init quiet panic=-1\" 2 512"
        );
    }

    #[test]
    fn ratios_and_boots_are_read_back_from_the_output() {
        let out = "\
kvm_forward_ratio: bare: round 0: 2000 calls each: in-kernel 100 ticks, bare forwarded 300 ticks, routed 310 ticks
kvm_forward_ratio: with GICv3: round 0: 2000 calls each: in-kernel 100 ticks, bare forwarded 400 ticks, routed 410 ticks
raw-payload: bench round 0 calls 2000 psci_version_ticks 100 sdei_version_ticks 420
@@B refvmm init 5.10
@@B refvmm touch 7.00 1.50 90000
@@B refvmm exit 7.20 0
";
        let [b, g, r] = forward_ratios(out);
        assert_eq!((b, g, r), (vec![3.0], vec![4.0], vec![4.2]));
        let all = boots(out);
        let rb = &all["refvmm"];
        assert_eq!((rb.init.clone(), rb.exit.clone()), (vec![5.1], vec![7.2]));
        assert_eq!(
            (rb.touch.clone(), rb.hwm.clone()),
            (vec![1.5], vec![90000.0])
        );
        assert_eq!(rb.statuses, ["0"]);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn the_script_interleaves_every_boot_in_each_round() {
        let req = parse(&["--rounds", "2", "--peer", "other=/x"]).unwrap();
        let s = script(&req);
        assert_eq!(s.matches("./kvm_forward_ratio").count(), 3);
        assert_eq!(s.matches("boot refvmm-memfd-mte ").count(), 2);
        assert_eq!(s.matches("boot other ./peer-other").count(), 2);
        let first_peer = s.find("boot other").unwrap();
        let second_refvmm = s.rfind("boot refvmm ").unwrap();
        assert!(first_peer < second_refvmm, "rounds interleave");
    }
}
