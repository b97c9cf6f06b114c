//! Sequence sets (RFC 3501, 9: `1:4,7,9:*`) as ranges, never as numbers.

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use std::num::NonZeroU32;

/// The set's ranges with `*` as `largest`, never expanded: `1:4294967295`
/// is one pair, not four billion numbers.
pub fn set_ranges(set: &SequenceSet, largest: NonZeroU32) -> Vec<(u32, u32)> {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest.get(),
    };
    set.0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(v) => (value(v), value(v)),
            Sequence::Range(a, b) => {
                let (a, b) = (value(a), value(b));
                (a.min(b), a.max(b))
            }
        })
        .collect()
}

/// Whether `n` falls in one of the ranges.
pub fn in_ranges(ranges: &[(u32, u32)], n: u32) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= n && n <= hi)
}
