//! A minimal VMM wiring hypercall-router, sdei-dispatch and mte-memory into a bare kvm-ioctls
//! run loop, with no code from refvmm: the proof that the crates stand alone.
//!
//! It needs aarch64 Linux with `/dev/kvm` and MTE (`cargo xtask` runs it in the emulated
//! arm64 machine as part of the test command). Guest RAM is an MTE-enabled `memfd` mapped
//! `MAP_SHARED` (mte-memory); the guest, a few hand-assembled instructions at EL1:
//!
//! 1. asks `SDEI_VERSION`, registers a handler for a private event, enables it and unmasks
//!    its PE — each call forwarded by KVM's SMCCC filter and answered by the dispatcher;
//! 2. masks every interrupt (`DAIF`), makes a vendor (SiP) call this VMM serves by raising
//!    the event, and spins until a flag in memory is set;
//! 3. the event arrives anyway (that is what SDEI is for): the handler reports the PC and
//!    PSTATE it interrupted, sets the flag and calls `EVENT_COMPLETE`, which puts the
//!    interrupted context back;
//! 4. the loop sees the flag and reports it to the VMM with an MMIO write.
//!
//! The VMM checks each report, reads and writes MTE tags of guest RAM through KVM, and prints
//! `minimal_vmm: PASS`; any failure exits non-zero with the reason.

#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
fn main() {
    if let Err(e) = vmm::run() {
        eprintln!("minimal_vmm: FAIL: {e}");
        std::process::exit(1);
    }
    println!("minimal_vmm: PASS");
}

#[cfg(not(all(target_arch = "aarch64", feature = "kvm")))]
fn main() {
    eprintln!("minimal_vmm: needs aarch64 and the `kvm` feature");
    std::process::exit(2);
}

#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
mod vmm {
    use std::sync::Arc;

    use hypercall_router::{
        Call, CallContext, Convention, FunctionRange, Outcome, Owner, RegisterFile, RegisterView,
        Results, RouterBuilder, Service, ServiceInfo, SmcccReturn,
    };
    use kvm_bindings::{kvm_vcpu_init, KVM_ARM_VCPU_PSCI_0_2};
    use kvm_ioctls::{Kvm, VcpuExit};
    use sdei_dispatch::kvm::{
        deliver_pending, handle_hypercall_exit, install_smccc_filter, KvmVcpuRegisters,
    };
    use sdei_dispatch::{DispatcherConfig, EventDecl, EventKind, Priority, SdeiService};
    use vm_memory::{Bytes, GuestAddress};

    use super::guest;

    /// A private, normal-priority event in the VMM-defined range.
    pub const EVENT: u32 = 0x0100_0000;
    /// The argument the guest registers its handler with.
    pub const HANDLER_ARG: u64 = 0x1234;

    type Error = Box<dyn std::error::Error>;

    /// SiP function 0: "raise the event on me". A VMM's own service next to SDEI.
    struct RaiseOnRequest(Arc<SdeiService>);

    const SIP_RANGES: &[FunctionRange] =
        &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 0).with_arg_count(0)];

    impl Service for RaiseOnRequest {
        fn info(&self) -> ServiceInfo<'_> {
            ServiceInfo {
                name: "raise-on-request",
                identity: None,
                ranges: SIP_RANGES,
            }
        }

        fn call(&self, ctx: &CallContext, _: &Call, _: &mut RegisterView<'_>) -> Outcome {
            match self.0.raise(EVENT, Some(ctx.vcpu_index)) {
                Ok(_) => Outcome::Return(Results::code(SmcccReturn::Success)),
                Err(_) => Outcome::Return(Results::code(SmcccReturn::NotSupported)),
            }
        }
    }

    /// What a vCPU exit asked for.
    enum Exit {
        /// `KVM_EXIT_HYPERCALL`: `nr` and flags.
        Hypercall(u64, u64),
        /// An MMIO write of a 64-bit value.
        Write(u64, u64),
    }

    fn le64(data: &[u8]) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(data.try_into()?))
    }

    fn check(what: &str, ok: bool) -> Result<(), Error> {
        if ok {
            println!("minimal_vmm: {what}: ok");
            Ok(())
        } else {
            Err(format!("{what}: no").into())
        }
    }

    pub fn run() -> Result<(), Error> {
        let kvm = Kvm::new()?;
        let vm = kvm.create_vm()?;

        // Guest RAM: MTE enabled before any vCPU exists, one shared memfd region, slot 0.
        let ram = super::memory::create(&vm)?;
        ram.memory
            .memory()
            .write_slice(&guest::program(), GuestAddress(guest::BASE))?;

        let mut vcpu = vm.create_vcpu(0)?;
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)?;
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        vcpu.vcpu_init(&init)?;
        KvmVcpuRegisters::new(&vcpu).set_pc(guest::BASE)?;

        // SDEI and the vendor service behind one router; one vCPU, so kicks are never needed.
        let mut config = DispatcherConfig::new(1);
        config.mte_tco = true;
        config.events.push(EventDecl {
            number: EVENT,
            kind: EventKind::Private,
            priority: Priority::Normal,
        });
        let sdei = Arc::new(SdeiService::new(config, |_vcpu: usize| {})?);
        let raise = RaiseOnRequest(Arc::clone(&sdei));
        let mut builder: RouterBuilder<&dyn Service, 4, 8> = RouterBuilder::new();
        builder.register(&*sdei)?;
        builder.register(&raise)?;
        let router = builder.build();
        install_smccc_filter(&vm, &router)?;

        let mut handler_pc = None;
        let mut handler_pstate = None;
        let flag = loop {
            // Before each KVM_RUN: enter a handler if an event is pending (one atomic load
            // otherwise). Safe here after an MMIO exit only because this VMM raises events
            // from hypercall exits alone, so nothing is pending then; a VMM that raises from
            // elsewhere first completes an open MMIO access (a KVM_RUN with immediate_exit).
            if let Some(info) = deliver_pending(&sdei, &vcpu, 0)? {
                println!("minimal_vmm: event {:#x} delivered", info.event);
            }
            // The exit borrows the vCPU: take what it says, then answer it.
            let exit = match vcpu.run()? {
                VcpuExit::Hypercall(h) => Exit::Hypercall(h.nr, u64::from(h.longmode)),
                VcpuExit::MmioWrite(addr, data) => Exit::Write(addr, le64(data)?),
                other => return Err(format!("unexpected exit {other:?}").into()),
            };
            match exit {
                Exit::Hypercall(nr, flags) => {
                    handle_hypercall_exit(&router, &vcpu, nr, flags, 0)?;
                }
                Exit::Write(guest::HANDLER_PC_MMIO, pc) => handler_pc = Some(pc),
                Exit::Write(guest::HANDLER_PSTATE_MMIO, pstate) => handler_pstate = Some(pstate),
                Exit::Write(guest::DONE_MMIO, flag) => break flag,
                Exit::Write(guest::FAIL_MMIO, code) => {
                    return Err(format!("an SDEI call failed in the guest: {}", code as i64).into());
                }
                Exit::Write(addr, _) => return Err(format!("write to {addr:#x}").into()),
            }
        };

        let version = KvmVcpuRegisters::new(&vcpu).read_x(guest::VERSION_REG)?;
        check(
            &format!("SDEI_VERSION {version:#x} is 1.x"),
            version >> 48 == 1,
        )?;
        let spin = guest::spin_loop();
        check(
            "the handler interrupted the spin loop",
            handler_pc.is_some_and(|pc| spin.contains(&pc)),
        )?;
        check(
            "interrupts were masked (PSTATE.DAIF) when the event arrived",
            handler_pstate.is_some_and(|p| p & 0x3c0 == 0x3c0),
        )?;
        check(
            "the handler ran with its argument and the loop resumed after EVENT_COMPLETE",
            flag == HANDLER_ARG,
        )?;
        super::memory::check_tags(&vm, &ram)?;
        Ok(())
    }
}

/// Guest RAM from mte-memory: MTE enabled on the VM, one sealed memfd mapped `MAP_SHARED`,
/// registered under the slot number this VMM chose.
#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
mod memory {
    use std::sync::Arc;

    use kvm_ioctls::VmFd;
    use mte_memory::kvm::{enable, KvmTagStore, MemorySlots, MteEnabled, SlotFlags};
    use mte_memory::{SharedGuestMemory, SharedMemoryConfig, TagStore, TAGS_PER_PAGE};
    use vm_memory::GuestAddress;

    use super::guest::{BASE, SIZE};

    type Error = Box<dyn std::error::Error>;

    /// The slot this VMM gives guest RAM.
    const RAM_SLOT: u32 = 0;

    pub struct Ram {
        pub memory: Arc<SharedGuestMemory>,
        mte: MteEnabled,
        _slots: MemorySlots,
    }

    pub fn create(vm: &VmFd) -> Result<Ram, Error> {
        let mte = enable(vm)?;
        let memory = Arc::new(SharedGuestMemory::new(SharedMemoryConfig {
            regions: vec![(GuestAddress(BASE), SIZE)],
            mte_guest: true,
            ..Default::default()
        })?);
        let mut slots = MemorySlots::new(vm, Some(mte))?;
        slots.add_guest_memory(vm, &[RAM_SLOT], &memory, SlotFlags::default())?;
        Ok(Ram {
            memory,
            mte,
            _slots: slots,
        })
    }

    /// The guest never tagged its code page (its tags read zero); tags written to another
    /// page through KVM read back.
    pub fn check_tags(vm: &VmFd, ram: &Ram) -> Result<(), Error> {
        let mut store = KvmTagStore::new(vm, ram.mte)?;
        let mut tags = vec![0xFFu8; TAGS_PER_PAGE];
        store.read_tags(GuestAddress(BASE), &mut tags)?;
        if tags.iter().any(|t| *t != 0) {
            return Err("the guest's code page has non-zero MTE tags".into());
        }
        let pattern: Vec<u8> = (0..TAGS_PER_PAGE).map(|i| (i % 16) as u8).collect();
        let page = GuestAddress(BASE + 0x2_0000);
        store.write_tags(page, &pattern)?;
        store.read_tags(page, &mut tags)?;
        if tags != pattern {
            return Err("MTE tags written through KVM did not read back".into());
        }
        println!("minimal_vmm: MTE tags of guest RAM read and written through KVM: ok");
        Ok(())
    }
}

/// The guest: hand-assembled A64, position-dependent at [`guest::BASE`].
#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
mod guest {
    use std::ops::Range;

    use hypercall_router::testing::a64::{self, ldr_x, movk, movz, str_x, HANG, HVC0};

    pub const BASE: u64 = 0x8000_0000;
    pub const SIZE: u64 = 2 << 20;
    /// Where the handler leaves its argument.
    const FLAG: u64 = BASE + 0x1_0000;
    pub const HANDLER_PC_MMIO: u64 = 0x1000_0000;
    pub const HANDLER_PSTATE_MMIO: u64 = 0x1000_0008;
    pub const DONE_MMIO: u64 = 0x1000_0010;
    pub const FAIL_MMIO: u64 = 0x1000_0018;
    /// The register holding the `SDEI_VERSION` answer at the end (the register view covers
    /// x0-x17, the registers SMCCC uses).
    pub const VERSION_REG: u8 = 15;

    const SDEI_VERSION: u64 = 0xC400_0020;
    const SDEI_EVENT_REGISTER: u64 = 0xC400_0021;
    const SDEI_EVENT_ENABLE: u64 = 0xC400_0022;
    const SDEI_EVENT_COMPLETE: u64 = 0xC400_0025;
    const SDEI_PE_UNMASK: u64 = 0xC400_002C;
    const SIP_RAISE: u64 = 0xC200_0000;

    /// `msr daifset, #0xf`.
    const MASK_ALL: u32 = 0xD503_4FDF;
    /// `add x20, x20, #1`.
    const INC_X20: u32 = 0x9100_0694;
    /// `mov x15, x0`.
    const SAVE_VERSION: u32 = 0xAA00_03EF;

    /// A tiny assembler: words plus forward branches to labels.
    #[derive(Default)]
    struct Asm {
        words: Vec<u32>,
        /// (index of a `cbz`/`cbnz`, label) to patch.
        fixups: Vec<(usize, &'static str)>,
        labels: Vec<(&'static str, usize)>,
    }

    impl Asm {
        fn put(&mut self, w: u32) {
            self.words.push(w);
        }
        fn load(&mut self, rd: u32, value: u64) {
            a64::load(&mut self.words, rd, value);
        }
        fn label(&mut self, name: &'static str) {
            self.labels.push((name, self.words.len()));
        }
        fn at(&self, name: &str) -> usize {
            self.labels
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, i)| *i)
                .expect("label defined")
        }
        /// `cbnz x<rt>, label` (`nonzero`) or `cbz x<rt>, label`.
        fn branch_if(&mut self, nonzero: bool, rt: u32, label: &'static str) {
            self.fixups.push((self.words.len(), label));
            self.put(if nonzero { 0xB500_0000 } else { 0xB400_0000 } | rt);
        }
        /// A call with `x0` = `id` and arguments from `x1`; a non-zero result fails.
        fn sdei_call(&mut self, id: u64, args: &[u64]) {
            self.load(0, id);
            for (n, a) in (1u32..).zip(args) {
                self.load(n, *a);
            }
            self.put(HVC0);
            self.branch_if(true, 0, "fail");
        }
        fn finish(mut self) -> Vec<u32> {
            for (at, label) in std::mem::take(&mut self.fixups) {
                let offset = (self.at(label) as i64 - at as i64) as u32 & 0x7_FFFF;
                self.words[at] |= offset << 5;
            }
            self.words
        }
    }

    fn assemble() -> (Vec<u32>, Range<usize>) {
        let mut a = Asm::default();
        a.load(0, SDEI_VERSION);
        a.put(HVC0);
        a.put(SAVE_VERSION);
        // The handler's address is patched in once its position is known: two words.
        let register_at = a.words.len();
        a.sdei_call(
            SDEI_EVENT_REGISTER,
            &[
                super::vmm::EVENT.into(),
                0xFFFF_FFFF,
                super::vmm::HANDLER_ARG,
                0,
                0,
            ],
        );
        a.sdei_call(SDEI_EVENT_ENABLE, &[super::vmm::EVENT.into()]);
        a.sdei_call(SDEI_PE_UNMASK, &[]);
        a.put(MASK_ALL);
        a.load(10, FLAG);
        a.load(0, SIP_RAISE);
        a.put(HVC0);
        a.label("spin");
        a.put(INC_X20);
        a.put(ldr_x(9, 10));
        a.branch_if(false, 9, "spin");
        let spin_end = a.words.len();
        a.load(11, DONE_MMIO);
        a.put(str_x(9, 11));
        a.put(HANG);
        a.label("fail");
        a.load(11, FAIL_MMIO);
        a.put(str_x(0, 11));
        a.put(HANG);
        // The handler: x0 = event, x1 = argument, x2 = interrupted PC, x3 = its PSTATE.
        a.label("handler");
        a.load(12, HANDLER_PC_MMIO);
        a.put(str_x(2, 12));
        a.load(12, HANDLER_PSTATE_MMIO);
        a.put(str_x(3, 12));
        a.load(9, FLAG);
        a.put(str_x(1, 9));
        a.load(0, SDEI_EVENT_COMPLETE);
        a.load(1, 0);
        a.put(HVC0);
        a.put(HANG);
        let spin = a.at("spin")..spin_end;
        let handler = BASE + 4 * a.at("handler") as u64;
        let mut words = a.finish();
        // `load(2, 0xFFFF_FFFF)` in the register call is movz + movk: put the handler there.
        let x2_at = register_at + 2 + 2; // x0 (movz+movk), x1 (movz+movk)
        words[x2_at] = movz(2, handler as u16, 0);
        words[x2_at + 1] = movk(2, (handler >> 16) as u16, 16);
        (words, spin)
    }

    /// The program's bytes.
    pub fn program() -> Vec<u8> {
        a64::bytes(&assemble().0)
    }

    /// The guest addresses of the spin loop's instructions.
    pub fn spin_loop() -> Range<u64> {
        let words = assemble().1;
        BASE + 4 * words.start as u64..BASE + 4 * words.end as u64
    }
}
