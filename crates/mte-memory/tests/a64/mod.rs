//! A tiny A64 assembler for the guest payloads of the KVM tests: only the instructions they
//! need, each hand-encoded from its encoding class in the Arm Architecture Reference Manual
//! (section C4, "A64 Instruction Set Encoding"; MTE instructions from FEAT_MTE/FEAT_MTE2).
//! Registers are numbers 0..=30; 31 means XZR (or SP where the class says so).
//!
//! The encodings were checked against GNU as (`aarch64-linux-gnu-as -march=armv8.5-a+memtag`)
//! when written; `tests/a64_encodings.rs` keeps those words and checks the encoders against them on any host.
#![allow(dead_code)]

/// Zero register (in the classes that read register 31 as XZR).
pub const XZR: u32 = 31;

/// A system register as its `op0:op1:CRn:CRm:op2` fields (Arm ARM D19/D23, "AArch64 System
/// Register Descriptions", encoding of each register).
#[derive(Clone, Copy, Debug)]
pub struct SysReg {
    op0: u32,
    op1: u32,
    crn: u32,
    crm: u32,
    op2: u32,
}

const fn sysreg(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> SysReg {
    SysReg {
        op0,
        op1,
        crn,
        crm,
        op2,
    }
}

/// SCTLR_EL1: S3_0_C1_C0_0.
pub const SCTLR_EL1: SysReg = sysreg(3, 0, 1, 0, 0);
/// RGSR_EL1 (MTE random tag seed): S3_0_C1_C0_5.
pub const RGSR_EL1: SysReg = sysreg(3, 0, 1, 0, 5);
/// GCR_EL1 (MTE tag exclusion): S3_0_C1_C0_6.
pub const GCR_EL1: SysReg = sysreg(3, 0, 1, 0, 6);
/// TTBR0_EL1: S3_0_C2_C0_0.
pub const TTBR0_EL1: SysReg = sysreg(3, 0, 2, 0, 0);
/// TCR_EL1: S3_0_C2_C0_2.
pub const TCR_EL1: SysReg = sysreg(3, 0, 2, 0, 2);
/// ELR_EL1: S3_0_C4_C0_1.
pub const ELR_EL1: SysReg = sysreg(3, 0, 4, 0, 1);
/// ESR_EL1: S3_0_C5_C2_0.
pub const ESR_EL1: SysReg = sysreg(3, 0, 5, 2, 0);
/// FAR_EL1: S3_0_C6_C0_0.
pub const FAR_EL1: SysReg = sysreg(3, 0, 6, 0, 0);
/// MAIR_EL1: S3_0_C10_C2_0.
pub const MAIR_EL1: SysReg = sysreg(3, 0, 10, 2, 0);
/// VBAR_EL1: S3_0_C12_C0_0.
pub const VBAR_EL1: SysReg = sysreg(3, 0, 12, 0, 0);

/// `isb` (hints and barriers class: CRm=0b1111, op2=0b110).
pub const ISB: u32 = 0xD503_3FDF;
/// `dsb ish` (CRm=0b1011, op2=0b100).
pub const DSB_ISH: u32 = 0xD503_3B9F;
/// `tlbi vmalle1` (SYS #0, C8, C7, #0, XZR).
pub const TLBI_VMALLE1: u32 = 0xD508_871F;
/// `b .` (unconditional branch, imm26 = 0).
pub const SPIN: u32 = 0x1400_0000;

/// `msr <reg>, xt` (System register move, L=0; op0 bit 1 is implied, bit 0 is `o0`).
pub fn msr(reg: SysReg, rt: u32) -> u32 {
    0xD500_0000 | sysreg_fields(reg) | rt
}

/// `mrs xt, <reg>` (System register move, L=1).
pub fn mrs(rt: u32, reg: SysReg) -> u32 {
    0xD520_0000 | sysreg_fields(reg) | rt
}

fn sysreg_fields(r: SysReg) -> u32 {
    (r.op0 & 3) << 19 | r.op1 << 16 | r.crn << 12 | r.crm << 8 | r.op2 << 5
}

/// `movz xd, #imm, lsl #shift` (move wide immediate, sf=1 opc=10).
pub fn movz(rd: u32, imm: u16, shift: u32) -> u32 {
    0xD280_0000 | (shift / 16) << 21 | u32::from(imm) << 5 | rd
}

/// `movk xd, #imm, lsl #shift` (move wide immediate, sf=1 opc=11).
pub fn movk(rd: u32, imm: u16, shift: u32) -> u32 {
    0xF280_0000 | (shift / 16) << 21 | u32::from(imm) << 5 | rd
}

/// `orr xd, xn, xm` (logical shifted register, sf=1 opc=01, LSL #0); `mov` when `rn` is XZR.
pub fn orr(rd: u32, rn: u32, rm: u32) -> u32 {
    0xAA00_0000 | rm << 16 | rn << 5 | rd
}

/// `add xd, xn, #imm12` (add/subtract immediate, sf=1 op=0 S=0).
pub fn add_imm(rd: u32, rn: u32, imm12: u32) -> u32 {
    0x9100_0000 | (imm12 & 0xFFF) << 10 | rn << 5 | rd
}

/// `subs xd, xn, #imm12` (add/subtract immediate, sf=1 op=1 S=1).
pub fn subs_imm(rd: u32, rn: u32, imm12: u32) -> u32 {
    0xF100_0000 | (imm12 & 0xFFF) << 10 | rn << 5 | rd
}

/// `ubfx xd, xn, #lsb, #width` = `ubfm xd, xn, #lsb, #(lsb + width - 1)` (bitfield, sf=1 N=1).
pub fn ubfx(rd: u32, rn: u32, lsb: u32, width: u32) -> u32 {
    0xD340_0000 | lsb << 16 | (lsb + width - 1) << 10 | rn << 5 | rd
}

/// `b.ne` back or forward by `offset` instructions (conditional branch, cond NE = 0b0001).
pub fn b_ne(offset: i32) -> u32 {
    0x5400_0000 | ((offset as u32) & 0x7FFFF) << 5 | 0x1
}

/// `str xt, [xn]` (load/store register, unsigned offset 0, size=11 opc=00).
pub fn str_x(rt: u32, rn: u32) -> u32 {
    0xF900_0000 | rn << 5 | rt
}

/// `ldr xt, [xn]` (load/store register, unsigned offset 0, size=11 opc=01).
pub fn ldr_x(rt: u32, rn: u32) -> u32 {
    0xF940_0000 | rn << 5 | rt
}

/// `strb wt, [xn], #imm9` (load/store register, post-indexed, size=00 opc=00).
pub fn strb_post(rt: u32, rn: u32, imm9: i32) -> u32 {
    0x3800_0400 | ((imm9 as u32) & 0x1FF) << 12 | rn << 5 | rt
}

/// `stg xt, [xn]` (MTE store allocation tag, signed offset 0): the tag in bits 59:56 of `xt`
/// becomes the allocation tag of the granule at `xn`.
pub fn stg(rt: u32, rn: u32) -> u32 {
    0xD920_0800 | rn << 5 | rt
}

/// `st2g xt, [xn], #imm` (MTE store allocation tags of two granules, post-indexed; `imm` is a
/// multiple of 16).
pub fn st2g_post(rt: u32, rn: u32, imm: i32) -> u32 {
    0xD9A0_0400 | (((imm / 16) as u32) & 0x1FF) << 12 | rn << 5 | rt
}

/// `ldg xt, [xn]` (MTE load allocation tag, offset 0): inserts the allocation tag of the
/// granule at `xn` into bits 59:56 of `xt`, keeping its other bits.
pub fn ldg(rt: u32, rn: u32) -> u32 {
    0xD960_0000 | rn << 5 | rt
}

/// `addg xd, xn, #offset, #tag_offset` (MTE add with tag; `offset` a multiple of 16 up to
/// 1008, `tag_offset` 0..=15; the new tag skips tags excluded by GCR_EL1).
pub fn addg(rd: u32, rn: u32, offset: u32, tag_offset: u32) -> u32 {
    0x9180_0000 | (offset / 16) << 16 | tag_offset << 10 | rn << 5 | rd
}

/// Appends `movz`/`movk` instructions loading the 64-bit `value` into `rd`.
pub fn load(code: &mut Vec<u32>, rd: u32, value: u64) {
    code.push(movz(rd, value as u16, 0));
    for shift in [16, 32, 48] {
        code.push(movk(rd, (value >> shift) as u16, shift));
    }
}

/// Little-endian bytes of the instruction words, as they are laid out in guest memory.
pub fn bytes(code: &[u32]) -> Vec<u8> {
    code.iter().flat_map(|w| w.to_le_bytes()).collect()
}
