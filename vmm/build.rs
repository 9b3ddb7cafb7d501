//! Compiles refvmm's seccomp policy (`seccomp/aarch64-unknown-linux-gnu.json`) into BPF at
//! build time.
//!
//! The policy names ioctl requests and socket options symbolically (`"val": "KVM_RUN"`); this
//! script resolves them to numbers before handing the policy to seccompiler. The KVM requests
//! are computed the way kvm-ioctls computes them: vmm-sys-util's `_IO`/`_IOW` encodings with
//! the argument structs' sizes taken from kvm-bindings. The rest are Linux's asm-generic
//! values, which aarch64 uses.
//!
//! Every rule must carry a `comment` saying who needs it; the build fails otherwise.
//!
//! The policy is compiled twice, once as written (`default_action` `trap`: `--seccomp
//! enforce`) and once with every `default_action` turned into `log` (`--seccomp log`). Each
//! is written to `OUT_DIR` in a small format `src/sandbox.rs` reads back:
//! per category, `u16` name length, the name, `u32` instruction count, then the instructions
//! as `code: u16, jt: u8, jf: u8, k: u32`, all little-endian. `seccomp_meta.rs` lists each
//! category's allowed syscalls and the resolved request numbers, for tests and docs.

use seccompiler::{BpfMap, TargetArch};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// KVM requests, derived as kvm-ioctls derives them.
mod kvm {
    use kvm_bindings::{kvm_device_attr, kvm_mp_state, kvm_one_reg, kvm_reg_list, KVMIO};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_iow_nr!(KVM_GET_ONE_REG, KVMIO, 0xab, kvm_one_reg);
    ioctl_iow_nr!(KVM_SET_ONE_REG, KVMIO, 0xac, kvm_one_reg);
    ioctl_iowr_nr!(KVM_GET_REG_LIST, KVMIO, 0xb0, kvm_reg_list);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
    ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);
    // kvm-bindings has `kvm_arm_copy_mte_tags` only when built for aarch64, and this script
    // runs on the build host: its aarch64 size (guest_ipa, length, addr, flags, reserved[2],
    // 8 bytes each) is spelled out here and checked against kvm-bindings by a unit test on
    // aarch64.
    /// `struct kvm_arm_copy_mte_tags` on aarch64.
    pub struct KvmArmCopyMteTags {
        _fields: [u64; 6],
    }
    ioctl_ior_nr!(KVM_ARM_MTE_COPY_TAGS, KVMIO, 0xb4, KvmArmCopyMteTags);
    /// `struct kvm_vcpu_init` on aarch64 (target and seven feature words, `u32` each), also
    /// aarch64-only in kvm-bindings and checked the same way.
    pub struct KvmVcpuInit {
        _fields: [u32; 8],
    }
    ioctl_iow_nr!(KVM_ARM_VCPU_INIT, KVMIO, 0xae, KvmVcpuInit);
}

/// The symbolic values a policy may use, with their aarch64 numbers.
fn symbols() -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("KVM_RUN", kvm::KVM_RUN() as u64),
        ("KVM_GET_ONE_REG", kvm::KVM_GET_ONE_REG() as u64),
        ("KVM_SET_ONE_REG", kvm::KVM_SET_ONE_REG() as u64),
        ("KVM_GET_REG_LIST", kvm::KVM_GET_REG_LIST() as u64),
        ("KVM_GET_MP_STATE", kvm::KVM_GET_MP_STATE() as u64),
        ("KVM_SET_MP_STATE", kvm::KVM_SET_MP_STATE() as u64),
        ("KVM_ARM_VCPU_INIT", kvm::KVM_ARM_VCPU_INIT() as u64),
        ("KVM_GET_DEVICE_ATTR", kvm::KVM_GET_DEVICE_ATTR() as u64),
        ("KVM_ARM_MTE_COPY_TAGS", kvm::KVM_ARM_MTE_COPY_TAGS() as u64),
        // asm-generic/ioctls.h.
        ("TCGETS", 0x5401),
        ("TCSETS", 0x5402),
        ("FIONBIO", 0x5421),
        // asm-generic/fcntl.h.
        ("F_GETFD", 1),
        // asm-generic/socket.h (SO_RCVTIMEO_OLD: 64-bit time_t already).
        ("SOL_SOCKET", 1),
        ("SO_RCVTIMEO", 20),
        ("SO_PEERCRED", 17),
        ("MSG_NOSIGNAL", 0x4000),
        // asm-generic/fcntl.h's O_CLOEXEC, which SOCK_CLOEXEC equals.
        ("SOCK_CLOEXEC", 0o2000000),
        // linux/fs.h.
        ("RENAME_NOREPLACE", 1),
        // Signals: SIGABRT (abort), and glibc's SIGRTMIN (the kernel's 32 plus the two glibc
        // keeps for itself), the vCPU kick signal.
        ("SIGABRT", 6),
        ("SIGRTMIN", 34),
    ])
}

fn fail(msg: String) -> ! {
    panic!("seccomp policy: {msg}")
}

/// Checks the comments, replaces symbolic values, and returns each category's syscalls.
fn resolve(policy: &mut Value, syms: &BTreeMap<&str, u64>) -> BTreeMap<String, Vec<String>> {
    let mut lists = BTreeMap::new();
    let cats = policy
        .as_object_mut()
        .unwrap_or_else(|| fail("the top level must be an object of categories".into()));
    for (cat, filter) in cats.iter_mut() {
        let rules = filter
            .get_mut("filter")
            .and_then(Value::as_array_mut)
            .unwrap_or_else(|| fail(format!("{cat}: no \"filter\" array")));
        let mut names: Vec<String> = Vec::new();
        for rule in rules {
            let name = rule["syscall"].as_str().unwrap_or_default().to_string();
            if rule["comment"].as_str().is_none_or(|c| c.trim().is_empty()) {
                fail(format!("{cat}: the rule for {name:?} has no comment"));
            }
            if let Some(args) = rule.get_mut("args").and_then(Value::as_array_mut) {
                for arg in args {
                    if let Some(sym) = arg["val"].as_str().map(str::to_string) {
                        let v = syms.get(sym.as_str()).unwrap_or_else(|| {
                            fail(format!("{cat}: {name}: unknown symbolic value {sym:?}"))
                        });
                        arg["val"] = Value::from(*v);
                    }
                }
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
        lists.insert(cat.clone(), names);
    }
    lists
}

fn with_default_action(policy: &Value, action: &str) -> Value {
    let mut p = policy.clone();
    if let Some(cats) = p.as_object_mut() {
        for filter in cats.values_mut() {
            filter["default_action"] = Value::from(action);
        }
    }
    p
}

fn compile(policy: &Value) -> BpfMap {
    let text = serde_json::to_vec(policy).unwrap_or_else(|e| fail(e.to_string()));
    seccompiler::compile_from_json(text.as_slice(), TargetArch::aarch64)
        .unwrap_or_else(|e| fail(e.to_string()))
}

fn encode(map: &BpfMap) -> Vec<u8> {
    let sorted: BTreeMap<_, _> = map.iter().collect();
    let mut out = Vec::new();
    for (name, prog) in sorted {
        let len = u16::try_from(name.len()).unwrap_or_else(|_| fail(format!("name {name}")));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        let n = u32::try_from(prog.len()).unwrap_or_else(|_| fail(format!("{name}: too long")));
        out.extend_from_slice(&n.to_le_bytes());
        for ins in prog {
            out.extend_from_slice(&ins.code.to_le_bytes());
            out.push(ins.jt);
            out.push(ins.jf);
            out.extend_from_slice(&ins.k.to_le_bytes());
        }
    }
    out
}

fn meta(lists: &BTreeMap<String, Vec<String>>, syms: &BTreeMap<&str, u64>) -> String {
    let mut s = String::from("/// Each category's allowed syscalls, as the policy lists them.\n");
    s.push_str("pub const CATEGORY_SYSCALLS: &[(&str, &[&str])] = &[\n");
    for (cat, names) in lists {
        let _ = writeln!(s, "    ({cat:?}, &{names:?}),");
    }
    s.push_str("];\n/// The symbolic values the policy may use, resolved for aarch64.\n");
    s.push_str("pub const SYMBOLS: &[(&str, u64)] = &[\n");
    for (name, v) in syms {
        let _ = writeln!(s, "    ({name:?}, {v:#x}),");
    }
    s.push_str("];\n");
    s
}

fn main() {
    let src = Path::new("seccomp/aarch64-unknown-linux-gnu.json");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(src).unwrap_or_else(|e| fail(format!("{e}")));
    let mut policy: Value = serde_json::from_str(&text).unwrap_or_else(|e| fail(e.to_string()));
    let syms = symbols();
    let lists = resolve(&mut policy, &syms);
    let out = std::env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set".into()));
    let out = Path::new(&out);
    let write = |name: &str, data: &[u8]| {
        std::fs::write(out.join(name), data).unwrap_or_else(|e| fail(format!("{name}: {e}")))
    };
    write("seccomp_enforce.bin", &encode(&compile(&policy)));
    write(
        "seccomp_log.bin",
        &encode(&compile(&with_default_action(&policy, "log"))),
    );
    write("seccomp_meta.rs", meta(&lists, &syms).as_bytes());
}
