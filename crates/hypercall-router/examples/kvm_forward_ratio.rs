//! Ratio benchmark for the KVM adapter (aarch64 with `/dev/kvm`, feature `kvm`; run in the
//! emulated arm64 machine by `cargo xtask bench`).
//!
//! One vCPU runs a hand-assembled guest that times, with the virtual counter, three loops of
//! `N` HVC calls each:
//! - `PSCI_VERSION`, answered inside KVM;
//! - a SiP call forwarded by KVM's SMCCC filter and answered by the barest possible VMM loop
//!   (one `KVM_SET_ONE_REG` of x0, no decoding);
//! - a SiP call forwarded the same way and answered through the router
//!   (`handle_hypercall_exit`: decode, route, the service, results written per the
//!   convention).
//!
//! It prints each loop's counter ticks and the ratios of the forwarded loops to the in-kernel
//! one, over several rounds. Timings under emulation mean nothing on their own; the ratios of
//! loops run in the same VM do.

#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
mod bench {
    use hypercall_router::kvm::{handle_hypercall_exit, install_smccc_filter, pc_reg_id, x_reg_id};
    use hypercall_router::{
        Call, CallContext, Convention, FunctionRange, Outcome, Owner, RegisterView, Results,
        RouterBuilder, Service, ServiceInfo, SmcccReturn,
    };
    use kvm_bindings::{kvm_userspace_memory_region, kvm_vcpu_init, KVM_ARM_VCPU_PSCI_0_2};
    use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

    const GUEST_BASE: u64 = 0x8000_0000;
    const GUEST_SIZE: usize = 0x1_0000;
    const DONE_MMIO: u64 = 0x1000_0000;
    const CALLS: u16 = 2000;
    const ROUNDS: usize = 5;
    const PSCI_VERSION: u64 = 0x8400_0000;
    /// Answered by the bare loop (never reaches the router).
    const SIP_BARE: u64 = 0xC200_0000;
    /// Answered through the router.
    const SIP_ROUTED: u64 = 0xC200_0001;

    /// Answers SUCCESS to every call.
    struct Nop;

    const RANGES: &[FunctionRange] =
        &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 1).with_arg_count(0)];

    impl Service for Nop {
        fn info(&self) -> ServiceInfo<'_> {
            ServiceInfo {
                name: "nop",
                identity: None,
                ranges: RANGES,
            }
        }

        fn call(&self, _: &CallContext, _: &Call, _: &mut RegisterView<'_>) -> Outcome {
            Outcome::Return(Results::code(SmcccReturn::Success))
        }
    }

    // --- The few instructions the guest needs. ---
    use hypercall_router::testing::a64::{bytes, load, movz, str_x, HVC0};

    const ISB: u32 = 0xD503_3FDF;
    /// `mrs x<rt>, cntvct_el0`.
    fn read_counter(rt: u32) -> u32 {
        0xD53B_E040 | rt
    }
    /// `subs x19, x19, #1`.
    const DEC_X19: u32 = 0xF100_0673;
    /// `b.ne` back by `words` instructions.
    fn bne_back(words: u32) -> u32 {
        0x5400_0001 | ((words.wrapping_neg() & 0x7_FFFF) << 5)
    }

    /// Times a loop of `CALLS` HVCs with x0 = `id`; the counter before and after land in
    /// x<before> and x<after>.
    fn timed_loop(code: &mut Vec<u32>, id: u64, before: u32, after: u32) {
        code.push(movz(19, CALLS, 0));
        code.push(ISB);
        code.push(read_counter(before));
        let top = code.len();
        load(code, 0, id);
        code.push(HVC0);
        code.push(DEC_X19);
        let back = (code.len() - top) as u32;
        code.push(bne_back(back));
        code.push(ISB);
        code.push(read_counter(after));
    }

    fn payload() -> Vec<u32> {
        let mut code = Vec::new();
        timed_loop(&mut code, PSCI_VERSION, 20, 21);
        timed_loop(&mut code, SIP_BARE, 22, 23);
        timed_loop(&mut code, SIP_ROUTED, 24, 25);
        load(&mut code, 1, DONE_MMIO);
        code.push(str_x(0, 1));
        // The next round starts here: KVM completes the store (PC past it) when the VMM runs
        // the vCPU again, so the payload branches back to its start itself.
        let back = code.len() as u32;
        code.push(0x1400_0000 | (back.wrapping_neg() & 0x03FF_FFFF));
        code
    }

    fn reg(vcpu: &VcpuFd, n: u8) -> u64 {
        let mut b = [0u8; 8];
        vcpu.get_one_reg(x_reg_id(n).expect("x register"), &mut b)
            .expect("KVM_GET_ONE_REG");
        u64::from_ne_bytes(b)
    }

    pub fn run() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
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
        assert_ne!(mem, libc::MAP_FAILED, "mmap");
        let bytes = bytes(&payload());
        assert!(bytes.len() <= GUEST_SIZE);
        // SAFETY: `mem` is a fresh writable mapping of GUEST_SIZE bytes; `bytes` fits in it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.cast::<u8>(), bytes.len()) };
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: GUEST_BASE,
            memory_size: GUEST_SIZE as u64,
            userspace_addr: mem as u64,
        };
        // SAFETY: the mapping is never unmapped while the VM exists (the process ends first).
        unsafe { vm.set_user_memory_region(region) }.expect("memory slot");
        let mut vcpu = vm.create_vcpu(0).expect("vCPU");
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .expect("preferred target");
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        vcpu.vcpu_init(&init).expect("vCPU init");
        let nop = Nop;
        let mut builder = RouterBuilder::<&Nop>::new();
        builder.register(&nop).expect("register");
        let router = builder.build();
        install_smccc_filter(&vm, &router).expect("SMCCC filter");
        let x0 = x_reg_id(0).expect("x0");

        let mut totals = [0u64; 3];
        vcpu.set_one_reg(pc_reg_id(), &GUEST_BASE.to_ne_bytes())
            .expect("PC");
        for round in 0..ROUNDS {
            loop {
                match vcpu.run().expect("KVM_RUN") {
                    VcpuExit::Hypercall(h) if h.nr == SIP_BARE => {
                        vcpu.set_one_reg(x0, &0u64.to_ne_bytes()).expect("x0");
                    }
                    VcpuExit::Hypercall(h) => {
                        let (nr, flags) = (h.nr, u64::from(h.longmode));
                        handle_hypercall_exit(&router, &vcpu, nr, flags, 0).expect("dispatch");
                    }
                    VcpuExit::MmioWrite(addr, _) if addr == DONE_MMIO => break,
                    other => panic!("unexpected exit {other:?}"),
                }
            }
            let ticks = [
                reg(&vcpu, 21) - reg(&vcpu, 20),
                reg(&vcpu, 23) - reg(&vcpu, 22),
                reg(&vcpu, 25) - reg(&vcpu, 24),
            ];
            println!(
                "kvm_forward_ratio: round {round}: {CALLS} calls each: in-kernel {} ticks, bare forwarded {} ticks, routed {} ticks",
                ticks[0], ticks[1], ticks[2]
            );
            for (t, v) in totals.iter_mut().zip(ticks) {
                *t += v;
            }
        }
        let [kernel, bare, routed] = totals.map(|t| t as f64);
        println!(
            "kvm_forward_ratio: bare forwarded / in-kernel {:.2}; routed / in-kernel {:.2}; routed / bare {:.3}",
            bare / kernel,
            routed / kernel,
            routed / bare
        );
    }
}

fn main() {
    #[cfg(all(target_arch = "aarch64", feature = "kvm"))]
    bench::run();
    #[cfg(not(all(target_arch = "aarch64", feature = "kvm")))]
    eprintln!("kvm_forward_ratio needs an aarch64 host with /dev/kvm and the `kvm` feature");
}
