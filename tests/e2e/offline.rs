//! `wasmserve batch`: offline inference, resumed after a kill, over a directory of raw inputs.

use super::*;

/// `wasmserve batch` over `input` into `output`, on the test models.
fn batch_command(input: &Path, output: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wasmserve"));
    cmd.args(["batch", "--model", "faulty", "--concurrency", "4", "--repository"]).arg(test_models());
    cmd.arg("--input").arg(input).arg("--output").arg(output);
    cmd.env("RUST_LOG", "info").stdin(std::process::Stdio::null());
    cmd
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_batch_killed_midway_resumes_to_exactly_the_online_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("requests.jsonl"), dir.path().join("answers.jsonl"));
    // 3,000 requests, every 250th malformed (a shape the model does not take), and a blank
    // line that is no record; each sleeps 1 ms in the plugin so the run lasts long enough
    // to be killed midway.
    let records = 3000;
    let mut text = String::new();
    for i in 0..records {
        let shape = if i % 250 == 7 { json!([2, 3]) } else { json!([3, 2]) };
        let data: Vec<f32> = (0..6).map(|k| ((i * 7 + k) % 23) as f32 - 11.0).collect();
        let request = json!({"id": format!("r{i}"), "parameters": {"sleep_ms": "1"},
            "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]});
        text += &format!("{request}\n");
        if i == 10 {
            text += "\n";
        }
    }
    std::fs::write(&input, &text).unwrap();

    let mut first = batch_command(&input, &output).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read(&output).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) < 500 {
        assert!(std::time::Instant::now() < deadline, "no progress in 60 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL: no chance to finish a line or flush
    first.wait().unwrap();
    let partial = lines(&output).len();
    assert!((500..records).contains(&partial), "killed midway: {partial} lines");

    let second = batch_command(&input, &output).output().unwrap();
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{log}");
    assert!(log.contains("resuming after the records already written"), "{log}");

    let answers = lines(&output);
    assert_eq!(answers.len(), records, "one line per record");
    assert_eq!(answers.iter().filter(|a| a["status"] == 400).count(), records / 250);
    let server = Server::start(&test_models(), &[]);
    let requests: Vec<Value> =
        text.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, (answer, request)) in answers.iter().zip(&requests).enumerate() {
        assert_eq!(answer["record"], i, "in input order, each once");
        let line = if i <= 10 { i + 1 } else { i + 2 };
        assert_eq!(answer["source"], format!("requests.jsonl:{line}"));
        let online = server.infer("faulty", request);
        if online.status == 200 {
            assert_eq!(answer["response"], online.json(), "record {i}");
        } else {
            assert_eq!(
                (answer["status"].as_u64(), answer["error"].as_str()),
                (Some(online.status as u64), Some(online.error().as_str())),
                "record {i}"
            );
        }
    }
}

#[test]
fn a_batch_over_a_directory_answers_each_file_as_a_raw_request() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out.jsonl"));
    std::fs::create_dir(&input).unwrap();
    let floats = |v: f32| (0..6).flat_map(|k| (v + k as f32).to_le_bytes()).collect::<Vec<u8>>();
    let files = [("a.bin", floats(1.0)), ("b.bin", vec![0; 5]), ("c.bin", floats(-3.5))];
    for (name, bytes) in &files {
        std::fs::write(input.join(name), bytes).unwrap();
    }
    let run = batch_command(&input, &output).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let answers = lines(&output);
    let server = Server::start(&test_models(), &[]);
    assert_eq!(answers.len(), files.len());
    for (answer, (name, bytes)) in answers.iter().zip(&files) {
        assert_eq!(answer["source"], *name);
        let online = server.post("/v2/models/faulty/infer", &RAW, bytes);
        match online.status {
            200 => assert_eq!(answer["response"], online.json(), "{name}"),
            status => assert_eq!(
                (answer["status"].as_u64(), answer["error"].as_str()),
                (Some(status as u64), Some(online.error().as_str())),
                "{name}"
            ),
        }
    }
    assert_eq!(answers[1]["status"], 400, "5 bytes are no [3, 2] FP32 tensor");
}

#[test]
fn shards_write_into_an_output_directory_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("requests.jsonl");
    let text: String = (0..6)
        .map(|i| {
            let data: Vec<f32> = (0..6).map(|k| (i * 6 + k) as f32).collect();
            format!(
                "{}\n",
                json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": data}]})
            )
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    // Two levels that are not there, named as docs/batch-inference.md names an output folder.
    let out = dir.path().join("runs/today");
    let mut records = Vec::new();
    for shard in 0..3 {
        let folder = format!("{}/", out.display());
        let mut run = batch_command(&input, Path::new(&folder));
        let run = run.args(["--shard", &format!("{shard}/3")]).output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let part = lines(&out.join(format!("part-{shard:05}-of-00003.jsonl")));
        assert_eq!(part.len(), 2, "shard {shard}: records {shard} and {}", shard + 3);
        records.extend(part.iter().map(|line| line["record"].as_u64().unwrap()));
    }
    records.sort();
    assert_eq!(records, [0, 1, 2, 3, 4, 5], "every record once across the shards");
}
