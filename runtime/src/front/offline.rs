//! offline: batch (offline) inference, the server's request path (decode -> plugin -> schedule ->
//! infer -> encode) over a file of requests or a directory of inputs, into JSON Lines.
//!
//! Input: a file of JSON Lines, one OIP inference request per line (a REST body), or a
//! directory whose files are each the raw data of the model's one input (as
//! `curl --data-binary @file` sends it), taken in name order.
//!
//! Output: one line per input record, in input order:
//! `{"record": 0, "source": "requests.jsonl:1", "response": {...}}`, the response being
//! what `POST /v2/models/M/infer` answers (outputs in JSON), or
//! `{"record": 0, "source": "...", "status": 400, "error": "..."}`. A failed record is
//! written and counted; the run goes on.
//!
//! Resuming: lines are written in input order and flushed as they complete, so a run that
//! stopped left a prefix of the output. A new run keeps its complete lines (a torn last line
//! is cut off) and continues with the next record.
//!
//! Sharding: with a [`Shard`] `I/N`, a run takes the records whose number (their position in
//! the whole input, counted as above) is `I` modulo `N`: N runs over the same input answer
//! every record exactly once between them, each in an output of its own, and `record` in
//! each line is the number in the whole input (sort the union by it to join them).

use crate::encode;
use crate::error::Error;
use crate::repository::Model;
use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::value::RawValue;
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How many failures the summary names.
const NAMED_FAILURES: usize = 5;

/// A part of the input: the records whose number is `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This part, from 0.
    pub index: u64,
    /// How many parts the input is cut in.
    pub count: u64,
}

impl Shard {
    /// The whole input.
    pub const ALL: Self = Self { index: 0, count: 1 };

    /// Whether record number `record` is in this part.
    pub fn has(self, record: u64) -> bool {
        record % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`, or `N` with `I` from `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job's pod).
    fn from_str(spec: &str) -> Result<Self, String> {
        let (index, count) = match spec.split_once('/') {
            Some((i, n)) => (i.trim().to_string(), n),
            None => (
                std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
                    format!(
                        "--shard {spec}: give I/N, or run where JOB_COMPLETION_INDEX says I (an Indexed Job)"
                    )
                })?,
                spec,
            ),
        };
        let number = |what: &str, text: &str| {
            text.trim().parse::<u64>().map_err(|_| format!("--shard {spec}: {what} '{text}' is not a number"))
        };
        let (index, count) = (number("I", &index)?, number("N", count)?);
        if count == 0 || index >= count {
            return Err(format!("--shard {spec}: I must be below N (0 <= I < N), got {index}/{count}"));
        }
        Ok(Self { index, count })
    }
}

/// One input record: where it came from and its request body.
struct Record {
    index: u64,
    source: String,
    body: bytes::Bytes,
    /// `Inference-Header-Content-Length`: `Some("0")` for a raw file, `None` for JSON.
    header_length: Option<&'static str>,
}

/// One output line.
#[derive(Serialize)]
struct Line<'a> {
    record: u64,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Records in the input.
    pub records: u64,
    /// Records an earlier run had already written.
    pub skipped: u64,
    /// Records answered in this run.
    pub succeeded: u64,
    /// Records that failed in this run, the first few with their errors.
    pub failed: u64,
    /// `(source, error)` of the first failures.
    pub failures: Vec<(String, String)>,
}

/// Run every record of `input` in `shard` through `model` into `output`, `concurrency` at a
/// time, continuing an earlier run's output. `progress_bar`: draw a bar (a person is
/// watching).
pub async fn run(
    model: Arc<Model>,
    input: &Path,
    shard: Shard,
    output: &Path,
    concurrency: usize,
    progress_bar: bool,
) -> anyhow::Result<Summary> {
    let mut records = Records::open(input, shard)?;
    let total = records.count;
    let (done, last) = resume(output)?;
    // The lines kept must be this input's (and shard's): the last one names the same record.
    let skipped = records.skip_answered(done)?;
    anyhow::ensure!(
        done <= total && skipped == last,
        "{} does not continue this input: it holds {done} records, the last from {}, and {} has {total} records{}; \
         write to a new output, or delete it to start over",
        output.display(),
        last.as_ref().map_or("nowhere", |(_, source)| source.as_str()),
        input.display(),
        skipped.map(|(n, s)| format!(", record {n} from {s}")).unwrap_or_default()
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    if done > 0 {
        tracing::info!(output = %output.display(), done, "resuming after the records already written");
    }
    let mut summary = Summary { records: total, skipped: done, ..Summary::default() };
    let mut progress = Progress::new(&model.name, total, done, progress_bar);
    let answers = futures::stream::iter(records)
        .map(|record| {
            let model = model.clone();
            async move {
                let record = record?;
                let answer = infer(&model, &record).await;
                anyhow::Ok((record, answer))
            }
        })
        .buffered(concurrency.max(1));
    futures::pin_mut!(answers);
    while let Some(answer) = answers.next().await {
        let (record, answer) = answer?;
        let mut line =
            Line { record: record.index, source: &record.source, response: None, status: None, error: None };
        match answer {
            Ok(response) => {
                summary.succeeded += 1;
                line.response = Some(response);
            }
            Err(e) => {
                summary.failed += 1;
                if summary.failures.len() < NAMED_FAILURES {
                    summary.failures.push((record.source.clone(), e.to_string()));
                }
                line.status = Some(e.status().as_u16());
                line.error = Some(e.to_string());
            }
        }
        let mut text = serde_json::to_vec(&line).expect("a line is JSON");
        text.push(b'\n');
        file.write_all(&text).with_context(|| format!("cannot write {}", output.display()))?;
        progress.advance(summary.failed);
    }
    file.sync_all().with_context(|| format!("cannot write {}", output.display()))?;
    progress.finish(&summary);
    Ok(summary)
}

/// One record through the model, as the server would answer it, outputs in JSON.
async fn infer(model: &Arc<Model>, record: &Record) -> Result<Box<RawValue>, Error> {
    // The server's default limits: a record the server would refuse is refused here too.
    let limits = model.config.input_limits((crate::config::DEFAULT_MAX_BYTES_ELEMENT_KIB << 10) as usize);
    let (mut request, outputs) =
        crate::pipeline::run_alone(model, record.body.clone(), record.header_length, limits).await?;
    // A line of JSON holds JSON: outputs asked for in binary come as JSON here.
    request.binary_outputs = false;
    request.outputs.iter_mut().for_each(|o| o.binary = None);
    let encoded = encode::encode(&model.name, &model.config.version, None, &request, outputs)?;
    let text = String::from_utf8(encoded.body).map_err(|e| Error::Internal(e.to_string()))?;
    RawValue::from_string(text).map_err(|e| Error::Internal(e.to_string()))
}

/// How many records `output` already holds, and the number and source of the last: its
/// complete lines, after cutting off a torn last line (a run killed mid-write).
fn resume(output: &Path) -> anyhow::Result<(u64, Option<(u64, String)>)> {
    let mut file = match std::fs::OpenOptions::new().read(true).write(true).open(output) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, None)),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", output.display())),
    };
    let mut complete = 0u64;
    let mut lines = 0u64;
    let mut last = String::new();
    let mut reader = std::io::BufReader::new(&mut file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).with_context(|| format!("cannot read {}", output.display()))?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        complete += n as u64;
        lines += 1;
        std::mem::swap(&mut last, &mut line);
    }
    drop(reader);
    file.set_len(complete).with_context(|| format!("cannot truncate {}", output.display()))?;
    file.seek(std::io::SeekFrom::End(0))?;
    if lines == 0 {
        return Ok((0, None));
    }
    #[derive(serde::Deserialize)]
    struct Numbered {
        record: u64,
        source: String,
    }
    let numbered: Numbered = serde_json::from_str(&last)
        .with_context(|| format!("{} is not the output of a batch run", output.display()))?;
    Ok((lines, Some((numbered.record, numbered.source))))
}

/// The input's records (those of one shard), read one at a time.
struct Records {
    /// Records in the shard.
    count: u64,
    /// The next record's number in the whole input.
    next: u64,
    shard: Shard,
    source: Source,
}

enum Source {
    /// `number`: lines read so far.
    Lines {
        name: String,
        lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
        number: u64,
    },
    Files(std::vec::IntoIter<PathBuf>),
}

impl Records {
    fn open(input: &Path, shard: Shard) -> anyhow::Result<Self> {
        let in_shard = |all: u64| all / shard.count + u64::from(all % shard.count > shard.index);
        let cannot = || format!("cannot read {}", input.display());
        if input.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(input).with_context(cannot)? {
                let path = entry.with_context(cannot)?.path();
                if path.is_file() {
                    files.push(path);
                }
            }
            files.sort();
            let count = in_shard(files.len() as u64);
            return Ok(Self { count, next: 0, shard, source: Source::Files(files.into_iter()) });
        }
        let open = || std::fs::File::open(input).with_context(cannot);
        // Blank lines are no records; counted the same way they are read.
        let mut count = 0;
        for line in std::io::BufReader::new(open()?).lines() {
            count += u64::from(!line.with_context(cannot)?.trim().is_empty());
        }
        let name =
            input.file_name().map_or_else(|| input.display().to_string(), |n| n.to_string_lossy().into());
        let lines = std::io::BufReader::new(open()?).lines();
        Ok(Self { count: in_shard(count), next: 0, shard, source: Source::Lines { name, lines, number: 0 } })
    }
}

impl Records {
    /// Pass over the `n` records an earlier run answered, without reading a file's
    /// contents; the number and source of the last one.
    fn skip_answered(&mut self, n: u64) -> anyhow::Result<Option<(u64, String)>> {
        let mut last = None;
        for _ in 0..n {
            match self.read(false) {
                Some(record) => last = Some(record.map(|r| (r.index, r.source))?),
                None => break,
            }
        }
        Ok(last)
    }

    /// The shard's next record; with `body` false, a file's contents are left unread.
    fn read(&mut self, body: bool) -> Option<anyhow::Result<Record>> {
        loop {
            let index = self.next;
            let mine = self.shard.has(index);
            let record = self.read_any(body && mine)?;
            if mine || record.is_err() {
                return Some(record);
            }
        }
    }

    /// The input's next record, of any shard; with `body` false, a file's contents are left
    /// unread.
    fn read_any(&mut self, body: bool) -> Option<anyhow::Result<Record>> {
        let index = self.next;
        let record = match &mut self.source {
            Source::Files(files) => {
                let path = files.next()?;
                let source = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into());
                let contents = if body { std::fs::read(&path) } else { Ok(Vec::new()) };
                contents.with_context(|| format!("cannot read {}", path.display())).map(|body| Record {
                    index,
                    source,
                    body: body.into(),
                    header_length: Some("0"),
                })
            }
            Source::Lines { name, lines, number } => loop {
                let line = lines.next()?;
                *number += 1;
                match line {
                    Ok(line) if line.trim().is_empty() => continue,
                    Ok(line) => {
                        let source = format!("{name}:{number}");
                        break Ok(Record {
                            index,
                            source,
                            body: line.into_bytes().into(),
                            header_length: None,
                        });
                    }
                    Err(e) => break Err(e).context(format!("cannot read {name}")),
                }
            },
        };
        self.next += 1;
        Some(record)
    }
}

impl Iterator for Records {
    type Item = anyhow::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read(true)
    }
}

/// Records done, on a bar at a terminal, else in the log every few seconds.
struct Progress<'a> {
    model: &'a str,
    counter: crate::observe::telemetry::Progress,
    /// Records an earlier run wrote.
    skipped: u64,
}

impl<'a> Progress<'a> {
    fn new(model: &'a str, total: u64, done: u64, bar: bool) -> Self {
        tracing::info!(model = %model, records = total, already_done = done, "batch started");
        let bar = bar.then(|| {
            let style = ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} records, eta {eta}")
                .expect("a valid template");
            ProgressBar::new(total).with_style(style).with_message(model.to_string())
        });
        Self { model, counter: crate::observe::telemetry::Progress::new(total, done, bar), skipped: done }
    }

    fn advance(&mut self, failed: u64) {
        if self.counter.add(1) {
            let (done, total) = (self.counter.done, self.counter.total);
            tracing::info!(model = %self.model, failed, "batch: {done} of {total} records");
        }
    }

    fn finish(&self, summary: &Summary) {
        let elapsed = self.counter.finish();
        tracing::info!(
            model = %self.model,
            records = summary.records,
            skipped = summary.skipped,
            succeeded = summary.succeeded,
            failed = summary.failed,
            elapsed_ms = elapsed.as_millis() as u64,
            "batch done ({:.0} records/s)",
            self.counter.rate(self.skipped)
        );
        for (source, error) in &summary.failures {
            tracing::warn!(model = %self.model, source, "failed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_complete_lines_and_refuses_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.jsonl");
        assert_eq!(resume(&output).unwrap(), (0, None), "no output yet: start at record 0");
        let line =
            |i: u64| format!("{{\"record\":{i},\"source\":\"in.jsonl:{}\",\"response\":{{}}}}\n", i + 1);
        std::fs::write(&output, format!("{}{}{{\"record\":2,\"sou", line(0), line(1))).unwrap();
        assert_eq!(resume(&output).unwrap(), (2, Some((1, "in.jsonl:2".into()))));
        assert_eq!(std::fs::read_to_string(&output).unwrap(), line(0) + &line(1), "the torn line is cut off");
        std::fs::write(&output, "not json\n").unwrap();
        assert!(resume(&output).unwrap_err().to_string().contains("is not the output of a batch run"));
    }

    #[test]
    fn records_skip_blank_lines_and_count_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"a\":1}\n\n  \n{\"b\":2}\n").unwrap();
        let records = Records::open(&input, Shard::ALL).unwrap();
        assert_eq!(records.count, 2);
        let sources: Vec<(u64, String)> = records.map(|r| r.unwrap()).map(|r| (r.index, r.source)).collect();
        assert_eq!(sources, [(0, "in.jsonl:1".to_string()), (1, "in.jsonl:4".to_string())]);
    }

    #[test]
    fn shards_take_disjoint_parts_that_cover_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, (0..10).map(|i| format!("{{\"n\":{i}}}\n\n")).collect::<String>()).unwrap();
        let mut seen = Vec::new();
        for index in 0..3 {
            let records = Records::open(&input, Shard { index, count: 3 }).unwrap();
            let count = records.count;
            let numbers: Vec<u64> = records.map(|r| r.unwrap().index).collect();
            assert_eq!(numbers.len() as u64, count);
            assert!(numbers.iter().all(|n| n % 3 == index));
            seen.extend(numbers);
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // A directory's files: the others' are passed over unread.
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        for i in 0..5 {
            std::fs::write(files.join(format!("{i}.bin")), [i]).unwrap();
        }
        let records: Vec<_> =
            Records::open(&files, Shard { index: 1, count: 2 }).unwrap().map(|r| r.unwrap()).collect();
        let got: Vec<_> = records.iter().map(|r| (r.index, r.source.as_str(), r.body.to_vec())).collect();
        assert_eq!(got, [(1, "1.bin", vec![1]), (3, "3.bin", vec![3])]);
    }

    #[test]
    fn a_shard_is_i_of_n_or_n_with_the_job_index() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["3/3", "0/0", "a/2", "1/x"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!("3/3".parse::<Shard>().unwrap_err().contains("I must be below N"));
    }
}
