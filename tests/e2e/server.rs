//! Start the real `wasmserve` binary and talk HTTP to it.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The example model repository.
pub fn examples() -> PathBuf {
    root().join("examples/models")
}

/// The test-only model repository.
pub fn test_models() -> PathBuf {
    root().join("tests/models")
}

/// ONNX Runtime's library, when the environment names one. Under CI its absence fails the
/// test instead of skipping it.
pub fn onnxruntime_library() -> Option<PathBuf> {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) => Some(path.into()),
        None if std::env::var_os("CI").is_some() => panic!("CI must set ORT_DYLIB_PATH (make test does)"),
        None => {
            eprintln!("skipped: ORT_DYLIB_PATH is not set (make test sets it)");
            None
        }
    }
}

/// A running server, killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

fn command(repository: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmserve"));
    cmd.arg("serve").arg("--repository").arg(repository).args(["--port", "0"]).args(args);
    cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

impl Server {
    /// Start a server on a free port and wait until it is ready.
    pub fn start(repository: &Path, args: &[&str]) -> Self {
        let mut server = Self::spawn(command(repository, args));
        server.wait_ready();
        server
    }

    /// Start a server and return as soon as it listens, ready or not.
    pub fn start_listening(repository: &Path, args: &[&str]) -> Self {
        Self::spawn(command(repository, args))
    }

    /// Start the server under `wrapper`, a command that runs the command line after it (as
    /// `unshare` does), and return as soon as it listens.
    pub fn start_under(wrapper: &[&str], repository: &Path, args: &[&str]) -> Self {
        let inner = command(repository, args);
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(inner.get_program()).args(inner.get_args());
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        Self::spawn(cmd)
    }

    /// Start with extra environment.
    pub fn start_env(repository: &Path, args: &[&str], env: &[(&str, &Path)]) -> Self {
        Self::start_with(repository, args, |cmd| {
            for (k, v) in env {
                cmd.env(k, v);
            }
        })
    }

    /// Start with the command changed by `edit` (environment removed, say) and wait until ready.
    pub fn start_with(repository: &Path, args: &[&str], edit: impl FnOnce(&mut Command)) -> Self {
        let mut cmd = command(repository, args);
        edit(&mut cmd);
        let mut server = Self::spawn(cmd);
        server.wait_ready();
        server
    }

    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("start wasmserve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    // Text or JSON log lines: the address is the run of digits, dots and colons.
                    let addr = rest.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).next();
                    let _ = tx.send(addr.unwrap_or_default().to_string());
                }
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => panic!("server did not start listening:\n{}", log.lock().unwrap()),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Self { child, base: format!("http://{addr}"), log, agent }
    }

    /// Wait until `/v2/health/ready` answers 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server exited with {status} before ready:\n{}", self.log());
            }
            if self.get("/v2/health/ready").0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server not ready after 120 s:\n{}", self.log());
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the server to exit (after a signal sent elsewhere).
    pub fn terminate_wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// GET; returns status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        match self.agent.get(format!("{}{path}", self.base)).call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// GET a JSON answer; returns status and body.
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path);
        (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}")))
    }

    /// Wait until no model is loading any more; returns the repository index.
    pub fn wait_loaded(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, index) = self.get_json("/v2/repository/index");
            if index.as_array().unwrap().iter().all(|m| m["state"] != "LOADING") {
                return index;
            }
            assert!(Instant::now() < deadline, "still loading after 60 s: {index}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// POST raw bytes with headers; returns status, headers and body.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send(body).expect("POST");
        let header_length =
            r.headers().get("inference-header-content-length").map(|v| v.to_str().unwrap().parse().unwrap());
        let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_string());
        let (request_id, retry_after) = (header("x-request-id"), header("retry-after"));
        let server_timing = header("server-timing");
        let body = r.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
        Response { status: r.status().as_u16(), header_length, request_id, retry_after, server_timing, body }
    }

    /// Send a hand-written HTTP request; returns status and body.
    pub fn raw_http(&self, request: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.base.trim_start_matches("http://")).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        // The server may keep the connection open waiting for the body it refused: read
        // until the timeout; what arrived before it stays in the buffer.
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response);
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    }

    /// POST a JSON inference request to `model`.
    pub fn infer(&self, model: &str, request: &Value) -> Response {
        self.post(
            &format!("/v2/models/{model}/infer"),
            &[("content-type", "application/json")],
            request.to_string().as_bytes(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
pub struct Response {
    pub status: u16,
    pub header_length: Option<usize>,
    pub request_id: Option<String>,
    pub retry_after: Option<String>,
    pub server_timing: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body (or its JSON part, for binary responses) as JSON.
    pub fn json(&self) -> Value {
        let json = &self.body[..self.header_length.unwrap_or(self.body.len())];
        serde_json::from_slice(json)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error` of an OIP error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error in {}", self.json())).to_string()
    }

    /// The output called `name`.
    pub fn output(&self, name: &str) -> Value {
        let json = self.json();
        json["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name} in {json}"))
            .clone()
    }
}

/// Run the server to its exit, expecting it to fail; returns status and everything it logged.
pub fn run_to_failure(repository: &Path, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = command(repository, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().expect("run wasmserve");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        log
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wasmserve did not exit within 60 s:\n{}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = reader.join().unwrap();
    assert!(!status.success(), "expected wasmserve to fail, it exited 0:\n{log}");
    (status, log)
}

/// A copy of a model repository in a temporary directory (big files linked, not copied),
/// with `edit` applied to each model.toml.
pub fn edited_repository(from: &Path, models: &[&str], edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for model in models {
        let src = from.join(model);
        let dst = dir.path().join(model);
        std::fs::create_dir(&dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() == "model.toml" {
                let text = std::fs::read_to_string(entry.path()).unwrap();
                std::fs::write(dst.join("model.toml"), edit(&text)).unwrap();
            } else {
                std::os::unix::fs::symlink(entry.path(), dst.join(entry.file_name())).unwrap();
            }
        }
    }
    dir
}
