//! `RangeSet`: which bytes of a file are held, as sorted, disjoint, non-adjacent half-open ranges.
//!
//! Range lists come from peers (`FileHeld`) and from records on disk, so building a set is O(n log n) whatever the
//! order or overlap of the list, and empty or reversed ranges (start ≥ end) are dropped.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawRanges")]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

/// The serialized form, normalized when read back (a record may have been edited or cut short).
#[derive(Deserialize)]
struct RawRanges {
    ranges: Vec<(u64, u64)>,
}

impl From<RawRanges> for RangeSet {
    fn from(raw: RawRanges) -> Self {
        Self::from_ranges(raw.ranges)
    }
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The union of `ranges`: sorted, then merged in one pass.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut sorted: Vec<(u64, u64)> = ranges.into_iter().filter(|&(a, b)| a < b).collect();
        sorted.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (a, b) in sorted {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged.shrink_to_fit();
        Self { ranges: merged }
    }

    /// Adds `start..end`, merging with what it touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // The ranges that touch `start..end` are consecutive: from the first that ends at or after `start` to the
        // last that begins at or before `end`.
        let first = self.ranges.partition_point(|&(_, b)| b < start);
        let last = self.ranges.partition_point(|&(a, _)| a <= end);
        let (mut start, mut end) = (start, end);
        if first < last {
            start = start.min(self.ranges[first].0);
            end = end.max(self.ranges[last - 1].1);
        }
        self.ranges.splice(first..last, [(start, end)]);
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
        // Reversed and empty ranges are dropped.
        assert_eq!(RangeSet::from_ranges([(9, 3), (5, 5), (1, 2)]).iter().collect::<Vec<_>>(), [(1, 2)]);
        s.insert(60, 50);
        assert_eq!(s.len(), 40);
    }

    #[test]
    fn inserts_agree_with_a_byte_map() {
        // Every insert checked against the set of bytes it should hold, over a small universe.
        let mut state = 12345u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut s = RangeSet::new();
        let mut bytes = [false; 200];
        let mut list = Vec::new();
        for _ in 0..500 {
            let (a, b) = (next(200), next(200));
            list.push((a, b));
            s.insert(a, b);
            for held in bytes.iter_mut().take(b as usize).skip(a as usize) {
                *held = true;
            }
            let expected: u64 = bytes.iter().filter(|&&h| h).count() as u64;
            assert_eq!(s.len(), expected);
            for w in s.ranges.windows(2) {
                assert!(w[0].1 < w[1].0, "{:?} not disjoint and apart", s.ranges);
            }
        }
        assert_eq!(RangeSet::from_ranges(list), s);
    }

    #[test]
    fn a_peers_list_of_many_ranges_merges_in_one_pass() {
        // 200,000 ranges, in reverse order, each touching the next, plus as many disjoint ones far away: one pass
        // of sorting and merging (a merge per insert would be 10^10 steps).
        let n = 200_000u64;
        let touching = (0..n).rev().map(|i| (i * 10, i * 10 + 10));
        let apart = (0..n).map(|i| ((1 << 40) | (i * 10), ((1 << 40) | (i * 10)) + 5));
        let s = RangeSet::from_ranges(touching.chain(apart));
        assert_eq!(s.iter().next(), Some((0, n * 10)));
        assert_eq!(s.iter().count() as u64, 1 + n);
        assert_eq!(s.len(), n * 10 + n * 5);
        // And inserting each of them one by one into a growing set.
        let mut one_by_one = RangeSet::new();
        for i in 0..n {
            one_by_one.insert(i * 10, i * 10 + 5);
        }
        assert_eq!(one_by_one.iter().count() as u64, n);
    }

    #[test]
    fn a_record_read_back_is_normalized() {
        let s: RangeSet = serde_json::from_str(r#"{"ranges":[[10,20],[0,5],[4,12],[30,7]]}"#).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), [(0, 20)]);
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"ranges":[[0,20]]}"#);
    }
}
