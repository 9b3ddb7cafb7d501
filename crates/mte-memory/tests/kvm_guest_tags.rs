//! MTE seen from inside a guest: needs an arm64 host (or emulated machine) with MTE and
//! `/dev/kvm`. Run with `cargo xtask arm64 test -p mte-memory guest`.
//!
//! Each VM has 2 MiB of memfd `MAP_SHARED` memory at 0x8000_0000 (memory slot 5, a number
//! the test chooses) and runs a hand-assembled
//! payload (`tests/a64`) that turns its MMU on with guest RAM mapped Normal Tagged (MAIR
//! attribute 0xF0), `SCTLR_EL1.ATA` set and synchronous tag check faults at EL1. The payload
//! ends with a store to unbacked, Device-mapped memory (a `KVM_EXIT_MMIO`): one address when
//! it finishes, another from its exception vectors, which first copy ESR_EL1, FAR_EL1 and
//! ELR_EL1 into x20..x22.
#![cfg(all(target_arch = "aarch64", feature = "kvm"))]

mod a64;

use std::sync::Arc;

use a64::*;
use kvm_bindings::{kvm_vcpu_init, KVM_REG_ARM64, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use mte_memory::kvm::{self, KvmTagStore, MemorySlots, MteEnabled, SlotFlags};
use mte_memory::{
    SharedGuestMemory, SharedMemoryConfig, TagSnapshot, TagStore, TAGS_PER_PAGE, TAG_PAGE_SIZE,
};
use vm_memory::{Bytes, GuestAddress};

// Guest-physical layout. Everything but the MMIO addresses is in the one RAM region.
const BASE: u64 = 0x8000_0000;
/// The memory slot of the RAM region: any number will do, KVM takes the caller's.
const RAM_SLOT: u32 = 5;
const SIZE: u64 = 2 << 20;
const VECTORS: u64 = BASE + 0x1000;
const TABLE: u64 = BASE + 0x2000;
const RESULTS: u64 = BASE + 0x3000;
/// Four pages the tagger tags granule by granule with ADDG: tag (FIRST_TAG + granule) mod 16.
const STEPPED: u64 = BASE + 0x1_0000;
const STEPPED_GRANULES: usize = 4 * TAGS_PER_PAGE;
const FIRST_TAG: u8 = 3;
/// One page the tagger tags two granules at a time with ST2G.
const PAIRED: u64 = BASE + 0x2_0000;
const PAIRED_TAG: u8 = 0xA;
/// A page the VMM tags for the checker.
const VMM_PAGE: u64 = BASE + 0x3_0000;
const DONE_MMIO: u64 = 0x1000_0000;
const FAULT_MMIO: u64 = 0x1000_0008;
const DONE_MARK: u64 = 0x600D;

/// MAIR_EL1: attribute 0 = 0xF0 (Normal, Tagged, write-back), attribute 1 = 0x00 (Device).
const MAIR: u64 = 0xF0;
/// TCR_EL1: T0SZ=25 (39-bit VA, walk starts at level 1), inner/outer write-back
/// write-allocate, inner shareable, 4 KiB granule, TTBR1 walks off (EPD1), IPS 40 bits,
/// top byte ignored for TTBR0 addresses (TBI0) so pointers can carry tags.
const TCR: u64 = 25 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 23 | 2 << 32 | 1 << 37;
/// SCTLR_EL1 bits to set: M (MMU), C, I, TCF=0b01 (synchronous tag check faults at EL1) and
/// ATA (allocation tag access at EL1).
const SCTLR_SET: u64 = 1 | 1 << 2 | 1 << 12 | 1 << 40 | 1 << 43;
/// Level-1 block descriptors (1 GiB): valid block, AttrIndx, SH inner (Normal), AF.
const RAM_BLOCK: u64 = BASE | 1 << 10 | 3 << 8 | 0b01;
const DEVICE_BLOCK: u64 = 1 << 54 | 1 << 53 | 1 << 10 | 1 << 2 | 0b01;

/// Vector table entry "current EL with SP_ELx, synchronous".
const SYNC_CURRENT_EL: u64 = 4;
/// ESR_ELx.EC of a data abort taken without a change of exception level.
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// ESR_ELx.ISS.DFSC of a synchronous tag check fault.
const DFSC_TAG_CHECK: u64 = 0x11;

fn tagged(tag: u8, addr: u64) -> u64 {
    u64::from(tag) << 56 | addr
}

fn stepped_tag(granule: usize) -> u8 {
    ((usize::from(FIRST_TAG) + granule) % 16) as u8
}

/// MMU, translation, tag exclusion and vectors; on return the MMU is on.
fn prologue(code: &mut Vec<u32>) {
    load(code, 0, MAIR);
    code.push(msr(MAIR_EL1, 0));
    load(code, 0, TCR);
    code.push(msr(TCR_EL1, 0));
    load(code, 0, TABLE);
    code.push(msr(TTBR0_EL1, 0));
    // No tag excluded, so ADDG steps through all sixteen tags.
    code.push(msr(GCR_EL1, XZR));
    load(code, 0, VECTORS);
    code.push(msr(VBAR_EL1, 0));
    code.extend([ISB, TLBI_VMALLE1, DSB_ISH, ISB]);
    code.push(mrs(0, SCTLR_EL1));
    load(code, 1, SCTLR_SET);
    code.push(orr(0, 0, 1));
    code.push(msr(SCTLR_EL1, 0));
    code.push(ISB);
}

fn finish(code: &mut Vec<u32>, value_reg: u32) {
    load(code, 9, DONE_MMIO);
    code.push(str_x(value_reg, 9));
    code.push(SPIN);
}

/// Tags the STEPPED pages with STG, storing each granule's tagged pointer into it with a
/// (checked) STR, and the PAIRED page with ST2G.
fn tagger() -> Vec<u32> {
    let mut code = Vec::new();
    prologue(&mut code);
    load(&mut code, 1, tagged(FIRST_TAG, STEPPED));
    load(&mut code, 3, STEPPED_GRANULES as u64);
    let top = code.len();
    code.push(stg(1, 1));
    code.push(str_x(1, 1));
    code.push(addg(1, 1, 16, 1));
    code.push(subs_imm(3, 3, 1));
    code.push(b_ne(top as i32 - code.len() as i32));
    load(&mut code, 1, tagged(PAIRED_TAG, 0));
    load(&mut code, 2, PAIRED);
    load(&mut code, 3, (TAGS_PER_PAGE / 2) as u64);
    let top = code.len();
    code.push(st2g_post(1, 2, 32));
    code.push(subs_imm(3, 3, 1));
    code.push(b_ne(top as i32 - code.len() as i32));
    load(&mut code, 3, DONE_MARK);
    finish(&mut code, 3);
    code
}

/// What the checker does: LDG every granule of `scan`, writing one tag per byte to RESULTS;
/// load through `matching` into x19; load through `mismatched` (which should fault).
struct Check {
    scan: u64,
    granules: usize,
    matching: u64,
    mismatched: u64,
}

/// The checker payload and the index of its mismatched load.
fn checker(check: &Check) -> (Vec<u32>, usize) {
    let mut code = Vec::new();
    prologue(&mut code);
    load(&mut code, 2, check.scan);
    load(&mut code, 7, RESULTS);
    load(&mut code, 3, check.granules as u64);
    let top = code.len();
    code.push(orr(5, XZR, 2));
    code.push(ldg(5, 2));
    code.push(ubfx(6, 5, 56, 4));
    code.push(strb_post(6, 7, 1));
    code.push(add_imm(2, 2, 16));
    code.push(subs_imm(3, 3, 1));
    code.push(b_ne(top as i32 - code.len() as i32));
    load(&mut code, 8, check.matching);
    code.push(ldr_x(19, 8));
    load(&mut code, 10, check.mismatched);
    let fault_at = code.len();
    code.push(ldr_x(24, 10));
    finish(&mut code, 24);
    (code, fault_at)
}

/// Sixteen vector entries: record ESR/FAR/ELR in x20..x22, the entry number in x23, exit.
fn vectors() -> Vec<u8> {
    let mut table = Vec::new();
    for entry in 0..16u16 {
        let mut code = vec![mrs(20, ESR_EL1), mrs(21, FAR_EL1), mrs(22, ELR_EL1)];
        code.push(movz(23, entry, 0));
        load(&mut code, 9, FAULT_MMIO);
        code.push(str_x(23, 9));
        code.push(SPIN);
        let mut bytes = bytes(&code);
        assert!(bytes.len() <= 0x80);
        bytes.resize(0x80, 0);
        table.extend(bytes);
    }
    table
}

/// An MTE VM with its memory registered as slot [`RAM_SLOT`].
struct Guest {
    vm: VmFd,
    mte: MteEnabled,
    slots: MemorySlots,
    memory: Arc<SharedGuestMemory>,
}

impl Guest {
    fn store(&self) -> KvmTagStore<'_> {
        KvmTagStore::new(&self.vm, self.mte).unwrap()
    }
}

/// An MTE VM with its memory, page tables and vectors in place (no vCPU yet); with
/// `dirty_log`, its memory slot logs dirty pages.
fn mte_guest_with(dirty_log: bool) -> Guest {
    let kvm = Kvm::new().expect("/dev/kvm is needed for this test");
    let vm = kvm.create_vm().unwrap();
    let mte = kvm::enable(&vm).unwrap();
    let memory = Arc::new(
        SharedGuestMemory::new(SharedMemoryConfig {
            regions: vec![(GuestAddress(BASE), SIZE)],
            mte_guest: true,
            ..Default::default()
        })
        .unwrap(),
    );
    let mut slots = MemorySlots::new(&vm, Some(mte)).unwrap();
    let flags = SlotFlags {
        dirty_log,
        ..Default::default()
    };
    slots
        .add_guest_memory(&vm, &[RAM_SLOT], &memory, flags)
        .unwrap();
    let guest = memory.memory();
    guest.write_obj(DEVICE_BLOCK, GuestAddress(TABLE)).unwrap();
    guest
        .write_obj(RAM_BLOCK, GuestAddress(TABLE + 2 * 8))
        .unwrap();
    guest
        .write_slice(&vectors(), GuestAddress(VECTORS))
        .unwrap();
    Guest {
        vm,
        mte,
        slots,
        memory,
    }
}

fn mte_guest() -> Guest {
    mte_guest_with(false)
}

fn core_reg(index: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | index
}

/// ONE_REG id of x`n`: `regs.regs[n]` is at byte 8n of `struct kvm_regs`, counted in u32s.
fn x_reg(n: u64) -> u64 {
    core_reg(n * 2)
}

/// ONE_REG id of the PC: `regs.pc` follows x0..x30 and sp, at byte 256.
fn pc_reg() -> u64 {
    core_reg(256 / 4)
}

fn read_x(vcpu: &VcpuFd, n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    vcpu.get_one_reg(x_reg(n), &mut bytes).unwrap();
    u64::from_ne_bytes(bytes)
}

/// How a payload stopped.
#[derive(Debug, PartialEq)]
enum Stop {
    Done(u64),
    Exception {
        entry: u64,
        esr: u64,
        far: u64,
        elr: u64,
    },
}

/// Loads `code` at BASE, creates vCPU 0 there and runs it until the payload's MMIO store.
fn run(guest: &Guest, code: &[u32]) -> (VcpuFd, Stop) {
    let code = bytes(code);
    assert!(code.len() as u64 <= VECTORS - BASE, "payload too long");
    guest
        .memory
        .memory()
        .write_slice(&code, GuestAddress(BASE))
        .unwrap();
    let mut vcpu = guest.vm.create_vcpu(0).unwrap();
    let mut init = kvm_vcpu_init::default();
    guest.vm.get_preferred_target(&mut init).unwrap();
    vcpu.vcpu_init(&init).unwrap();
    vcpu.set_one_reg(pc_reg(), &BASE.to_ne_bytes()).unwrap();

    let (addr, value) = match vcpu.run().unwrap() {
        VcpuExit::MmioWrite(addr, data) => {
            let mut value = [0u8; 8];
            let n = data.len().min(8);
            value[..n].copy_from_slice(&data[..n]);
            (addr, u64::from_le_bytes(value))
        }
        other => panic!("unexpected exit {other:?}"),
    };
    let stop = match addr {
        DONE_MMIO => Stop::Done(value),
        FAULT_MMIO => Stop::Exception {
            entry: value,
            esr: read_x(&vcpu, 20),
            far: read_x(&vcpu, 21),
            elr: read_x(&vcpu, 22),
        },
        other => panic!("MMIO store to unexpected address {other:#x}"),
    };
    (vcpu, stop)
}

fn read_tags(guest: &Guest, addr: u64, granules: usize) -> Vec<u8> {
    let mut tags = vec![0xffu8; granules];
    guest
        .store()
        .read_tags(GuestAddress(addr), &mut tags)
        .unwrap();
    tags
}

fn assert_tag_check_fault(stop: &Stop, pointer: u64, fault_pc: u64) {
    let Stop::Exception {
        entry,
        esr,
        far,
        elr,
    } = *stop
    else {
        panic!("the mismatched load did not fault: {stop:x?}");
    };
    println!("tag check fault: ESR_EL1 {esr:#x}, FAR_EL1 {far:#x}, ELR_EL1 {elr:#x}");
    assert_eq!(entry, SYNC_CURRENT_EL);
    assert_eq!(esr >> 26 & 0x3f, EC_DATA_ABORT_SAME_EL, "ESR {esr:#x}");
    assert_eq!(esr & 0x3f, DFSC_TAG_CHECK, "ESR {esr:#x}");
    assert_eq!(esr >> 6 & 1, 0, "a load, not a store: ESR {esr:#x}");
    // FAR_EL1 holds the faulting address with its logical tag; bits 63:60 are UNKNOWN.
    assert_eq!(far & ((1 << 60) - 1), pointer, "FAR {far:#x}");
    assert_eq!(elr, fault_pc);
}

#[test]
fn guest_set_tags_are_read_by_the_vmm_through_kvm() {
    let vm = mte_guest();

    let (_vcpu, stop) = run(&vm, &tagger());

    assert_eq!(stop, Stop::Done(DONE_MARK));
    let want: Vec<u8> = (0..STEPPED_GRANULES).map(stepped_tag).collect();
    assert_eq!(read_tags(&vm, STEPPED, STEPPED_GRANULES), want);
    assert_eq!(
        read_tags(&vm, PAIRED, TAGS_PER_PAGE),
        vec![PAIRED_TAG; TAGS_PER_PAGE]
    );
    assert_eq!(
        read_tags(&vm, PAIRED + 0x1000, TAGS_PER_PAGE),
        vec![0; TAGS_PER_PAGE],
        "a page the guest did not tag"
    );
    for granule in [0, 1, 255, 256, STEPPED_GRANULES - 1] {
        let addr = STEPPED + 16 * granule as u64;
        let data: u64 = vm.memory.memory().read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(
            data,
            tagged(stepped_tag(granule), addr),
            "checked store landed"
        );
    }
}

#[test]
fn vmm_set_tags_are_seen_and_checked_by_the_guest() {
    let vm = mte_guest();
    let memory = &vm.memory;
    let tags: Vec<u8> = (0..TAGS_PER_PAGE)
        .map(|g| ((g * 7 + 1) % 16) as u8)
        .collect();
    vm.store()
        .write_tags(GuestAddress(VMM_PAGE), &tags)
        .unwrap();
    let granule = 37;
    let addr = VMM_PAGE + 16 * granule as u64;
    let data = 0x1122_3344_5566_7788u64;
    memory.memory().write_obj(data, GuestAddress(addr)).unwrap();
    let check = Check {
        scan: VMM_PAGE,
        granules: TAGS_PER_PAGE,
        matching: tagged(tags[granule], addr),
        mismatched: tagged(tags[granule] ^ 0x8, addr),
    };
    let (code, fault_at) = checker(&check);

    let (vcpu, stop) = run(&vm, &code);

    let mut seen = vec![0xffu8; TAGS_PER_PAGE];
    memory
        .memory()
        .read_slice(&mut seen, GuestAddress(RESULTS))
        .unwrap();
    assert_eq!(seen, tags, "tags read by the guest with LDG");
    assert_eq!(read_x(&vcpu, 19), data, "load with the matching tag");
    assert_tag_check_fault(&stop, check.mismatched, BASE + 4 * fault_at as u64);
}

#[test]
fn snapshot_restored_into_a_fresh_vm_keeps_guest_tag_checks() {
    let source = mte_guest();
    let (source_vcpu, stop) = run(&source, &tagger());
    assert_eq!(stop, Stop::Done(DONE_MARK));
    let mut ram = vec![0u8; SIZE as usize];
    source
        .memory
        .memory()
        .read_slice(&mut ram, GuestAddress(BASE))
        .unwrap();
    let saved = TagSnapshot::capture_full(&source.store(), &source.memory.regions())
        .unwrap()
        .encode();
    drop(source_vcpu);
    let Guest { vm, mut slots, .. } = source;
    slots.remove(&vm, RAM_SLOT).unwrap();
    drop(vm);

    let target = mte_guest();
    let memory = &target.memory;
    let before = read_tags(&target, STEPPED, STEPPED_GRANULES);
    memory
        .memory()
        .write_slice(&ram, GuestAddress(BASE))
        .unwrap();
    TagSnapshot::decode(&saved)
        .unwrap()
        .restore(&mut target.store())
        .unwrap();
    let granule = 700;
    let addr = STEPPED + 16 * granule as u64;
    let tag = stepped_tag(granule);
    let check = Check {
        scan: STEPPED,
        granules: STEPPED_GRANULES,
        matching: tagged(tag, addr),
        mismatched: tagged((tag + 1) & 0xf, addr),
    };
    let (code, fault_at) = checker(&check);
    let (vcpu, stop) = run(&target, &code);

    assert!(before.iter().all(|&t| t == 0), "fresh VM starts untagged");
    let mut seen = vec![0xffu8; STEPPED_GRANULES];
    memory
        .memory()
        .read_slice(&mut seen, GuestAddress(RESULTS))
        .unwrap();
    let want: Vec<u8> = (0..STEPPED_GRANULES).map(stepped_tag).collect();
    assert_eq!(seen, want, "restored tags read by the guest with LDG");
    assert_eq!(
        read_x(&vcpu, 19),
        tagged(tag, addr),
        "data stored by the first VM, loaded with the matching tag"
    );
    assert_tag_check_fault(&stop, check.mismatched, BASE + 4 * fault_at as u64);
}

#[test]
fn dirty_log_of_the_callers_slot_names_the_pages_the_guest_tagged() {
    let source = mte_guest_with(true);
    let (_vcpu, stop) = run(&source, &tagger());
    assert_eq!(stop, Stop::Done(DONE_MARK));

    let dirty = source.slots.dirty_pages(&source.vm, RAM_SLOT).unwrap();
    let regions = source.memory.regions();
    let saved = TagSnapshot::capture_dirty(&source.store(), &regions, std::slice::from_ref(&dirty))
        .unwrap();
    let target = mte_guest();
    saved.restore(&mut target.store()).unwrap();

    let page = |addr: u64| (addr - BASE) / TAG_PAGE_SIZE;
    let stepped: Vec<u64> = (0..4).map(|p| page(STEPPED) + p).collect();
    for p in stepped.iter().copied().chain([page(PAIRED)]) {
        assert!(dirty.contains(p), "page {p} was tagged by the guest");
    }
    assert!(
        !dirty.contains(page(VMM_PAGE)),
        "the guest never wrote this page"
    );
    assert!(
        !dirty.contains(page(RESULTS)),
        "the guest never wrote this page"
    );
    let want: Vec<u8> = (0..STEPPED_GRANULES).map(stepped_tag).collect();
    assert_eq!(read_tags(&target, STEPPED, STEPPED_GRANULES), want);
    assert_eq!(
        read_tags(&target, PAIRED, TAGS_PER_PAGE),
        vec![PAIRED_TAG; TAGS_PER_PAGE]
    );
    assert!(
        source
            .slots
            .dirty_pages(&source.vm, RAM_SLOT)
            .unwrap()
            .count()
            == 0,
        "reading the log reset it"
    );
}
