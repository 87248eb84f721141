//! resident: what loaded models cost, and which idle ones to evict so that a load fits the
//! model memory budget (`--model-memory-mib`): least recently used first, never a model
//! loaded eagerly, one in use (requests in flight or queued, a load running) or one whose
//! graph a loaded model's plugin calls through `wasi:nn`.
//!
//! A model's cost is what its `[load] memory_mib` declares, or else what its load added to
//! malloc's heaps (graph, backend session, plugin bookkeeping: glibc's `mallinfo2`, across
//! its first five loads, each run alone so that the growth is its own; later loads of the
//! same files and config are charged their median and run beside others) plus what its plugin holds
//! outside them: its share of its compiled code and the linear memory of each idle instance
//! in its pool, counted as the pool grows.

use std::fmt;

/// A loaded model (or one loading) as eviction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// What it is charged, in bytes.
    pub cost: u64,
    /// When it last served a request (any monotonic unit; lower is longer ago).
    pub last_used: u64,
    /// Loaded eagerly: never evicted.
    pub pinned: bool,
    /// In use now (requests in flight, a load running, a plugin of a loaded model calls its
    /// graph): not evicted now.
    pub busy: bool,
}

/// Why a load does not fit the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// It would not fit even with every evictable model gone: the budget less what eager
    /// models hold is smaller than it.
    Never {
        /// What the load needs.
        need: u64,
        /// The budget.
        budget: u64,
        /// What eager models hold.
        pinned: u64,
    },
    /// It fits once models in use now go idle.
    Busy {
        /// What the load needs.
        need: u64,
        /// What would still be held after evicting every idle model.
        held: u64,
        /// The budget.
        budget: u64,
    },
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Shortfall::Never { need, budget, pinned } => write!(
                f,
                "it needs {} and can never fit the model memory budget of {} ({} of it held by eager models): \
                 raise --model-memory-mib or lower its [load] memory_mib",
                mib(need),
                mib(budget),
                mib(pinned)
            ),
            Shortfall::Busy { need, held, budget } => write!(
                f,
                "it needs {} and models in use hold {} of the model memory budget of {}",
                mib(need),
                mib(held),
                mib(budget)
            ),
        }
    }
}

/// Bytes as MiB, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Which of `resident` to evict, least recently used first, so that `need` more bytes fit
/// `budget`; none when they fit already. `observed`: what the process holds beyond its own
/// base now, measured. Where that is more than the models' costs add up to (what the account
/// misses: the allocator's overhead, memory their runs grew), the difference is spread over
/// the models in proportion to their costs: evicting one frees its share of it too.
pub fn plan(resident: &[Resident], budget: u64, need: u64, observed: u64) -> Result<Vec<usize>, Shortfall> {
    let accounted: u64 = resident.iter().map(|r| r.cost).sum();
    let scale = match accounted {
        0 => 1.0,
        _ => (observed as f64 / accounted as f64).max(1.0),
    };
    let held_by = |r: &Resident| (r.cost as f64 * scale) as u64;
    let mut held: u64 = resident.iter().map(held_by).sum();
    if held.saturating_add(need) <= budget {
        return Ok(Vec::new());
    }
    let pinned: u64 = resident.iter().filter(|r| r.pinned).map(held_by).sum();
    if pinned.saturating_add(need) > budget {
        return Err(Shortfall::Never { need, budget, pinned });
    }
    let mut idle: Vec<usize> =
        (0..resident.len()).filter(|&i| !resident[i].pinned && !resident[i].busy).collect();
    idle.sort_by_key(|&i| resident[i].last_used);
    let mut victims = Vec::new();
    for i in idle {
        if held.saturating_add(need) <= budget {
            break;
        }
        held = held.saturating_sub(held_by(&resident[i]));
        victims.push(i);
    }
    if held.saturating_add(need) > budget {
        return Err(Shortfall::Busy { need, held, budget });
    }
    Ok(victims)
}

/// What the process's memory grew by across a piece of work.
#[derive(Debug, Clone, Copy, Default)]
pub struct Growth {
    /// In malloc's heaps.
    pub heap: u64,
    /// In resident pages.
    pub rss: u64,
}

impl std::ops::Add for Growth {
    type Output = Growth;
    fn add(self, other: Growth) -> Growth {
        Growth { heap: self.heap + other.heap, rss: self.rss + other.rss }
    }
}

/// Both measures at the start of a piece of work.
pub struct Meter(Growth);

impl Meter {
    /// Read both now.
    pub fn start() -> Self {
        Self(Growth { heap: heap(), rss: rss() })
    }

    /// What each grew by since (none where it shrank).
    pub fn grown(&self) -> Growth {
        Growth { heap: heap().saturating_sub(self.0.heap), rss: rss().saturating_sub(self.0.rss) }
    }
}

/// What malloc's heaps hold now (see `allocator::heap_bytes`), or where that cannot be
/// read, the resident memory.
pub fn heap() -> u64 {
    crate::allocator::heap_bytes().unwrap_or_else(rss)
}

/// The process's resident memory now, in bytes (`VmRSS`); 0 where it cannot be read.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn model(cost_mib: u64, last_used: u64) -> Resident {
        Resident { cost: cost_mib * MIB, last_used, pinned: false, busy: false }
    }

    #[test]
    fn nothing_is_evicted_while_the_load_fits() {
        assert_eq!(plan(&[model(30, 1), model(30, 2)], 100 * MIB, 40 * MIB, 0), Ok(vec![]));
        assert_eq!(plan(&[], 100 * MIB, 100 * MIB, 0), Ok(vec![]));
    }

    #[test]
    fn the_least_recently_used_go_first_and_only_as_many_as_needed() {
        let resident = [model(30, 5), model(30, 1), model(30, 9), model(10, 3)];
        // 100 held; 40 more need 40 freed: the one used at 1 (30), then at 3 (10).
        assert_eq!(plan(&resident, 100 * MIB, 40 * MIB, 0), Ok(vec![1, 3]));
        assert_eq!(plan(&resident, 100 * MIB, 1, 0), Ok(vec![1]));
    }

    #[test]
    fn eager_and_busy_models_are_never_chosen() {
        let mut resident = [model(40, 1), model(40, 2), model(20, 3)];
        resident[0].pinned = true;
        resident[1].busy = true;
        // Only the one used last is idle and evictable: 20 freed is enough for 20.
        assert_eq!(plan(&resident, 100 * MIB, 20 * MIB, 0), Ok(vec![2]));
        // 40 more cannot be had now, but can once the busy one goes idle.
        assert_eq!(
            plan(&resident, 100 * MIB, 40 * MIB, 0),
            Err(Shortfall::Busy { need: 40 * MIB, held: 80 * MIB, budget: 100 * MIB })
        );
        resident[1].busy = false;
        assert_eq!(plan(&resident, 100 * MIB, 40 * MIB, 0), Ok(vec![1]));
        assert_eq!(plan(&resident, 100 * MIB, 60 * MIB, 0), Ok(vec![1, 2]));
    }

    #[test]
    fn a_model_larger_than_the_budget_less_the_eager_ones_never_fits_and_evicts_nothing() {
        let mut resident = [model(60, 1), model(20, 2)];
        resident[0].pinned = true;
        let never = plan(&resident, 100 * MIB, 50 * MIB, 0);
        assert_eq!(never, Err(Shortfall::Never { need: 50 * MIB, budget: 100 * MIB, pinned: 60 * MIB }));
        let message = never.unwrap_err().to_string();
        assert!(
            message.contains("needs 50.0 MiB and can never fit the model memory budget of 100.0 MiB"),
            "{message}"
        );
        assert_eq!(
            plan(&[], 100 * MIB, 101 * MIB, 0),
            Err(Shortfall::Never { need: 101 * MIB, budget: 100 * MIB, pinned: 0 })
        );
    }

    #[test]
    fn measured_memory_above_the_account_evicts_more() {
        let resident = [model(20, 1), model(20, 2), model(20, 3)];
        // 60 accounted, 40 more fit 100; measured 60 or less changes nothing.
        assert_eq!(plan(&resident, 100 * MIB, 40 * MIB, 60 * MIB), Ok(vec![]));
        assert_eq!(plan(&resident, 100 * MIB, 40 * MIB, 30 * MIB), Ok(vec![]));
        // 90 measured: each holds 30 of it; one goes (90 - 30 + 40 = 100).
        assert_eq!(plan(&resident, 100 * MIB, 40 * MIB, 90 * MIB), Ok(vec![0]));
        // 120 measured: each holds 40; two go (120 - 80 + 40 = 80).
        assert_eq!(plan(&resident, 100 * MIB, 40 * MIB, 120 * MIB), Ok(vec![0, 1]));
    }

    #[test]
    fn memory_the_account_misses_goes_with_the_models_evicted() {
        // Seen with a budget of 16 MiB: one idle model charged 14, the process 18 above its
        // base. Evicting it frees all 18, and a model of 12.4 fits; before, the 4 the account
        // missed stayed "held" with nothing left to evict, and every load waited in vain.
        let need = 124 * MIB / 10;
        assert_eq!(plan(&[model(14, 1)], 16 * MIB, need, 18 * MIB), Ok(vec![0]));
        // What an eager model's share of it is stays, and can make a load never fit.
        let mut eager = model(14, 1);
        eager.pinned = true;
        assert_eq!(
            plan(&[eager, model(2, 2)], 24 * MIB, 8 * MIB, 24 * MIB),
            Err(Shortfall::Never { need: 8 * MIB, budget: 24 * MIB, pinned: 21 * MIB })
        );
    }

    #[test]
    fn alternating_loads_under_a_budget_of_two_evict_one_model_each_time_never_more() {
        // Three models of 40 under a budget of 100: each load evicts exactly the LRU one.
        let mut resident: Vec<(char, Resident)> = Vec::new();
        let mut clock = 0;
        let mut evictions = 0;
        for name in "abcabcabca".chars() {
            clock += 1;
            if let Some((_, r)) = resident.iter_mut().find(|(n, _)| *n == name) {
                r.last_used = clock;
                continue;
            }
            let view: Vec<Resident> = resident.iter().map(|(_, r)| *r).collect();
            let victims = plan(&view, 100 * MIB, 40 * MIB, 0).unwrap();
            assert!(victims.len() <= 1, "{victims:?}");
            evictions += victims.len();
            for i in victims.into_iter().rev() {
                resident.remove(i);
            }
            resident.push((name, model(40, clock)));
            assert!(resident.iter().map(|(_, r)| r.cost).sum::<u64>() <= 100 * MIB);
        }
        // a, b load; every later one evicts the oldest (c: a, a: b, ...): 8 evictions.
        assert_eq!(evictions, 8);
    }

    /// Whether allocating (and touching) 64 MiB raises `read` by at least `at_least`. The
    /// other unit tests run on threads of this process and free memory of their own: one of
    /// a few tries must see the block, so a free elsewhere in the same instant cannot fail it.
    fn sees_a_64_mib_block(read: fn() -> u64, at_least: u64) -> bool {
        (0..5).any(|_| {
            let before = read();
            let block = std::hint::black_box(vec![1u8; 64 << 20]);
            let after = read();
            drop(std::hint::black_box(block));
            after >= before + at_least
        })
    }

    #[test]
    fn heap_growth_is_seen() {
        assert!(sees_a_64_mib_block(heap, 64 << 20));
    }

    #[test]
    fn rss_is_read_from_proc() {
        assert!(rss() > 1 << 20, "{}", rss());
        assert!(sees_a_64_mib_block(rss, 60 << 20));
    }
}
