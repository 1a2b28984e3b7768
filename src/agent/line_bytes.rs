//! Byte handling shared by the log sources when they assemble a line from pieces (Docker's
//! 16 KiB partial frames, CRI `P` entries) under `--max-line-bytes`.

/// Drops an incomplete UTF-8 sequence that a cut left at the end.
pub(crate) fn cut_to_char_boundary(bytes: &mut Vec<u8>) {
    let len = bytes.len();
    let mut start = len;
    while start > 0 && len - start < 3 && bytes[start - 1] & 0xC0 == 0x80 {
        start -= 1;
    }
    if start == 0 {
        return;
    }
    let width = match bytes[start - 1] {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    };
    if width > len - (start - 1) {
        bytes.truncate(start - 1);
    }
}

/// Appends `more` to `bytes`, which is never to hold more than `max`: capacity grows by
/// doubling up to `max`, not past it.
pub(crate) fn extend_bounded(bytes: &mut Vec<u8>, more: &[u8], max: usize) {
    let want = bytes.len() + more.len();
    if want > bytes.capacity() {
        let target = want.max(bytes.capacity() * 2).min(max).max(want);
        bytes.reserve_exact(target - bytes.len());
    }
    bytes.extend_from_slice(more);
}
