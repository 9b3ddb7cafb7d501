//! Targets over the saved device and CPU state in a refvmm snapshot, the files anyone with
//! access to the snapshot directory could have replaced: `refvmm_gic_state` (`gic.bin`),
//! `refvmm_vcpu_state` (`vcpus.bin`) and `refvmm_console_state` (`serial.bin`).

use crate::header::{minor_and_flags, with_valid_checksums};
use refvmm::gic::state::{
    affinity, ap_count, dist_layout, icc_layout, CpuState, Error as GicError, GicState, FORMAT,
    ICC_CTLR_EL1, MAX_CPUS, REDIST_REGS,
};
use refvmm::snapshot::VCPUS;
use refvmm::vcpu::state::{reg_size, unify_counters, VcpuState, COUNTERS, MAX_REGS, MAX_REG_BYTES};

/// Decodes `data` as `gic.bin` (as given, and with the header's length and checksums made to
/// match), then builds a state from it (see [`gic_input`]) and checks that encoding and
/// decoding agree with [`GicState::check`].
///
/// A state that decodes must re-encode to exactly the input if its header is the current
/// version's (the format is canonical), and to bytes that decode to it in any case; pass its
/// own checks and fit a VM of its own shape, and have the register lists `save` writes.
///
/// # Panics
///
/// If the decoder panics, or one of those properties breaks.
pub fn run_refvmm_gic_state(data: &[u8]) {
    check_decoded_gic(data);
    if let Some(fixed) = with_valid_checksums(data) {
        check_decoded_gic(&fixed);
    }
    if let Some(input) = gic_input(data) {
        check_built_gic(input);
    }
}

fn check_decoded_gic(data: &[u8]) {
    let Ok(state) = GicState::decode(data) else {
        return;
    };
    let again = state.encode();
    if minor_and_flags(data) == (FORMAT.minor, 0) {
        assert_eq!(again, data, "a decoded GIC state re-encodes to its input");
    }
    assert_eq!(
        GicState::decode(&again).ok().as_ref(),
        Some(&state),
        "a re-encoded GIC state decodes to another"
    );
    check_accepted_gic(&state);
}

fn check_accepted_gic(state: &GicState) {
    assert!(state.check().is_ok());
    let mpidrs: Vec<u64> = state.cpus.iter().map(|c| c.mpidr).collect();
    assert!(state.check_fits(&mpidrs, state.nr_irqs).is_ok());
    assert!((64..=1024).contains(&state.nr_irqs) && state.nr_irqs % 32 == 0);
    assert!((1..=MAX_CPUS).contains(&state.cpus.len()));
    let layout = dist_layout(state.nr_irqs);
    assert_eq!(state.dist.len(), layout.len());
    assert!(state.dist.iter().zip(&layout).all(|(r, l)| r.0 == l.0));
    assert_eq!(
        state.dist.last().map(|r| r.0),
        Some(0),
        "GICD_CTLR comes last"
    );
    assert_eq!(state.spi_levels.len() as u32, state.nr_irqs / 32 - 1);
    for cpu in &state.cpus {
        assert_eq!(cpu.redist.len(), REDIST_REGS.len());
        let ctlr = cpu.icc_reg(ICC_CTLR_EL1).expect("ICC_CTLR_EL1 is saved");
        assert_eq!(cpu.icc.len(), 7 + 2 * ap_count(ctlr) as usize);
    }
}

/// A GIC state shape and values taken from a fuzz input, and one way to damage it.
#[derive(Debug)]
pub struct GicInput {
    /// The state, built with exactly the registers `save` writes for its shape.
    pub state: GicState,
    /// Whether the shape itself (interrupt and vCPU counts) is one a GICv3 in refvmm can have.
    pub valid_shape: bool,
    /// The damage done to the register lists after building, if any.
    pub damage: Option<GicDamage>,
}

/// Ways [`gic_input`] damages a built state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicDamage {
    /// The last distributor register is dropped.
    DropDist,
    /// A distributor register's offset is changed.
    MoveDist,
    /// One SPI line-level word is added.
    ExtraSpiLevel,
    /// A redistributor register is dropped.
    DropRedist,
    /// A vCPU's `ICC_CTLR_EL1` is rewritten after its list was built (the active-priority
    /// registers may no longer match).
    RewriteIccCtlr,
    /// Two adjacent distributor registers swap places.
    SwapDist,
}

/// Builds a [`GicInput`] from `data`: byte 0 times 32 is the interrupt count, byte 1 modulo 128
/// the vCPU count, byte 2 picks the damage (`0..6` one of [`GicDamage`], others none), byte 3
/// where it lands, and the remaining bytes, repeated, give the MPIDRs, the `ICC_CTLR_EL1`
/// values and every other register's value. `None` for inputs shorter than 4 bytes.
pub fn gic_input(data: &[u8]) -> Option<GicInput> {
    let [irq_byte, cpu_byte, damage_byte, at, rest @ ..] = data else {
        return None;
    };
    let mut values = rest.iter().copied().cycle();
    let mut next = |n: usize| -> u64 {
        (0..n).fold(0, |v, i| {
            v | u64::from(values.next().unwrap_or(0)) << (8 * i)
        })
    };
    let nr_irqs = u32::from(*irq_byte) * 32;
    let cpus = usize::from(cpu_byte % 128);
    let valid_shape = (64..=1024).contains(&nr_irqs) && (1..=MAX_CPUS).contains(&cpus);
    let state = GicState {
        nr_irqs,
        dist: dist_layout(nr_irqs)
            .iter()
            .map(|&(off, _)| (off, next(4) as u32))
            .collect(),
        spi_levels: (0..nr_irqs.saturating_sub(32) / 32)
            .map(|_| next(4) as u32)
            .collect(),
        cpus: (0..cpus)
            .map(|_| {
                let mpidr = next(8);
                let ctlr = next(2) & 0x7ff;
                CpuState {
                    mpidr,
                    redist: REDIST_REGS
                        .iter()
                        .map(|&(off, _)| (off, next(4) as u32))
                        .collect(),
                    ppi_levels: next(4) as u32,
                    icc: icc_layout(ctlr)
                        .iter()
                        .map(|&(reg, _)| (reg, if reg == ICC_CTLR_EL1 { ctlr } else { next(8) }))
                        .collect(),
                }
            })
            .collect(),
    };
    let mut input = GicInput {
        state,
        valid_shape,
        damage: None,
    };
    damage_gic(&mut input, *damage_byte, usize::from(*at));
    Some(input)
}

fn damage_gic(input: &mut GicInput, kind: u8, at: usize) {
    let s = &mut input.state;
    let damage = match kind {
        0 if !s.dist.is_empty() => {
            s.dist.pop();
            GicDamage::DropDist
        }
        1 if !s.dist.is_empty() => {
            let n = s.dist.len();
            s.dist[at % n].0 ^= 4 << (at % 3);
            GicDamage::MoveDist
        }
        2 => {
            s.spi_levels.push(at as u32);
            GicDamage::ExtraSpiLevel
        }
        3 if !s.cpus.is_empty() => {
            let n = s.cpus.len();
            s.cpus[at % n].redist.remove(at % REDIST_REGS.len());
            GicDamage::DropRedist
        }
        4 if !s.cpus.is_empty() => {
            let n = s.cpus.len();
            let cpu = &mut s.cpus[at % n];
            for r in cpu.icc.iter_mut().filter(|r| r.0 == ICC_CTLR_EL1) {
                r.1 = (at as u64 & 7) << 8;
            }
            GicDamage::RewriteIccCtlr
        }
        5 if s.dist.len() >= 2 => {
            let i = at % (s.dist.len() - 1);
            s.dist.swap(i, i + 1);
            GicDamage::SwapDist
        }
        _ => return,
    };
    input.damage = Some(damage);
}

fn check_built_gic(input: GicInput) {
    let GicInput {
        state,
        valid_shape,
        damage,
    } = input;
    let checked = state.check();
    // Without damage the lists are exactly the saved layout, so only the shape decides.
    if damage.is_none() {
        assert_eq!(checked.is_ok(), valid_shape, "{checked:?}");
    }
    // Damage that leaves the layout as `save` writes it: a rewritten ICC_CTLR_EL1 with the same
    // number of active-priority registers, or a swap of two registers at the same offset.
    let layout_intact = match damage {
        Some(GicDamage::RewriteIccCtlr) => state.cpus.iter().all(|c| {
            let ctlr = c.icc_reg(ICC_CTLR_EL1).unwrap_or_default();
            c.icc.len() == 7 + 2 * ap_count(ctlr) as usize
        }),
        Some(GicDamage::MoveDist | GicDamage::SwapDist) => {
            let layout = dist_layout(state.nr_irqs);
            state.dist.iter().zip(&layout).all(|(r, l)| r.0 == l.0)
        }
        Some(_) => false,
        None => true,
    };
    if valid_shape && !layout_intact {
        assert!(
            matches!(checked, Err(GicError::Layout(_))),
            "{damage:?} gave {checked:?}"
        );
    }
    if valid_shape && layout_intact {
        assert!(checked.is_ok(), "{damage:?} gave {checked:?}");
    }
    let bytes = state.encode();
    match GicState::decode(&bytes) {
        Ok(decoded) => {
            assert!(checked.is_ok(), "decode accepted a state check refuses");
            assert_eq!(decoded, state);
            check_accepted_gic(&decoded);
            check_fit(&decoded);
        }
        Err(e) => assert!(checked.is_err(), "decode refused a valid state: {e}"),
    }
}

/// `check_fits` looks at the affinity fields only, and at every vCPU.
fn check_fit(state: &GicState) {
    let nr = state.nr_irqs;
    let same: Vec<u64> = state
        .cpus
        .iter()
        .map(|c| c.mpidr ^ !0xff_00ff_ffff)
        .collect();
    assert!(state.check_fits(&same, nr).is_ok());
    let mut moved = same.clone();
    let last = moved.len() - 1;
    moved[last] ^= 1;
    assert!(matches!(
        state.check_fits(&moved, nr),
        Err(GicError::MpidrMismatch { index, .. }) if index == last
    ));
    assert_eq!(affinity(moved[last]) ^ affinity(same[last]), 1);
    assert!(state.check_fits(&same[..last], nr).is_err());
    assert!(state.check_fits(&same, nr + 32).is_err());
}

/// Decodes `data` as `vcpus.bin` the way restore does ([`VCPUS`]: the header, a postcard
/// `Vec<VcpuState>`; then [`unify_counters`] and [`VcpuState::check`] for each vCPU), as given
/// and with the header's length and checksums made to match, and checks the result.
///
/// A list that decodes must encode to bytes that decode to the same list; aligning the
/// counters must change nothing but the 8-byte counter values, make them all the latest one
/// saved, not change what the checks accept, and be idempotent; an accepted state has at most
/// [`MAX_REGS`] registers, each of the size its id gives and at most [`MAX_REG_BYTES`].
///
/// # Panics
///
/// If the decoder panics, or one of those properties breaks.
pub fn run_refvmm_vcpu_state(data: &[u8]) {
    check_vcpus(data);
    if let Some(fixed) = with_valid_checksums(data) {
        check_vcpus(&fixed);
    }
}

fn check_vcpus(data: &[u8]) {
    let Ok(states) = VCPUS.decode::<Vec<VcpuState>>(data) else {
        return;
    };
    let again = VCPUS.encode(&states).expect("a decoded state encodes");
    assert_eq!(
        VCPUS.decode::<Vec<VcpuState>>(&again).ok(),
        Some(states.clone())
    );
    let before: Vec<bool> = checks(&states);
    for (st, ok) in states.iter().zip(&before) {
        if *ok {
            assert!(st.regs.len() <= MAX_REGS);
            for (id, v) in &st.regs {
                assert!(v.len() == reg_size(*id) && v.len() <= MAX_REG_BYTES);
            }
        }
    }
    let latest: Vec<Option<u64>> = COUNTERS
        .iter()
        .map(|&id| states.iter().filter_map(|st| st.reg_u64(id)).max())
        .collect();
    let mut unified = states.clone();
    unify_counters(&mut unified);
    assert_eq!(
        checks(&unified),
        before,
        "aligning the counters changes no check"
    );
    for ((old, new), ok) in states.iter().zip(&unified).zip(&before) {
        assert_eq!(old.mp_state, new.mp_state);
        assert_eq!(old.regs.len(), new.regs.len());
        for ((id, v), (nid, nv)) in old.regs.iter().zip(&new.regs) {
            assert_eq!(id, nid);
            let counter = COUNTERS.iter().position(|c| c == id);
            match counter.and_then(|i| latest[i]) {
                Some(l) if v.len() == 8 => {
                    assert_eq!(nv.as_slice(), l.to_le_bytes());
                    // The time a restored guest sees never goes back (for the states restore
                    // accepts: each counter saved once).
                    let saved = u64::from_le_bytes(v.as_slice().try_into().expect("8 bytes"));
                    assert!(!ok || l >= saved, "counter {id:#x} moved back");
                }
                _ => assert_eq!(v, nv),
            }
        }
    }
    let mut twice = unified.clone();
    unify_counters(&mut twice);
    assert_eq!(twice, unified, "aligning the counters is idempotent");
}

fn checks(states: &[VcpuState]) -> Vec<bool> {
    states
        .iter()
        .enumerate()
        .map(|(i, st)| st.check(i).is_ok())
        .collect()
}

/// Decodes `data` as `serial.bin` ([`refvmm::snapshot::SERIAL`]: the header, a postcard
/// [`ConsoleState`]), as given and with the header's length and checksums made to match, and
/// restores it into a console as refvmm's restore does.
///
/// A console state must restore exactly when its input FIFO fits the 16550's 64 bytes; a
/// restored console must save the very state it was restored from (also after the guest reads
/// its side-effect-free registers, which must show the restored values), raise its interrupt
/// once for each pending cause that is enabled, and restoring must not depend on anything
/// else; a decoded state must encode to bytes that decode to it.
///
/// # Panics
///
/// If decoding or restoring panics, or one of those properties breaks.
pub fn run_refvmm_console_state(data: &[u8]) {
    check_console(data);
    if let Some(fixed) = with_valid_checksums(data) {
        check_console(&fixed);
    }
}

fn check_console(data: &[u8]) {
    use refvmm::devices::serial::Console;
    use refvmm::devices::MmioDevice;
    use refvmm::{devices::serial::ConsoleState, snapshot::SERIAL};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let Ok(wire) = SERIAL.decode::<ConsoleState>(data) else {
        return;
    };
    let again = SERIAL.encode(&wire).expect("a decoded state encodes");
    assert_eq!(
        SERIAL.decode::<ConsoleState>(&again).ok(),
        Some(wire.clone())
    );
    let irq = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
    let restored = Console::from_state(
        irq.try_clone().expect("a second eventfd handle"),
        Vec::new(),
        &wire,
    );
    assert_eq!(
        restored.is_ok(),
        wire.input.len() <= 64,
        "{} bytes of input",
        wire.input.len()
    );
    let Ok(mut console) = restored else {
        return;
    };
    assert_eq!(console.state(), wire, "a restored console saves its state");
    assert_eq!(console.input_room(), 64 - wire.input.len());
    let [dll, dlm, ier, iir, lcr, lsr, mcr, _msr, scr] = wire.regs;
    let thr_pending = ier & 0x02 != 0 && iir & 0x02 != 0;
    let rda_pending = ier & 0x01 != 0 && iir & 0x04 != 0;
    assert_eq!(
        irq.read().unwrap_or(0),
        u64::from(thr_pending) + u64::from(rda_pending),
        "interrupts raised on restore"
    );
    let read = |c: &mut Console<Vec<u8>>, offset: u64| {
        let mut b = [0u8; 4];
        c.read(offset, &mut b);
        assert_eq!(b[1..], [0, 0, 0]);
        b[0]
    };
    let dlab = lcr & 0x80 != 0;
    assert_eq!(read(&mut console, 1), if dlab { dlm } else { ier });
    if dlab {
        assert_eq!(read(&mut console, 0), dll);
    }
    assert_eq!(read(&mut console, 3), lcr);
    assert_eq!(read(&mut console, 4), mcr);
    assert_eq!(read(&mut console, 5), lsr);
    assert_eq!(read(&mut console, 7), scr);
    assert_eq!(console.state(), wire, "register reads change nothing");
    assert!(irq.read().is_err(), "register reads raise no interrupt");
}
