//! End-to-end forwarding through KVM's SMCCC filter (aarch64 hosts with
//! `/dev/kvm`, feature `kvm`).
//!
//! A hand-assembled guest makes HVC and SMC calls, copies the results into
//! callee-saved registers and signals completion with a store to unbacked
//! memory (a `KVM_EXIT_MMIO`). The test then reads those registers back.
#![cfg(all(target_arch = "aarch64", feature = "kvm"))]

use std::sync::Mutex;

use hypercall_router::kvm::{handle_hypercall_exit, install_smccc_filter, pc_reg_id, x_reg_id};
use hypercall_router::{
    ArmArchitecture, Call, CallContext, Conduit, Convention, FunctionRange, Outcome, Owner,
    RegisterView, Results, RouterBuilder, Service, ServiceInfo, SmcccReturn, SmcccVersion,
    ARM_ARCHITECTURE_RESERVED,
};
use kvm_bindings::{kvm_userspace_memory_region, kvm_vcpu_init, KVM_ARM_VCPU_PSCI_0_2};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

const GUEST_BASE: u64 = 0x8000_0000;
const GUEST_SIZE: usize = 0x1_0000;
const DONE_MMIO: u64 = 0x1000_0000;

/// Records calls; answers SUCCESS and each argument XOR a marker.
struct Probe {
    seen: Mutex<Vec<(CallContext, Call)>>,
}

const MARK: u64 = 0x5A5A_5A5A_5A5A_5A5A;
const SIP_RANGES: &[FunctionRange] = &[
    FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 2),
    FunctionRange::fast(Convention::Smc32, Owner::SiP, 0, 0),
];

impl Service for Probe {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: "probe",
            identity: None,
            ranges: SIP_RANGES,
        }
    }

    fn call(&self, ctx: &CallContext, call: &Call, _regs: &mut RegisterView<'_>) -> Outcome {
        self.seen.lock().unwrap().push((*ctx, *call));
        let results = Results::code(SmcccReturn::Success)
            .with(1, call.arg(1) ^ MARK)
            .with(2, call.arg(2) ^ MARK)
            .with(3, call.arg(3) ^ MARK);
        Outcome::Return(results)
    }
}

use hypercall_router::testing::a64::{load, mov, str_x, HANG as SPIN, HVC0, SMC0};

/// Loads x0..=x3, makes the call, copies x0..=x3 to `save..save+3`.
fn call(code: &mut Vec<u32>, insn: u32, regs: [u64; 4], save: u32) {
    for (n, value) in regs.iter().enumerate() {
        load(code, n as u32, *value);
    }
    code.push(insn);
    for n in 0..4 {
        code.push(mov(save + n, n));
    }
}

const A1: u64 = 0x1111_2222_3333_4444;
const A2: u64 = 0x5555_6666_7777_8888;
const A3: u64 = 0x9999_AAAA_BBBB_CCCC;
const W1_WIDE: u64 = 0xFFFF_FFFF_1234_5678;

fn payload() -> Vec<u32> {
    let mut code = Vec::new();
    // 1. HVC, fast SMC64 SiP 1: results to x19-x22.
    call(&mut code, HVC0, [0xC200_0001, A1, A2, A3], 19);
    // 2. SMC, fast SMC64 SiP 2: results to x23-x26.
    call(&mut code, SMC0, [0xC200_0002, A3, A2, A1], 23);
    // 3. HVC, SiP query 0xFF02: forwarded (query block) but served by nobody.
    load(&mut code, 0, 0x8200_FF02);
    code.push(HVC0);
    code.push(mov(27, 0));
    // 4. SMC, fast SMC32 SiP 0 with upper bits set in w1: x0, x1 to x28, x14.
    load(&mut code, 0, 0x8200_0000);
    load(&mut code, 1, W1_WIDE);
    code.push(SMC0);
    code.push(mov(28, 0));
    code.push(mov(14, 1));
    // 5. HVC SMCCC_VERSION: KVM's range, answered by KVM: x0 to x15.
    load(&mut code, 0, 0x8000_0000);
    code.push(HVC0);
    code.push(mov(15, 0));
    // Done: store to unbacked memory, then spin.
    load(&mut code, 9, DONE_MMIO);
    code.push(str_x(0, 9));
    code.push(SPIN);
    code
}

fn read_x(vcpu: &VcpuFd, n: u8) -> u64 {
    let mut bytes = [0u8; 8];
    vcpu.get_one_reg(x_reg_id(n).unwrap(), &mut bytes).unwrap();
    u64::from_ne_bytes(bytes)
}

#[test]
fn hvc_and_smc_calls_are_forwarded_routed_and_answered() {
    // Arrange: VM, memory with the payload, one vCPU, router and filter.
    let kvm = Kvm::new().expect("/dev/kvm is needed for this test");
    let vm = kvm.create_vm().unwrap();
    // SAFETY: an anonymous private mapping with no address hint; the result is checked.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            GUEST_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    let code = payload();
    let bytes = hypercall_router::testing::a64::bytes(&code);
    assert!(bytes.len() <= GUEST_SIZE);
    // SAFETY: `mem` is a fresh writable mapping of GUEST_SIZE bytes and `bytes` fits in it.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.cast::<u8>(), bytes.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: GUEST_BASE,
        memory_size: GUEST_SIZE as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping stays alive (never unmapped) for as long as the VM exists in this test.
    unsafe { vm.set_user_memory_region(region) }.unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init).unwrap();
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    vcpu.vcpu_init(&init).unwrap();
    vcpu.set_one_reg(pc_reg_id(), &GUEST_BASE.to_ne_bytes())
        .unwrap();

    let probe = Probe {
        seen: Mutex::new(Vec::new()),
    };
    let mut builder = RouterBuilder::<&Probe>::new();
    builder.register(&probe).unwrap();
    // Our own SMCCC_VERSION answer differs from KVM's, so a forwarded one would show.
    builder
        .arm_architecture(ArmArchitecture {
            version: SmcccVersion {
                major: 1,
                minor: 0x77,
            },
            soc_id: None,
        })
        .unwrap();
    let router = builder.build();
    let installed = install_smccc_filter(&vm, &router).unwrap();

    // Act: run until the MMIO store.
    let mut forwarded = Vec::new();
    let mut done = false;
    for _ in 0..32 {
        match vcpu.run().unwrap() {
            VcpuExit::Hypercall(exit) => {
                let (nr, flags) = (exit.nr, u64::from(exit.longmode));
                forwarded.push(nr);
                handle_hypercall_exit(&router, &vcpu, nr, flags, 0).unwrap();
            }
            VcpuExit::MmioWrite(addr, _) => {
                assert_eq!(addr, DONE_MMIO);
                done = true;
                break;
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }

    // Assert.
    assert!(done, "the guest never reached the end of the payload");
    for block in &installed {
        for reserved in ARM_ARCHITECTURE_RESERVED {
            assert!(
                block.last < reserved.first || block.first > reserved.last,
                "{block:x?} requested"
            );
        }
    }
    assert_eq!(
        forwarded,
        vec![0xC200_0001, 0xC200_0002, 0x8200_FF02, 0x8200_0000]
    );
    let seen = probe.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].0.conduit, Conduit::Hvc);
    assert_eq!(seen[0].1.args[..3], [A1, A2, A3]);
    assert_eq!(seen[1].0.conduit, Conduit::Smc);
    assert_eq!(seen[1].1.args[..3], [A3, A2, A1]);
    assert_eq!(seen[2].0.conduit, Conduit::Smc);
    assert_eq!(
        seen[2].1.args[0],
        W1_WIDE & 0xFFFF_FFFF,
        "SMC32 argument truncated to w1"
    );
    // The guest's copies of the results.
    assert_eq!(
        [
            read_x(&vcpu, 19),
            read_x(&vcpu, 20),
            read_x(&vcpu, 21),
            read_x(&vcpu, 22)
        ],
        [0, A1 ^ MARK, A2 ^ MARK, A3 ^ MARK]
    );
    assert_eq!(
        [read_x(&vcpu, 23), read_x(&vcpu, 24), read_x(&vcpu, 25)],
        [0, A3 ^ MARK, A2 ^ MARK]
    );
    assert_eq!(
        read_x(&vcpu, 27),
        0xFFFF_FFFF,
        "forwarded but unserved: NOT_SUPPORTED in w0"
    );
    assert_eq!(read_x(&vcpu, 28), 0);
    assert_eq!(
        read_x(&vcpu, 14),
        (W1_WIDE ^ MARK) & 0xFFFF_FFFF,
        "SMC32 result zero-extended"
    );
    let version = read_x(&vcpu, 15);
    assert_ne!(version, 0x0001_0077, "SMCCC_VERSION must not be forwarded");
    assert!(
        version as u32 as i32 > 0,
        "KVM answers SMCCC_VERSION itself: {version:#x}"
    );
}
