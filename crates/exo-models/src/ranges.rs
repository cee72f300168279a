//! `RangeSet`: which bytes of a file are held, as sorted, disjoint, non-adjacent half-open ranges.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut set = Self::new();
        for (a, b) in ranges {
            set.insert(a, b);
        }
        set
    }

    /// Adds `start..end`, merging with what it touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b < start || a > end {
                kept.push((a, b));
            } else {
                start = start.min(a);
                end = end.max(b);
            }
        }
        let at = kept.partition_point(|&(a, _)| a < start);
        kept.insert(at, (start, end));
        self.ranges = kept;
    }

    /// The parts of `start..end` not held.
    pub fn missing(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        for &(a, b) in &self.ranges {
            if b <= at {
                continue;
            }
            if a >= end {
                break;
            }
            if a > at {
                out.push((at, a.min(end)));
            }
            at = at.max(b);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// The held parts of `start..end`.
    pub fn within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.ranges.iter().filter(|&&(a, b)| b > start && a < end).map(|&(a, b)| (a.max(start), b.min(end))).collect()
    }

    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.missing(start, end).is_empty()
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_merge_and_missing_is_the_complement() {
        let mut s = RangeSet::new();
        s.insert(10, 20);
        s.insert(30, 40);
        s.insert(20, 25); // adjacent: merges
        assert_eq!(s.iter().collect::<Vec<_>>(), [(10, 25), (30, 40)]);
        assert_eq!(s.missing(0, 50), [(0, 10), (25, 30), (40, 50)]);
        assert_eq!(s.missing(12, 35), [(25, 30)]);
        assert!(s.contains(30, 40) && !s.contains(24, 31));
        assert_eq!(s.within(12, 35), [(12, 25), (30, 35)]);
        assert_eq!(s.within(25, 30), []);
        s.insert(5, 45);
        assert_eq!(s.iter().collect::<Vec<_>>(), [(5, 45)]);
        assert_eq!(s.len(), 40);
        s.insert(50, 50);
        assert_eq!(s.len(), 40);
        assert_eq!(RangeSet::from_ranges([(3, 4), (0, 1), (1, 3)]).iter().collect::<Vec<_>>(), [(0, 4)]);
        assert_eq!(RangeSet::new().missing(0, 7), [(0, 7)]);
    }
}
