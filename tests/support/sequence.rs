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

/// `nums` is 1..=`n` in order except that, once, a run of at most `max` consecutive
/// lines arrives a second time right after itself: what a crash between a send and the
/// store of its checkpoint repeats (README, "Delivery guarantees": one send of at most
/// 64 records). Returns the repeated run.
pub fn one_send_repeated(nums: &[usize], n: usize, max: usize) -> Option<(usize, usize)> {
    if nums.len() <= n || nums.len() > n + max {
        return None;
    }
    let extra = nums.len() - n;
    // The first place the sequence steps back is where the repeat starts.
    let back = nums.windows(2).position(|w| w[1] <= w[0])? + 1;
    let run = (nums[back], nums[back] + extra - 1);
    let mut without = nums[..back].to_vec();
    without.extend_from_slice(&nums[back + extra..]);
    let repeated = &nums[back..back + extra];
    let ok = without == (1..=n).collect::<Vec<_>>()
        && repeated == (run.0..=run.1).collect::<Vec<_>>()
        && nums[back - 1] == run.1;
    ok.then_some(run)
}
