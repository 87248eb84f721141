//! sizing: how many sequences a generative model runs at once when `[generation] slots` does
//! not say, from the model's threads and the memory the server may use.

/// Slots per compute thread: a step of a few more sequences costs little more than one
/// (decoding reads every weight once per step, whatever the sequences), until the threads
/// are busy with the arithmetic.
const PER_THREAD: usize = 2;
/// The fewest and most slots a default gives.
const FEWEST: usize = 4;
const MOST: usize = 16;
/// The share of the memory the key/value cache may take by default.
const MEMORY_SHARE: u64 = 4;

/// `[generation] slots` = 0: two per thread, 4 to 16, fewer where the cache of that many
/// (`token_bytes` per token, `context` tokens each) would pass a quarter of `memory` (at
/// least one).
pub(super) fn default_slots(threads: usize, token_bytes: u64, context: u32, memory: Option<u64>) -> usize {
    let wanted = (threads * PER_THREAD).clamp(FEWEST, MOST);
    let per_slot = token_bytes.saturating_mul(u64::from(context)).max(1);
    let fit = memory.map_or(u64::MAX, |m| m / MEMORY_SHARE / per_slot);
    wanted.min(usize::try_from(fit).unwrap_or(usize::MAX)).max(1)
}

/// The memory this process may use: the machine's (`MemTotal`), or its cgroup's limit
/// (`memory.max`, a container's) where that is lower; none where neither can be read.
pub(super) fn memory() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib << 10)
    });
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_threads_within_the_memory() {
        let token = 23 << 10; // SmolLM2-135M's keys and values per token
        assert_eq!(default_slots(1, token, 2048, None), 4);
        assert_eq!(default_slots(6, token, 2048, None), 12);
        assert_eq!(default_slots(64, token, 2048, None), 16);
        // 46 MiB a slot: a quarter of 1 GiB holds five, of 100 MiB none (still one).
        assert_eq!(default_slots(8, token, 2048, Some(1 << 30)), 5);
        assert_eq!(default_slots(8, token, 2048, Some(100 << 20)), 1);
    }

    #[test]
    fn the_memory_is_read_here() {
        assert!(memory().is_some_and(|m| m > 64 << 20));
    }
}
