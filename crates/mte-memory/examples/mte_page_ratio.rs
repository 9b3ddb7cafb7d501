//! Ratio benchmark of what MTE adds to the two page operations a kernel does for every tagged
//! page (aarch64 with MTE; run in the emulated arm64 machine by `cargo xtask bench`):
//!
//! - clearing a page: `DC ZVA` over 4 KiB (data only) against `DC GZVA` (data and allocation
//!   tags at once), as Linux clears a page with and without tags;
//! - copying a page: a 4 KiB copy against the same copy plus each of the 256 granules' tags
//!   (`LDG` from the source, `STG` to the destination; EL0 has no `LDGM`/`STGM`, so this is
//!   the per-granule form, an upper bound of the kernel's bulk copy).
//!
//! All four run on the same `PROT_MTE` mapping (on untagged memory tag accesses do nothing),
//! interleaved over several rounds; it prints each round's nanoseconds per page and the
//! medians of the per-round ratios. On arm64 hardware the ratios say what MTE costs per page;
//! in emulation (QEMU TCG) they say only what the emulator makes of it, and are reported with
//! that caveat.

#[cfg(target_arch = "aarch64")]
mod bench {
    use std::arch::asm;
    use std::time::Instant;

    const PAGE: usize = 4096;
    const PAGES: usize = 64;
    const REPEAT: usize = 40;
    const ROUNDS: usize = 7;
    /// `PROT_MTE` from the arm64 uapi.
    const PROT_MTE: i32 = 0x20;
    /// `HWCAP2_MTE`.
    const HWCAP2_MTE: u64 = 1 << 18;
    const GRANULE: usize = 16;

    /// The `DC ZVA` block size in bytes (`DCZID_EL0`).
    fn zva_block() -> usize {
        let v: u64;
        // SAFETY: reading DCZID_EL0 is allowed at EL0 and has no side effects.
        unsafe { asm!("mrs {0}, dczid_el0", out(reg) v) };
        assert_eq!(v & 0x10, 0, "DC ZVA is prohibited (DCZID_EL0.DZP)");
        4 << (v & 0xf)
    }

    /// Zeroes the page at `p` with `DC ZVA`.
    ///
    /// # Safety
    /// `p` is page-aligned and the page is mapped writable.
    #[inline(never)]
    unsafe fn clear_plain(p: *mut u8, bs: usize) {
        let mut off = 0;
        while off < PAGE {
            // SAFETY: inside the caller's page; DC ZVA writes zeros to one aligned block.
            unsafe { asm!("dc zva, {0}", in(reg) p.add(off), options(nostack)) };
            off += bs;
        }
    }

    /// Zeroes the page at `p` and its allocation tags with `DC GZVA`.
    ///
    /// # Safety
    /// `p` is page-aligned and the page is mapped writable with `PROT_MTE`.
    #[inline(never)]
    unsafe fn clear_tags(p: *mut u8, bs: usize) {
        let mut off = 0;
        while off < PAGE {
            // SAFETY: inside the caller's tagged page; DC GZVA zeroes one block and its tags.
            unsafe {
                asm!(".arch_extension memtag", "dc gzva, {0}", in(reg) p.add(off), options(nostack))
            };
            off += bs;
        }
    }

    /// Copies the page at `src` to `dst`.
    ///
    /// # Safety
    /// Both are distinct mapped pages, `dst` writable.
    #[inline(never)]
    unsafe fn copy_plain(dst: *mut u8, src: *const u8) {
        // SAFETY: two distinct pages, as the caller guarantees.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, PAGE) };
    }

    /// Copies the page at `src` to `dst` with each granule's allocation tag.
    ///
    /// # Safety
    /// Both are distinct pages mapped with `PROT_MTE`, `dst` writable.
    #[inline(never)]
    unsafe fn copy_tags(dst: *mut u8, src: *const u8) {
        let mut off = 0;
        while off < PAGE {
            // SAFETY: both granules lie in the caller's tagged pages; LDG reads src's tag into
            // the destination address, STG stores it for that granule.
            unsafe {
                asm!(
                    ".arch_extension memtag",
                    "ldg {t}, [{s}]",
                    "stg {t}, [{t}]",
                    s = in(reg) src.add(off),
                    t = inout(reg) dst.add(off) => _,
                    options(nostack)
                )
            };
            off += GRANULE;
        }
        // SAFETY: as above.
        unsafe { copy_plain(dst, src) };
    }

    /// The allocation tag of the granule at `p`.
    fn tag_of(p: *const u8) -> u64 {
        let mut t = p as u64;
        // SAFETY: LDG only reads the tag of a granule of the caller's tagged mapping.
        unsafe {
            asm!(".arch_extension memtag", "ldg {t}, [{t}]", t = inout(reg) t, options(nostack))
        };
        (t >> 56) & 0xf
    }

    /// Gives the granule at `p` tag `tag`.
    fn set_tag(p: *mut u8, tag: u64) {
        let t = (p as u64 & !(0xf << 56)) | (tag << 56);
        // SAFETY: STG sets the tag of one granule of the caller's tagged, writable mapping.
        unsafe {
            asm!(".arch_extension memtag", "stg {t}, [{t}]", t = in(reg) t, options(nostack))
        };
    }

    /// `PAGES` source pages followed by `PAGES` destination pages, mapped `PROT_MTE` and
    /// writable for the whole run (never unmapped: the process ends first).
    struct Pages {
        src: *mut u8,
        bs: usize,
    }

    impl Pages {
        fn src(&self, i: usize) -> *mut u8 {
            assert!(i < PAGES);
            self.src.wrapping_add(i * PAGE)
        }

        fn dst(&self, i: usize) -> *mut u8 {
            assert!(i < PAGES);
            self.src.wrapping_add((PAGES + i) * PAGE)
        }

        fn fill_source(&self, i: usize, byte: u8, tag: u64) {
            for g in (0..PAGE).step_by(GRANULE) {
                set_tag(self.src(i).wrapping_add(g), tag);
            }
            // SAFETY: source page `i` of the mapping, writable.
            unsafe { std::ptr::write_bytes(self.src(i), byte, PAGE) };
        }

        fn dst_is_zero(&self, i: usize) -> bool {
            // SAFETY: destination page `i` of the mapping, readable, not written meanwhile.
            unsafe { std::slice::from_raw_parts(self.dst(i), PAGE) }
                .iter()
                .all(|b| *b == 0)
        }

        fn clear_plain(&self, i: usize) {
            // SAFETY: destination page `i`: page-aligned, mapped writable.
            unsafe { clear_plain(self.dst(i), self.bs) }
        }

        fn clear_tags(&self, i: usize) {
            // SAFETY: destination page `i`: page-aligned, mapped writable with PROT_MTE.
            unsafe { clear_tags(self.dst(i), self.bs) }
        }

        fn copy_plain(&self, i: usize) {
            // SAFETY: source and destination page `i` are distinct pages of the mapping.
            unsafe { copy_plain(self.dst(i), self.src(i)) }
        }

        fn copy_tags(&self, i: usize) {
            // SAFETY: as for `copy_plain`, both mapped with PROT_MTE.
            unsafe { copy_tags(self.dst(i), self.src(i)) }
        }
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn time(mut f: impl FnMut()) -> f64 {
        let t = Instant::now();
        for _ in 0..REPEAT {
            f();
        }
        t.elapsed().as_nanos() as f64 / (REPEAT * PAGES) as f64
    }

    pub fn run() -> std::process::ExitCode {
        // SAFETY: getauxval has no preconditions.
        if unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_MTE == 0 {
            eprintln!("mte_page_ratio: this CPU or kernel offers no MTE to user space");
            return std::process::ExitCode::from(2);
        }
        let len = 2 * PAGES * PAGE;
        // SAFETY: a fresh anonymous mapping with no address hint; the result is checked.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE | PROT_MTE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            eprintln!(
                "mte_page_ratio: cannot map PROT_MTE memory: {}",
                std::io::Error::last_os_error()
            );
            return std::process::ExitCode::from(2);
        }
        let pages = Pages {
            src: area.cast::<u8>(),
            bs: zva_block(),
        };
        // Source pages: non-zero data, every granule tagged 0x5.
        for i in 0..PAGES {
            pages.fill_source(i, 0xa5, 0x5);
        }
        // Each operation does what it says, once.
        pages.copy_tags(0);
        assert_eq!(tag_of(pages.dst(0).wrapping_add(4080)), 0x5, "tags copied");
        pages.clear_tags(0);
        assert_eq!(tag_of(pages.dst(0).wrapping_add(4080)), 0, "tags cleared");
        pages.copy_plain(1);
        pages.clear_plain(1);
        assert!(pages.dst_is_zero(1), "page cleared");
        let (mut clear_ratio, mut copy_ratio) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let cp = time(|| (0..PAGES).for_each(|i| pages.clear_plain(i)));
            let ct = time(|| (0..PAGES).for_each(|i| pages.clear_tags(i)));
            let yp = time(|| (0..PAGES).for_each(|i| pages.copy_plain(i)));
            let yt = time(|| (0..PAGES).for_each(|i| pages.copy_tags(i)));
            println!(
                "mte_page_ratio: round {round}: ns per page: clear {cp:.0}, clear with tags {ct:.0}, copy {yp:.0}, copy with tags {yt:.0}"
            );
            clear_ratio.push(ct / cp);
            copy_ratio.push(yt / yp);
        }
        let bs = pages.bs;
        println!(
            "mte_page_ratio: tag-zeroing clear / plain clear {:.2}; tag-copying copy / plain copy {:.2} (medians of {ROUNDS} rounds, {PAGES} pages x {REPEAT}, DC ZVA block {bs} bytes)",
            median(clear_ratio),
            median(copy_ratio)
        );
        std::process::ExitCode::SUCCESS
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(target_arch = "aarch64")]
    return bench::run();
    #[cfg(not(target_arch = "aarch64"))]
    {
        eprintln!("mte_page_ratio needs an aarch64 host with MTE");
        std::process::ExitCode::from(2)
    }
}
