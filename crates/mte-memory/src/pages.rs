//! Which page size guest memory gets from the host kernel, and why.
//!
//! Stage-2 faults and TLB misses cost a guest per host page, so a 2 MiB page instead of 512
//! 4 KiB ones matters for boot time and for every workload. What a mapping gets depends on its
//! backing and on host policy:
//!
//! - private anonymous memory gets transparent huge pages (THP) when
//!   `/sys/kernel/mm/transparent_hugepage/enabled` is `always`, or `madvise` (this crate
//!   always asks with `MADV_HUGEPAGE`);
//! - shmem (a memfd, `MAP_SHARED`) follows `.../transparent_hugepage/shmem_enabled` instead:
//!   huge pages with `always`, `within_size`, `advise` (asked for) or `force`, none with
//!   `never` (a stock Debian kernel's setting) or `deny`;
//! - hugetlb (`MFD_HUGETLB`) always uses huge pages, taken from a pool the administrator
//!   reserves (`/proc/sys/vm/nr_hugepages`, empty by default).
//!
//! [`HostPolicy::read`] reads these settings; [`HostPolicy::plan`] says what a backing gets.
//! The parsing is pure and tested with fixed inputs.
//!
//! ```
//! use mte_memory::pages::HostPolicy;
//! use mte_memory::RegionBacking;
//!
//! let host = HostPolicy {
//!     thp_enabled: Some("[always] madvise never".into()),
//!     shmem_enabled: Some("always within_size advise [never] deny force".into()),
//!     ..HostPolicy::default()
//! };
//! assert_eq!(host.plan(RegionBacking::Anonymous, 512 << 20).page_size, 2 << 20);
//! assert_eq!(host.plan(RegionBacking::Memfd, 512 << 20).page_size, 4096);
//! ```

use std::fmt;

use crate::memory::RegionBacking;

const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";
const HUGETLB_2M_FREE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

/// The host's page-size settings that decide what guest memory gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// The base page size (`sysconf(_SC_PAGESIZE)`).
    pub base_page: u64,
    /// The size of a PMD-mapped transparent huge page (`hpage_pmd_size`).
    pub thp_size: u64,
    /// `transparent_hugepage/enabled` as read (`None`: no THP in this kernel).
    pub thp_enabled: Option<String>,
    /// `transparent_hugepage/shmem_enabled` as read (`None`: no shmem THP).
    pub shmem_enabled: Option<String>,
    /// Free 2 MiB hugetlb pages (`None`: no such pool).
    pub hugetlb_free: Option<u64>,
}

impl Default for HostPolicy {
    /// A 4 KiB-page host with 2 MiB huge pages and no THP or hugetlb settings known.
    fn default() -> Self {
        HostPolicy {
            base_page: 4096,
            thp_size: 2 << 20,
            thp_enabled: None,
            shmem_enabled: None,
            hugetlb_free: None,
        }
    }
}

/// What a backing gets on a host: its page size and the setting that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePlan {
    /// The page size the memory will be mapped with (where the kernel finds free huge pages;
    /// THP falls back to base pages when memory is fragmented).
    pub page_size: u64,
    /// Why, naming the host setting.
    pub reason: String,
    /// Whether creating the memory will fail (a hugetlb pool too small).
    pub will_fail: bool,
}

impl fmt::Display for PagePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pages ({})", human(self.page_size), self.reason)
    }
}

/// A size as "4 KiB", "2 MiB".
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes % 1024 == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// The selected word of a sysfs policy file: `always [madvise] never` gives `madvise`.
pub fn selected(setting: &str) -> Option<&str> {
    let start = setting.find('[')?;
    let rest = &setting[start + 1..];
    let end = rest.find(']')?;
    Some(&rest[..end])
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

impl HostPolicy {
    /// Reads the running host's settings (missing files leave their field `None`).
    pub fn read() -> Self {
        HostPolicy {
            base_page: crate::sys::page_size(),
            thp_size: read_trimmed(&format!("{THP_DIR}/hpage_pmd_size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(2 << 20),
            thp_enabled: read_trimmed(&format!("{THP_DIR}/enabled")),
            shmem_enabled: read_trimmed(&format!("{THP_DIR}/shmem_enabled")),
            hugetlb_free: read_trimmed(HUGETLB_2M_FREE).and_then(|s| s.parse().ok()),
        }
    }

    /// Whether private anonymous memory asked for huge pages gets them.
    pub fn anonymous_huge(&self) -> bool {
        matches!(
            self.thp_enabled.as_deref().and_then(selected),
            Some("always" | "madvise")
        )
    }

    /// Whether shmem (a memfd) asked for huge pages gets them.
    pub fn shmem_huge(&self) -> bool {
        matches!(
            self.shmem_enabled.as_deref().and_then(selected),
            Some("always" | "within_size" | "advise" | "force")
        )
    }

    /// What `backing` gets for `bytes` of memory on this host.
    pub fn plan(&self, backing: RegionBacking, bytes: u64) -> PagePlan {
        let setting = |name: &str, v: &Option<String>| match v.as_deref().and_then(selected) {
            Some(s) => format!("transparent_hugepage/{name} is {s}"),
            None => format!("this kernel has no transparent_hugepage/{name}"),
        };
        match backing {
            RegionBacking::Anonymous => PagePlan {
                page_size: if self.anonymous_huge() {
                    self.thp_size
                } else {
                    self.base_page
                },
                reason: setting("enabled", &self.thp_enabled),
                will_fail: false,
            },
            RegionBacking::Memfd => {
                let huge = self.shmem_huge();
                let mut reason = setting("shmem_enabled", &self.shmem_enabled);
                if !huge {
                    reason.push_str("; advise or always there would give huge pages");
                }
                PagePlan {
                    page_size: if huge { self.thp_size } else { self.base_page },
                    reason,
                    will_fail: false,
                }
            }
            RegionBacking::HugetlbMemfd => {
                let need = bytes.div_ceil(crate::memory::HUGE_PAGE_SIZE);
                match self.hugetlb_free {
                    Some(free) if free >= need => PagePlan {
                        page_size: crate::memory::HUGE_PAGE_SIZE,
                        reason: format!("{free} free in the 2 MiB hugetlb pool, {need} needed"),
                        will_fail: false,
                    },
                    free => PagePlan {
                        page_size: crate::memory::HUGE_PAGE_SIZE,
                        reason: format!(
                            "{} free in the 2 MiB hugetlb pool, {need} needed: reserve them \
                             with /proc/sys/vm/nr_hugepages",
                            free.unwrap_or(0)
                        ),
                        will_fail: true,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(thp: &str, shmem: &str, free: Option<u64>) -> HostPolicy {
        HostPolicy {
            thp_enabled: Some(thp.into()),
            shmem_enabled: Some(shmem.into()),
            hugetlb_free: free,
            ..HostPolicy::default()
        }
    }

    const DEBIAN_THP: &str = "[always] madvise never";
    const DEBIAN_SHMEM: &str = "always within_size advise [never] deny force";

    #[test]
    fn the_selected_word_is_the_bracketed_one() {
        assert_eq!(selected(DEBIAN_THP), Some("always"));
        assert_eq!(selected(DEBIAN_SHMEM), Some("never"));
        assert_eq!(selected("always madvise never"), None);
        assert_eq!(selected("[never"), None);
    }

    #[test]
    fn a_stock_debian_host_gives_huge_anonymous_pages_and_small_shmem_pages() {
        let h = host(DEBIAN_THP, DEBIAN_SHMEM, Some(0));
        let anon = h.plan(RegionBacking::Anonymous, 512 << 20);
        assert_eq!(anon.page_size, 2 << 20);
        assert!(anon.reason.contains("enabled is always"), "{anon}");
        let memfd = h.plan(RegionBacking::Memfd, 512 << 20);
        assert_eq!(memfd.page_size, 4096);
        assert!(memfd.reason.contains("shmem_enabled is never"), "{memfd}");
        assert!(memfd.reason.contains("advise or always"), "{memfd}");
        let huge = h.plan(RegionBacking::HugetlbMemfd, 512 << 20);
        assert!(huge.will_fail);
        assert!(huge.reason.contains("0 free") && huge.reason.contains("256 needed"));
        assert!(huge.reason.contains("nr_hugepages"), "{huge}");
    }

    #[test]
    fn each_shmem_setting_that_allows_huge_pages_gives_them() {
        for s in ["always", "within_size", "advise", "force"] {
            let h = host(DEBIAN_THP, &format!("[{s}]"), None);
            assert_eq!(
                h.plan(RegionBacking::Memfd, 4 << 20).page_size,
                2 << 20,
                "{s}"
            );
        }
        for s in ["never", "deny"] {
            let h = host(DEBIAN_THP, &format!("[{s}]"), None);
            assert_eq!(h.plan(RegionBacking::Memfd, 4 << 20).page_size, 4096, "{s}");
        }
    }

    #[test]
    fn thp_disabled_or_missing_gives_base_pages_to_anonymous_memory() {
        let h = host("always madvise [never]", DEBIAN_SHMEM, None);
        assert_eq!(h.plan(RegionBacking::Anonymous, 4 << 20).page_size, 4096);
        assert!(host("always [madvise] never", DEBIAN_SHMEM, None).anonymous_huge());
        let none = HostPolicy::default();
        let p = none.plan(RegionBacking::Anonymous, 4 << 20);
        assert_eq!(p.page_size, 4096);
        assert!(p.reason.contains("no transparent_hugepage/enabled"), "{p}");
    }

    #[test]
    fn a_big_enough_hugetlb_pool_is_used() {
        let p =
            host(DEBIAN_THP, DEBIAN_SHMEM, Some(300)).plan(RegionBacking::HugetlbMemfd, 512 << 20);
        assert!(!p.will_fail);
        assert_eq!(p.page_size, 2 << 20);
        assert_eq!(
            p.to_string(),
            "2 MiB pages (300 free in the 2 MiB hugetlb pool, 256 needed)"
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(2 << 20), "2 MiB");
        assert_eq!(human(64 << 10), "64 KiB");
        assert_eq!(human(1000), "1000 B");
    }

    #[test]
    fn reading_the_host_never_fails() {
        let h = HostPolicy::read();
        assert!(h.base_page >= 4096 && h.base_page.is_power_of_two());
        assert!(h.thp_size > h.base_page);
    }
}
