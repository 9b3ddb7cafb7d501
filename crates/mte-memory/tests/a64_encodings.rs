//! The guest-payload encoders of `tests/a64` against the words GNU as
//! (`aarch64-linux-gnu-as -march=armv8.5-a+memtag`, objdump'ed) produced for the same
//! instructions. Runs on any host, so a wrong encoding shows before an arm64 run.

mod a64;

use a64::*;

#[test]
fn system_register_moves_match_gnu_as() {
    let cases = [
        (msr(SCTLR_EL1, 0), 0xd518_1000, "msr sctlr_el1, x0"),
        (msr(RGSR_EL1, 1), 0xd518_10a1, "msr rgsr_el1, x1"),
        (msr(GCR_EL1, 2), 0xd518_10c2, "msr gcr_el1, x2"),
        (msr(TTBR0_EL1, 3), 0xd518_2003, "msr ttbr0_el1, x3"),
        (msr(TCR_EL1, 4), 0xd518_2044, "msr tcr_el1, x4"),
        (msr(ELR_EL1, 5), 0xd518_4025, "msr elr_el1, x5"),
        (msr(MAIR_EL1, 6), 0xd518_a206, "msr mair_el1, x6"),
        (msr(VBAR_EL1, 7), 0xd518_c007, "msr vbar_el1, x7"),
        (mrs(20, ESR_EL1), 0xd538_5214, "mrs x20, esr_el1"),
        (mrs(21, FAR_EL1), 0xd538_6015, "mrs x21, far_el1"),
        (mrs(22, ELR_EL1), 0xd538_4036, "mrs x22, elr_el1"),
        (mrs(0, SCTLR_EL1), 0xd538_1000, "mrs x0, sctlr_el1"),
        (ISB, 0xd503_3fdf, "isb"),
        (DSB_ISH, 0xd503_3b9f, "dsb ish"),
        (TLBI_VMALLE1, 0xd508_871f, "tlbi vmalle1"),
    ];

    for (ours, gnu, text) in cases {
        assert_eq!(ours, gnu, "{text}: {ours:#010x} != {gnu:#010x}");
    }
}

#[test]
fn integer_branch_and_memory_instructions_match_gnu_as() {
    let cases = [
        (SPIN, 0x1400_0000, "b ."),
        (
            movz(3, 0x1234, 16),
            0xd2a2_4683,
            "movz x3, #0x1234, lsl #16",
        ),
        (
            movk(9, 0xabcd, 48),
            0xf2f5_79a9,
            "movk x9, #0xabcd, lsl #48",
        ),
        (orr(5, XZR, 2), 0xaa02_03e5, "mov x5, x2"),
        (orr(0, 0, 1), 0xaa01_0000, "orr x0, x0, x1"),
        (add_imm(2, 2, 16), 0x9100_4042, "add x2, x2, #16"),
        (subs_imm(3, 3, 1), 0xf100_0463, "subs x3, x3, #1"),
        (ubfx(6, 5, 56, 4), 0xd378_eca6, "ubfx x6, x5, #56, #4"),
        (b_ne(-6), 0x54ff_ff41, "b.ne .-24"),
        (b_ne(2), 0x5400_0041, "b.ne .+8"),
        (str_x(23, 9), 0xf900_0137, "str x23, [x9]"),
        (ldr_x(19, 8), 0xf940_0113, "ldr x19, [x8]"),
        (strb_post(6, 7, 1), 0x3800_14e6, "strb w6, [x7], #1"),
    ];

    for (ours, gnu, text) in cases {
        assert_eq!(ours, gnu, "{text}: {ours:#010x} != {gnu:#010x}");
    }
}

#[test]
fn mte_instructions_match_gnu_as() {
    let cases = [
        (stg(1, 1), 0xd920_0821, "stg x1, [x1]"),
        (st2g_post(1, 2, 32), 0xd9a0_2441, "st2g x1, [x2], #32"),
        (ldg(5, 2), 0xd960_0045, "ldg x5, [x2]"),
        (addg(1, 1, 16, 1), 0x9181_0421, "addg x1, x1, #16, #1"),
        (addg(4, 2, 1008, 15), 0x91bf_3c44, "addg x4, x2, #1008, #15"),
    ];

    for (ours, gnu, text) in cases {
        assert_eq!(ours, gnu, "{text}: {ours:#010x} != {gnu:#010x}");
    }
}

#[test]
fn load_builds_any_64_bit_value_from_four_moves() {
    let mut code = Vec::new();

    load(&mut code, 9, 0x0a00_0000_8001_0000);

    assert_eq!(
        code,
        [
            movz(9, 0, 0),
            movk(9, 0x8001, 16),
            movk(9, 0, 32),
            movk(9, 0x0a00, 48)
        ]
    );
    assert_eq!(bytes(&code[..1]), movz(9, 0, 0).to_le_bytes());
}
