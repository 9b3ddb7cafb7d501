//! [`PageBitmap`]: one bit per page, in the word layout of KVM's dirty log.

/// A set of pages of one region: bit `n % 64` of word `n / 64` is page `n`.
///
/// The layout matches `KVM_GET_DIRTY_LOG` and [`kvm_ioctls::VmFd::get_dirty_log`] output on a
/// 4 KiB-page host, so a dirty log can be passed to [`TagSnapshot::capture_dirty`] as is.
///
/// [`kvm_ioctls::VmFd::get_dirty_log`]: https://docs.rs/kvm-ioctls
/// [`TagSnapshot::capture_dirty`]: super::TagSnapshot::capture_dirty
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl PageBitmap {
    /// An empty set over `pages` pages.
    pub fn new(pages: u64) -> Self {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(usize::MAX);
        Self {
            words: vec![0; words],
            pages,
        }
    }

    /// A set over `pages` pages from dirty-log words; bits past `pages` are ignored and
    /// missing words count as clear.
    pub fn from_words(mut words: Vec<u64>, pages: u64) -> Self {
        let needed = usize::try_from(pages.div_ceil(64)).unwrap_or(usize::MAX);
        words.resize(needed, 0);
        let mut out = Self { words, pages };
        out.clear_tail();
        out
    }

    pub(crate) fn from_words_exact(words: Vec<u64>, pages: u64) -> Option<Self> {
        let out = Self { words, pages };
        let mut canonical = out.clone();
        canonical.clear_tail();
        (canonical == out).then_some(out)
    }

    fn clear_tail(&mut self) {
        let rem = self.pages % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// Number of pages the set ranges over.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The words of the bitmap.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Adds `page`; pages outside the set's range are ignored.
    pub fn insert(&mut self, page: u64) {
        if page < self.pages {
            if let Some(w) = usize::try_from(page / 64)
                .ok()
                .and_then(|i| self.words.get_mut(i))
            {
                *w |= 1 << (page % 64);
            }
        }
    }

    /// Whether `page` is in the set.
    pub fn contains(&self, page: u64) -> bool {
        usize::try_from(page / 64)
            .ok()
            .and_then(|i| self.words.get(i))
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Number of pages in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether every page in `self` is also in `other`.
    pub fn is_subset_of(&self, other: &PageBitmap) -> bool {
        self.pages == other.pages
            && self
                .words
                .iter()
                .zip(&other.words)
                .all(|(a, b)| a & !b == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_pages_are_contained_and_counted() {
        let mut set = PageBitmap::new(130);

        set.insert(0);
        set.insert(64);
        set.insert(129);
        set.insert(130);

        assert!(set.contains(0) && set.contains(64) && set.contains(129));
        assert!(!set.contains(1) && !set.contains(130));
        assert_eq!(set.count(), 3);
    }

    #[test]
    fn from_words_drops_bits_past_the_end() {
        let set = PageBitmap::from_words(vec![u64::MAX, u64::MAX], 70);

        assert_eq!(set.count(), 70);
        assert_eq!(set.words().len(), 2);
    }

    #[test]
    fn from_words_exact_refuses_stray_tail_bits() {
        assert!(PageBitmap::from_words_exact(vec![1 << 10], 10).is_none());
        assert!(PageBitmap::from_words_exact(vec![1 << 9], 10).is_some());
    }

    #[test]
    fn subset_check_compares_bits() {
        let mut small = PageBitmap::new(8);
        let mut big = PageBitmap::new(8);
        small.insert(3);
        big.insert(3);
        big.insert(4);

        assert!(small.is_subset_of(&big));
        assert!(!big.is_subset_of(&small));
    }
}
