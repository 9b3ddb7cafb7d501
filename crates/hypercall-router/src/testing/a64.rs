//! A few A64 instruction encodings, for tests and examples that hand-assemble a guest
//! (feature `test-utils` with `std`).

/// `hvc #0`.
pub const HVC0: u32 = 0xD400_0002;
/// `smc #0`.
pub const SMC0: u32 = 0xD400_0003;
/// `b .`: spin in place.
pub const HANG: u32 = 0x1400_0000;

/// `movz x<rd>, #imm, lsl #shift` (`shift` 0, 16, 32 or 48).
pub const fn movz(rd: u32, imm: u16, shift: u32) -> u32 {
    0xD280_0000 | (shift / 16) << 21 | (imm as u32) << 5 | rd
}

/// `movk x<rd>, #imm, lsl #shift`.
pub const fn movk(rd: u32, imm: u16, shift: u32) -> u32 {
    0xF280_0000 | (shift / 16) << 21 | (imm as u32) << 5 | rd
}

/// `mov x<rd>, x<rm>` (`orr x<rd>, xzr, x<rm>`).
pub const fn mov(rd: u32, rm: u32) -> u32 {
    0xAA00_03E0 | rm << 16 | rd
}

/// `str x<rt>, [x<rn>]`.
pub const fn str_x(rt: u32, rn: u32) -> u32 {
    0xF900_0000 | rn << 5 | rt
}

/// `ldr x<rt>, [x<rn>]`.
pub const fn ldr_x(rt: u32, rn: u32) -> u32 {
    0xF940_0000 | rn << 5 | rt
}

/// Appends the shortest `movz`/`movk` sequence that puts `value` in `x<rd>`.
pub fn load(code: &mut Vec<u32>, rd: u32, value: u64) {
    code.push(movz(rd, value as u16, 0));
    for shift in [16u32, 32, 48] {
        let part = (value >> shift) as u16;
        if part != 0 {
            code.push(movk(rd, part, shift));
        }
    }
}

/// The instructions as little-endian bytes, as guest memory holds them.
pub fn bytes(code: &[u32]) -> Vec<u8> {
    code.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_assembler() {
        // As GNU as encodes them.
        assert_eq!(movz(0, 0x21, 0), 0xD280_0420); // mov x0, #0x21
        assert_eq!(movk(0, 0xC400, 16), 0xF2B8_8000); // movk x0, #0xc400, lsl #16
        assert_eq!(mov(21, 0), 0xAA00_03F5); // mov x21, x0
        assert_eq!(str_x(9, 11), 0xF900_0169); // str x9, [x11]
        assert_eq!(ldr_x(9, 10), 0xF940_0149); // ldr x9, [x10]
        let mut code = Vec::new();
        load(&mut code, 1, 0x0100_0000);
        assert_eq!(code, [movz(1, 0, 0), movk(1, 0x0100, 16)]);
        assert_eq!(bytes(&[HVC0]), [0x02, 0x00, 0x00, 0xD4]);
    }
}
