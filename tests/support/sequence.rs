//! Checking received line numbers against the sequence a container printed.

/// How often each of the numbers 1..=`n` occurs in `nums` (index 0 and numbers past `n`
/// are not counted).
pub fn counts(nums: &[usize], n: usize) -> Vec<usize> {
    let mut seen = vec![0usize; n + 1];
    for &i in nums.iter().filter(|&&i| i > 0 && i <= n) {
        seen[i] += 1;
    }
    seen
}

/// The numbers of 1..=`n` that `seen` (from [`counts`]) never saw, as ranges `a..=b`.
pub fn missing_ranges(seen: &[usize], n: usize) -> Vec<String> {
    let mut missing = Vec::new();
    let mut i = 1;
    while i <= n {
        if seen[i] == 0 {
            let start = i;
            while i <= n && seen[i] == 0 {
                i += 1;
            }
            missing.push(format!("{start}..={}", i - 1));
        } else {
            i += 1;
        }
    }
    missing
}
