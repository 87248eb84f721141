//! limits: what one plugin instance may take (memory, tables, instances) and the coarse
//! clocks it reads.

use super::*;

/// Most core instances, tables and linear memories one plugin instance may create. A Rust
/// component has 3 instances, 2 tables and 1 memory; other toolchains add adapters. Memory
/// and table elements are capped in total, whatever the count.
pub(super) const MAX_INSTANCES: usize = 64;
pub(super) const MAX_TABLES: usize = 64;
pub(super) const MAX_MEMORIES: usize = 16;

/// The resolution of the clocks a plugin reads. Pre- and post-processing have no use for
/// finer time, and fine clocks are what timing side channels are measured with.
pub(super) const CLOCK_RESOLUTION: Duration = Duration::from_millis(1);

/// Wall-clock time in whole milliseconds.
pub(super) struct CoarseWallClock;

impl wasmtime_wasi::HostWallClock for CoarseWallClock {
    fn resolution(&self) -> Duration {
        CLOCK_RESOLUTION
    }

    fn now(&self) -> Duration {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Duration::from_millis(since_epoch.as_millis() as u64)
    }
}

/// Monotonic time since the instance was made, in whole milliseconds.
pub(super) struct CoarseMonotonicClock(pub(super) std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for CoarseMonotonicClock {
    fn resolution(&self) -> u64 {
        CLOCK_RESOLUTION.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        let step = CLOCK_RESOLUTION.as_nanos() as u64;
        self.0.elapsed().as_nanos() as u64 / step * step
    }
}

/// What one instance holds against its limits: linear memory and table elements, each
/// counted across all its memories or tables, so a second memory is no way around the cap.
pub(super) struct Limits {
    pub(super) memory_limit: usize,
    pub(super) table_limit: usize,
    pub(super) memory: usize,
    pub(super) table_elements: usize,
}

/// A limit a plugin ran into, in the words of its config; growing past one traps.
#[derive(Debug, thiserror::Error)]
#[error("exceeded its {limit}")]
pub(super) struct LimitExceeded {
    pub(super) limit: String,
    /// The limit was the memory limit.
    pub(super) memory: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory - current + desired;
        if total > self.memory_limit {
            let limit = format!("memory limit of {} MiB (plugin.memory_limit_mib)", self.memory_limit >> 20);
            return Err(LimitExceeded { limit, memory: true }.into());
        }
        self.memory = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements - current + desired;
        if total > self.table_limit {
            let limit = format!("table limit of {} elements (plugin.max_table_elements)", self.table_limit);
            return Err(LimitExceeded { limit, memory: false }.into());
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_every_memory_and_every_table_together() {
        let mut limits = Limits { memory_limit: 100 << 20, table_limit: 10, memory: 0, table_elements: 0 };
        assert!(limits.memory_growing(0, 60 << 20, None).unwrap());
        // A second memory is no way around the cap, nor is growing the first past it.
        let second = limits.memory_growing(0, 60 << 20, None).unwrap_err();
        assert_eq!(second.to_string(), "exceeded its memory limit of 100 MiB (plugin.memory_limit_mib)");
        assert!(limits.memory_growing(60 << 20, 100 << 20, None).unwrap());
        assert!(limits.memory_growing(100 << 20, (100 << 20) + 1, None).is_err());
        assert!(limits.table_growing(0, 6, None).unwrap());
        assert!(limits.table_growing(0, 4, None).unwrap());
        let table = limits.table_growing(4, 5, None).unwrap_err();
        assert_eq!(table.to_string(), "exceeded its table limit of 10 elements (plugin.max_table_elements)");
    }
}
