//! LIST and LSUB mailbox patterns (RFC 3501, 6.3.8).

/// IMAP LIST wildcards: `*` matches anything, `%` anything but the delimiter.
///
/// Matched in O(pattern × name) time and O(name) space (one row of the
/// classic table), never by backtracking: `"****…Z"` costs what `"*Z"` does.
pub fn matches(pattern: &[u8], name: &[u8]) -> bool {
    // row[j]: the pattern so far matches name[..j].
    let mut row = vec![false; name.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        match p {
            b'*' => {
                next[0] = row[0];
                for j in 1..=name.len() {
                    next[j] = row[j] || next[j - 1];
                }
            }
            b'%' => {
                next[0] = row[0];
                for j in 1..=name.len() {
                    next[j] = row[j] || (next[j - 1] && name[j - 1] != b'/');
                }
            }
            c => {
                for j in 1..=name.len() {
                    next[j] = row[j - 1] && name[j - 1].eq_ignore_ascii_case(&c);
                }
            }
        }
        row = next;
        if !row.iter().any(|&m| m) {
            return false;
        }
    }
    row[name.len()]
}
