//! statistics: Triton's statistics extension's counts (what `perf_analyzer` reads back as
//! the server's side of each request), per model version, kept as the protocol's own
//! messages so that both front ends send them as they are. Fed by
//! [`super::metrics::RequestTimer::finish`] with labels and numbers; `front::triton` says
//! what each field counts.

use super::Timings;
use crate::proto::{InferBatchStatistics, InferStatistics, ModelStatistics, StatisticDuration};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Every model version's statistics since the server started.
#[derive(Default)]
pub struct Statistics(Mutex<BTreeMap<(String, String), ModelStatistics>>);

/// `duration` added to a cumulative count and time.
fn add(tally: &mut Option<StatisticDuration>, duration: Duration) {
    let tally = tally.get_or_insert_default();
    tally.count += 1;
    tally.ns += duration.as_nanos() as u64;
}

impl Statistics {
    /// A request to `model` at `version` ended after `elapsed`: answered, with its stage
    /// timings and rows, or failed.
    pub fn record(&self, model: &str, version: &str, elapsed: Duration, done: Option<(&Timings, u64)>) {
        let mut all = self.0.lock().expect("statistics lock");
        let key = (model.to_string(), version.to_string());
        let s = all.entry(key).or_insert_with(|| empty(model, version));
        s.last_inference =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let stats = s.inference_stats.get_or_insert_default();
        let Some((t, rows)) = done else {
            add(&mut stats.fail, elapsed);
            return;
        };
        add(&mut stats.success, elapsed);
        add(&mut stats.queue, t.queue);
        add(&mut stats.compute_input, t.preprocess);
        add(&mut stats.compute_infer, t.compute);
        add(&mut stats.compute_output, t.postprocess);
        s.inference_count += rows;
        if t.graph_runs == 0 {
            return;
        }
        s.execution_count += t.graph_runs;
        let batch_size = t.batch_rows as u64;
        let at = match s.batch_stats.binary_search_by_key(&batch_size, |b| b.batch_size) {
            Ok(at) => at,
            Err(at) => {
                s.batch_stats.insert(at, InferBatchStatistics { batch_size, ..Default::default() });
                at
            }
        };
        let batch = &mut s.batch_stats[at];
        add(&mut batch.compute_input, t.preprocess);
        add(&mut batch.compute_infer, t.compute);
        add(&mut batch.compute_output, t.postprocess);
    }

    /// The statistics of these model versions (zero for those with no request yet), in order.
    pub fn of(&self, versions: impl IntoIterator<Item = (String, String)>) -> Vec<ModelStatistics> {
        let all = self.0.lock().expect("statistics lock");
        versions
            .into_iter()
            .map(|(model, version)| {
                let mut s = all
                    .get(&(model.clone(), version.clone()))
                    .cloned()
                    .unwrap_or_else(|| empty(&model, &version));
                // Every duration present, zero or not, as Triton sends them.
                let stats = s.inference_stats.get_or_insert_default();
                for tally in [
                    &mut stats.success,
                    &mut stats.fail,
                    &mut stats.queue,
                    &mut stats.compute_input,
                    &mut stats.compute_infer,
                    &mut stats.compute_output,
                    &mut stats.cache_hit,
                    &mut stats.cache_miss,
                ] {
                    tally.get_or_insert_default();
                }
                for batch in &mut s.batch_stats {
                    for tally in
                        [&mut batch.compute_input, &mut batch.compute_infer, &mut batch.compute_output]
                    {
                        tally.get_or_insert_default();
                    }
                }
                s
            })
            .collect()
    }
}

fn empty(model: &str, version: &str) -> ModelStatistics {
    ModelStatistics {
        name: model.to_string(),
        version: version.to_string(),
        inference_stats: Some(InferStatistics::default()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(rows: usize, graph_runs: u64) -> Timings {
        Timings {
            queue: Duration::from_micros(10),
            preprocess: Duration::from_micros(20),
            compute: Duration::from_micros(30),
            postprocess: Duration::from_micros(40),
            batch_rows: rows,
            batch_tokens: 0,
            graph_runs,
        }
    }

    #[test]
    fn requests_add_up_by_stage_and_batch_size() {
        let stats = Statistics::default();
        stats.record("m", "1", Duration::from_micros(100), Some((&timings(1, 1), 1)));
        stats.record("m", "1", Duration::from_micros(100), Some((&timings(4, 1), 2)));
        // A request that a batch served without running it: no execution of its own.
        stats.record("m", "1", Duration::from_micros(100), Some((&timings(4, 0), 2)));
        stats.record("m", "1", Duration::from_micros(7), None);
        let [s] = stats.of([("m".into(), "1".into())]).try_into().expect("one");
        let i = s.inference_stats.expect("inference stats");
        assert_eq!(i.success, Some(StatisticDuration { count: 3, ns: 300_000 }));
        assert_eq!(i.fail, Some(StatisticDuration { count: 1, ns: 7_000 }));
        assert_eq!(i.compute_infer, Some(StatisticDuration { count: 3, ns: 90_000 }));
        assert_eq!(i.cache_hit, Some(StatisticDuration::default()));
        assert_eq!((s.inference_count, s.execution_count), (5, 2));
        let sizes: Vec<_> =
            s.batch_stats.iter().map(|b| (b.batch_size, b.compute_infer.unwrap().count)).collect();
        assert_eq!(sizes, [(1, 1), (4, 1)]);
        assert!(s.last_inference > 0);
    }

    #[test]
    fn a_version_never_asked_has_zeros() {
        let [s] = Statistics::default().of([("m".into(), "2".into())]).try_into().expect("one");
        assert_eq!((s.name.as_str(), s.version.as_str(), s.inference_count), ("m", "2", 0));
        assert_eq!(s.inference_stats.unwrap().success, Some(StatisticDuration::default()));
    }
}
