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
//! It runs two such VMs, rounds interleaved: one bare (no interrupt controller), and one with
//! an in-kernel GICv3, as every VMM that runs Linux has (KVM then saves and restores the vGIC's
//! state on each return to userspace, which an in-kernel call does not pay). It prints each
//! loop's counter ticks and the ratios of the forwarded loops to the in-kernel one, per VM.
//! Timings under emulation mean nothing on their own; the ratios of loops run in the same VM
//! do.

#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
mod bench {
    use hypercall_router::kvm::{handle_hypercall_exit, install_smccc_filter, pc_reg_id, x_reg_id};
    use hypercall_router::{
        Call, CallContext, Convention, FunctionRange, Outcome, Owner, RegisterView, Results,
        RouterBuilder, Service, ServiceInfo, SmcccReturn,
    };
    use kvm_bindings::{
        kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        kvm_userspace_memory_region, kvm_vcpu_init, KVM_ARM_VCPU_PSCI_0_2,
        KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
        KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
    };
    use kvm_ioctls::{DeviceFd, Kvm, VcpuExit, VcpuFd, VmFd};

    const GUEST_BASE: u64 = 0x8000_0000;
    /// One 2 MiB block, backed by a transparent huge page where the host allows (as refvmm's
    /// guest RAM is on a stock host): the page size changes the cost of every exit in
    /// emulation, in-kernel ones too, so both sides of a comparison must have the same.
    const GUEST_SIZE: usize = 2 << 20;
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

    /// One benchmark VM: its vCPU at the payload's start, and what keeps it alive.
    struct BenchVm {
        _vm: VmFd,
        _gic: Option<DeviceFd>,
        vcpu: VcpuFd,
    }

    /// An in-kernel GICv3 (distributor and redistributors below the guest's RAM), created
    /// after the vCPU and initialised.
    fn add_gic(vm: &VmFd) -> DeviceFd {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let gic = vm
            .create_device(&mut dev)
            .expect("KVM_CREATE_DEVICE (GICv3)");
        let dist: u64 = 0x0800_0000;
        let redist: u64 = 0x080A_0000;
        for (attr, addr) in [
            (KVM_VGIC_V3_ADDR_TYPE_DIST, &dist),
            (KVM_VGIC_V3_ADDR_TYPE_REDIST, &redist),
        ] {
            gic.set_device_attr(&kvm_device_attr {
                group: KVM_DEV_ARM_VGIC_GRP_ADDR,
                attr: u64::from(attr),
                addr: addr as *const u64 as u64,
                flags: 0,
            })
            .expect("GIC address");
        }
        gic.set_device_attr(&kvm_device_attr {
            group: KVM_DEV_ARM_VGIC_GRP_CTRL,
            attr: u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            addr: 0,
            flags: 0,
        })
        .expect("GIC init");
        gic
    }

    fn bench_vm(kvm: &Kvm, router_filter: impl Fn(&VmFd), gic: bool) -> BenchVm {
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * GUEST_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(area, libc::MAP_FAILED, "mmap");
        // The 2 MiB-aligned block inside the mapping.
        let mem = ((area as usize).next_multiple_of(GUEST_SIZE)) as *mut libc::c_void;
        // SAFETY: `mem..mem + GUEST_SIZE` lies inside the mapping just made; the advice only
        // asks for huge pages. Ignored where THP is off.
        let _ = unsafe { libc::madvise(mem, GUEST_SIZE, libc::MADV_HUGEPAGE) };
        let bytes = bytes(&payload());
        assert!(bytes.len() <= GUEST_SIZE);
        // SAFETY: `mem` is a fresh writable GUEST_SIZE bytes of the mapping; `bytes` fits.
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
        let vcpu = vm.create_vcpu(0).expect("vCPU");
        let gic = gic.then(|| add_gic(&vm));
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .expect("preferred target");
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        vcpu.vcpu_init(&init).expect("vCPU init");
        router_filter(&vm);
        vcpu.set_one_reg(pc_reg_id(), &GUEST_BASE.to_ne_bytes())
            .expect("PC");
        BenchVm {
            _vm: vm,
            _gic: gic,
            vcpu,
        }
    }

    pub fn run() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let nop = Nop;
        let mut builder = RouterBuilder::<&Nop>::new();
        builder.register(&nop).expect("register");
        let router = builder.build();
        let filter = |vm: &VmFd| {
            install_smccc_filter(vm, &router).expect("SMCCC filter");
        };
        let x0 = x_reg_id(0).expect("x0");
        let mut vms = [
            ("bare", bench_vm(&kvm, filter, false)),
            ("with GICv3", bench_vm(&kvm, filter, true)),
        ];
        let mut totals = [[0u64; 3]; 2];
        for round in 0..ROUNDS {
            for ((name, vm), totals) in vms.iter_mut().zip(totals.iter_mut()) {
                let vcpu = &mut vm.vcpu;
                loop {
                    match vcpu.run().expect("KVM_RUN") {
                        VcpuExit::Hypercall(h) if h.nr == SIP_BARE => {
                            vcpu.set_one_reg(x0, &0u64.to_ne_bytes()).expect("x0");
                        }
                        VcpuExit::Hypercall(h) => {
                            let (nr, flags) = (h.nr, u64::from(h.longmode));
                            handle_hypercall_exit(&router, &*vcpu, nr, flags, 0).expect("dispatch");
                        }
                        VcpuExit::MmioWrite(addr, _) if addr == DONE_MMIO => break,
                        other => panic!("unexpected exit {other:?}"),
                    }
                }
                let ticks = [
                    reg(vcpu, 21) - reg(vcpu, 20),
                    reg(vcpu, 23) - reg(vcpu, 22),
                    reg(vcpu, 25) - reg(vcpu, 24),
                ];
                println!(
                    "kvm_forward_ratio: {name}: round {round}: {CALLS} calls each: in-kernel {} ticks, bare forwarded {} ticks, routed {} ticks",
                    ticks[0], ticks[1], ticks[2]
                );
                for (t, v) in totals.iter_mut().zip(ticks) {
                    *t += v;
                }
            }
        }
        for ((name, _), totals) in vms.iter().zip(totals) {
            let [kernel, bare, routed] = totals.map(|t| t as f64);
            println!(
                "kvm_forward_ratio: {name}: bare forwarded / in-kernel {:.2}; routed / in-kernel {:.2}; routed / bare {:.3}",
                bare / kernel,
                routed / kernel,
                routed / bare
            );
        }
    }
}

fn main() {
    #[cfg(all(target_arch = "aarch64", feature = "kvm"))]
    bench::run();
    #[cfg(not(all(target_arch = "aarch64", feature = "kvm")))]
    eprintln!("kvm_forward_ratio needs an aarch64 host with /dev/kvm and the `kvm` feature");
}
