//! GICv3 state save and restore against KVM's in-kernel vgic-v3. These talk to a real
//! `/dev/kvm` and so only run on aarch64 (inside the emulated machine on x86 hosts).
#![cfg(target_arch = "aarch64")]

use kvm_bindings::{
    kvm_device_attr, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
};
use kvm_ioctls::{DeviceFd, Kvm, VmFd};
use refvmm::gic::persist::{restore, save};
use refvmm::gic::state::{affinity, sysreg, Error, GicState, FORMAT};
use refvmm::gic::Gic;
use refvmm::layout::GIC_NR_IRQS;
use refvmm::vcpu::Vcpu;
use sdei_migration::header::HeaderError;

const ICC_PMR_EL1: u32 = sysreg(3, 0, 4, 6, 0);
const ICC_CTLR_EL1: u32 = sysreg(3, 0, 12, 12, 4);
const GICD_CTLR_ENABLE_G1A: u32 = 1 << 1;
/// The word of GICD_ISENABLER holding INTIDs 32..63 (and likewise for the other 1-bit ones).
const GICD_ISENABLER1: u32 = 0x104;
const GICD_ISPENDR1: u32 = 0x204;
const GICD_ISACTIVER1: u32 = 0x304;
/// GICD_IPRIORITYR8: priorities of INTIDs 32..35.
const GICD_IPRIORITYR8: u32 = 0x420;
/// GICD_ICFGR2: configuration of INTIDs 32..47.
const GICD_ICFGR2: u32 = 0xc08;
/// GICD_IROUTER of INTID 33.
const GICD_IROUTER33: u32 = 0x6000 + 8 * 33;
const GICR_ISPENDR0: u32 = 0x1_0200;
const GICR_ISENABLER0: u32 = 0x1_0100;

struct TestVm {
    // Field order is drop order: the GIC and vCPUs go before the VM.
    gic: Gic,
    _vcpus: Vec<Vcpu>,
    vm: VmFd,
    mpidrs: Vec<u64>,
}

impl TestVm {
    fn fd(&self) -> &DeviceFd {
        self.gic.fd()
    }
}

/// A VM with `cpus` vCPUs (preferred target, PSCI 0.2) and refvmm's GICv3.
fn test_vm(kvm: &Kvm, cpus: u8) -> TestVm {
    let vm = kvm.create_vm().expect("create VM");
    let base = Vcpu::preferred_init(&vm).expect("preferred target");
    let vcpus: Vec<Vcpu> = (0..cpus)
        .map(|i| {
            let fd = vm.create_vcpu(u64::from(i)).expect("create vCPU");
            Vcpu::new(fd, i, &base, Default::default()).expect("init vCPU")
        })
        .collect();
    let mpidrs: Vec<u64> = vcpus.iter().map(Vcpu::mpidr).collect();
    let gic = Gic::new(&vm, &mpidrs).expect("create GICv3");
    TestVm {
        gic,
        _vcpus: vcpus,
        vm,
        mpidrs,
    }
}

fn cpu_attr(mpidr: u64) -> u64 {
    ((mpidr & 0xff_ffff) | ((mpidr >> 8) & 0xff00_0000)) << 32
}

fn write<T: Copy>(gic: &DeviceFd, group: u32, attr: u64, value: T) {
    let a = kvm_device_attr {
        group,
        attr,
        addr: &value as *const T as u64,
        flags: 0,
    };
    gic.set_device_attr(&a)
        .unwrap_or_else(|e| panic!("write group {group} attribute {attr:#x}: {e}"));
}

/// Programs state a fresh GIC does not have, through the same device attributes the guest's
/// MMIO and system register accesses end up in.
fn program_distinctive_state(vm: &TestVm) {
    let gic = vm.fd();
    let dist = KVM_DEV_ARM_VGIC_GRP_DIST_REGS;
    let (cpu0, cpu1) = (vm.mpidrs[0], vm.mpidrs[1]);
    write(gic, dist, GICD_ISENABLER1.into(), 0x0000_0105u32); // INTIDs 32, 34, 40
    write(gic, dist, GICD_IPRIORITYR8.into(), 0xd0c0_b0a0u32);
    write(gic, dist, GICD_ICFGR2.into(), 0x8u32); // INTID 33 edge-triggered
    write(gic, dist, GICD_IROUTER33.into(), affinity(cpu1) as u32);
    write(gic, dist, GICD_ISPENDR1.into(), 1u32 << 2); // INTID 34 pending
    write(gic, dist, GICD_ISACTIVER1.into(), 1u32 << 3); // INTID 35 active
    write(gic, KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, 32, 1u32 << 8); // INTID 40 line high
    write(gic, dist, 0, GICD_CTLR_ENABLE_G1A);
    let redist1 = cpu_attr(cpu1);
    write(
        gic,
        KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
        redist1 | u64::from(GICR_ISENABLER0),
        1u32 << 20,
    );
    write(
        gic,
        KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
        redist1 | u64::from(GICR_ISPENDR0),
        1u32 << 20,
    );
    let pmr0 = cpu_attr(cpu0) | u64::from(ICC_PMR_EL1);
    write(gic, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, pmr0, 0xf0u64);
}

/// Sets bits that the saved state has clear, which restore must therefore clear.
fn program_state_the_saved_one_lacks(vm: &TestVm) {
    let gic = vm.fd();
    let dist = KVM_DEV_ARM_VGIC_GRP_DIST_REGS;
    write(gic, dist, GICD_ISENABLER1.into(), 1u32 << 31); // INTID 63 enabled
    write(gic, dist, GICD_ISACTIVER1.into(), 1u32 << 4); // INTID 36 active
    let redist0 = cpu_attr(vm.mpidrs[0]);
    write(
        gic,
        KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
        redist0 | u64::from(GICR_ISPENDR0),
        1u32 << 21,
    );
}

fn assert_has_distinctive_state(s: &GicState, mpidrs: &[u64]) {
    let reg = |off| {
        s.dist_reg(off)
            .unwrap_or_else(|| panic!("{off:#x} not saved"))
    };
    assert_eq!(reg(GICD_ISENABLER1) & 0x105, 0x105, "SPI enables");
    assert_eq!(reg(GICD_IPRIORITYR8), 0xd0c0_b0a0, "SPI priorities");
    assert_eq!(reg(GICD_ICFGR2) & 0xc, 0x8, "INTID 33 edge-triggered");
    assert_eq!(
        u64::from(reg(GICD_IROUTER33)),
        affinity(mpidrs[1]),
        "INTID 33 routed to vCPU 1"
    );
    assert_ne!(reg(GICD_ISPENDR1) & (1 << 2), 0, "INTID 34 pending");
    assert_ne!(reg(GICD_ISACTIVER1) & (1 << 3), 0, "INTID 35 active");
    assert_ne!(s.spi_levels[0] & (1 << 8), 0, "INTID 40 line level");
    assert_ne!(reg(0) & GICD_CTLR_ENABLE_G1A, 0, "distributor enabled");
    let pending = |cpu: usize| {
        s.cpus[cpu]
            .redist_reg(GICR_ISPENDR0)
            .expect("GICR_ISPENDR0")
    };
    assert_ne!(pending(1) & (1 << 20), 0, "PPI 20 pending on vCPU 1");
    assert_eq!(pending(0) & (1 << 20), 0, "PPI 20 not pending on vCPU 0");
    assert_eq!(
        s.cpus[0].icc_reg(ICC_PMR_EL1),
        Some(0xf0),
        "vCPU 0 priority mask"
    );
    assert_ne!(
        s.cpus[1].icc_reg(ICC_PMR_EL1),
        Some(0xf0),
        "vCPU 1 priority mask untouched"
    );
}

#[test]
fn gic_state_restore_into_same_shape_reproduces_saved_state() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let a = test_vm(&kvm, 2);
    program_distinctive_state(&a);
    let b = test_vm(&kvm, 2);
    program_state_the_saved_one_lacks(&b);

    let saved = save(a.fd(), &a.mpidrs, GIC_NR_IRQS).expect("save VM A");
    let fresh = save(b.fd(), &b.mpidrs, GIC_NR_IRQS).expect("save fresh VM B");
    restore(b.fd(), &b.mpidrs, GIC_NR_IRQS, &saved).expect("restore into VM B");
    let restored = save(b.fd(), &b.mpidrs, GIC_NR_IRQS).expect("save VM B again");

    assert_has_distinctive_state(&saved, &a.mpidrs);
    assert_ne!(
        fresh, saved,
        "a fresh GIC must differ from the programmed one"
    );
    assert_eq!(restored, saved);
}

#[test]
fn gic_state_restore_into_other_vcpu_count_fails_and_writes_nothing() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let a = test_vm(&kvm, 2);
    program_distinctive_state(&a);
    let saved = save(a.fd(), &a.mpidrs, GIC_NR_IRQS).expect("save");
    let c = test_vm(&kvm, 1);
    let before = save(c.fd(), &c.mpidrs, GIC_NR_IRQS).expect("save 1-vCPU VM");

    let err = restore(c.fd(), &c.mpidrs, GIC_NR_IRQS, &saved).expect_err("2 vCPUs into 1");

    assert!(
        matches!(err, Error::CpuCountMismatch { saved: 2, vm: 1 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "The GIC state has 2 vCPUs but the VM has 1"
    );
    let after = save(c.fd(), &c.mpidrs, GIC_NR_IRQS).expect("save 1-vCPU VM again");
    assert_eq!(before, after, "a refused restore must not touch the GIC");
}

#[test]
fn gic_state_restore_refuses_other_interrupt_count_and_vcpu_order() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let a = test_vm(&kvm, 2);
    let saved = save(a.fd(), &a.mpidrs, GIC_NR_IRQS).expect("save");
    let swapped = [a.mpidrs[1], a.mpidrs[0]];

    let irqs = restore(a.fd(), &a.mpidrs, 256, &saved).expect_err("256 interrupts");
    let order = restore(a.fd(), &swapped, GIC_NR_IRQS, &saved).expect_err("swapped vCPUs");
    let device = save(a.fd(), &a.mpidrs, 256).expect_err("device has 128 interrupts");

    assert!(
        matches!(
            irqs,
            Error::NrIrqsMismatch {
                saved: 128,
                vm: 256
            }
        ),
        "{irqs:?}"
    );
    assert!(
        matches!(order, Error::MpidrMismatch { index: 0, .. }),
        "{order:?}"
    );
    assert!(
        matches!(
            device,
            Error::DeviceNrIrqs {
                device: 128,
                given: 256
            }
        ),
        "{device:?}"
    );
}

#[test]
fn gic_state_save_refuses_a_gic_with_an_its() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let mut vm = test_vm(&kvm, 1);
    vm.gic.add_its(&vm.vm).expect("add ITS");

    let err = save(vm.fd(), &vm.mpidrs, GIC_NR_IRQS).expect_err("ITS VM");

    assert!(matches!(err, Error::Lpis), "{err:?}");
}

fn saved_state() -> GicState {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = test_vm(&kvm, 2);
    program_distinctive_state(&vm);
    save(vm.fd(), &vm.mpidrs, GIC_NR_IRQS).expect("save")
}

#[test]
fn gic_state_encode_decode_round_trips() {
    let state = saved_state();

    let decoded = GicState::decode(&state.encode()).expect("decode");

    assert_eq!(decoded, state);
}

const HEADER_LEN: usize = sdei_migration::header::HEADER_LEN;

#[test]
fn gic_state_decode_refuses_every_truncation_and_trailing_bytes() {
    let bytes = saved_state().encode();

    for len in 0..bytes.len() {
        let r = GicState::decode(&bytes[..len]);
        assert!(
            matches!(r, Err(Error::Header(HeaderError::Truncated { .. }))),
            "prefix of {len} bytes: {r:?}"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        GicState::decode(&long),
        Err(Error::Header(HeaderError::TrailingBytes(1)))
    ));
    let mut payload = bytes[HEADER_LEN..].to_vec();
    payload.push(0);
    assert!(matches!(
        GicState::decode(&FORMAT.seal(&payload).unwrap()),
        Err(Error::TrailingBytes(1))
    ));
}

#[test]
fn gic_state_decode_refuses_corrupted_headers_and_layouts() {
    let bytes = saved_state().encode();
    // A payload edited behind a header that matches it.
    let with = |at: usize, v: u32| {
        let mut payload = bytes[HEADER_LEN..].to_vec();
        payload[at..at + 4].copy_from_slice(&v.to_le_bytes());
        GicState::decode(&FORMAT.seal(&payload).unwrap())
    };
    let mut damaged = bytes.clone();
    damaged[HEADER_LEN + 9] ^= 1;

    assert!(matches!(
        GicState::decode(&damaged),
        Err(Error::Header(HeaderError::PayloadChecksumMismatch { .. }))
    ));
    // Payload layout: nr_irqs, distributor count, then (offset, value) pairs.
    assert!(matches!(with(0, 33), Err(Error::BadNrIrqs(33))));
    assert!(matches!(with(0, 256), Err(Error::Layout("distributor"))));
    assert!(matches!(with(4, u32::MAX), Err(Error::Truncated)));
    assert!(matches!(with(8, 0x9999), Err(Error::Layout("distributor"))));
}

#[test]
fn gic_state_check_ties_active_priority_registers_to_icc_ctlr() {
    let mut state = saved_state();
    let ctlr = state.cpus[0].icc_reg(ICC_CTLR_EL1).expect("ICC_CTLR_EL1");
    // PRIbits 4 (5 bits, one AP register each) or 6 (7 bits, four): whichever differs.
    let other = if (ctlr >> 8) & 7 == 4 { 6 } else { 4 };
    let entry = state.cpus[0]
        .icc
        .iter_mut()
        .find(|r| r.0 == ICC_CTLR_EL1)
        .expect("entry");
    entry.1 = (ctlr & !(7 << 8)) | (other << 8);

    let err = GicState::decode(&state.encode()).expect_err("AP count no longer matches");

    assert!(matches!(err, Error::Layout("CPU interface")), "{err:?}");
}

#[test]
fn gic_state_decode_refuses_any_single_byte_corruption() {
    let bytes = saved_state().encode();

    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        // The header's checksums catch every one, without a panic.
        assert!(
            GicState::decode(&b).is_err(),
            "flipping byte {i} was accepted"
        );
    }
}
