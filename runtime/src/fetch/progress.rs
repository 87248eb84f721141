//! progress: a download's progress, in the log and (on a terminal) as a bar.

use super::*;

/// A download's progress, in the log every few seconds and on a bar at a terminal.
pub(super) struct Progress<'a> {
    pub(super) model: &'a str,
    pub(super) url: &'a str,
    pub(super) counter: crate::observe::telemetry::Progress,
}

impl<'a> Progress<'a> {
    pub(super) fn new(model: &'a str, url: &'a str, total: u64, bars: Option<&MultiProgress>) -> Self {
        tracing::info!(model, url, mib = format!("{:.1}", mib(total)), "fetching");
        let bar = bars.map(|bars| {
            let style = ProgressStyle::with_template(
                "{msg} {bar:30} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template");
            let bar = bars.add(ProgressBar::new(total).with_style(style));
            bar.set_message(format!("{model}: {}", url.rsplit('/').next().unwrap_or(url)));
            bar
        });
        Self { model, url, counter: crate::observe::telemetry::Progress::new(total, 0, bar) }
    }

    pub(super) fn add(&mut self, n: u64) {
        if self.counter.add(n) {
            tracing::info!(
                model = self.model,
                url = self.url,
                "fetching: {:.0}% ({:.1} of {:.1} MiB, {:.1} MiB/s)",
                100.0 * self.counter.done as f64 / self.counter.total.max(1) as f64,
                mib(self.counter.done),
                mib(self.counter.total),
                mib(self.counter.rate(0) as u64)
            );
        }
    }

    pub(super) fn finish(&self) {
        let elapsed = self.counter.finish();
        tracing::info!(
            model = self.model,
            url = self.url,
            mib = format!("{:.1}", mib(self.counter.total)),
            elapsed_ms = elapsed.as_millis() as u64,
            "downloaded ({:.1} MiB/s)",
            mib(self.counter.rate(0) as u64)
        );
    }
}

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
