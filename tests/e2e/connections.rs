//! Connections from careless and hostile clients: slow headers (slowloris), idle keep-alive
//! on HTTP/1 and HTTP/2, a silent HTTP/2 preface, a stalled body, and the connection cap.

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A server with the test model only: the limits are the server's, not a model's.
fn server(args: &[&str]) -> Server {
    Server::start(&test_models(), args)
}

fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://")).unwrap()
}

/// Whether the server has closed (or answered on) `stream`, without waiting.
fn closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let closed = !matches!(stream.peek(&mut [0; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Read until the server closes `stream`; returns what it sent and when it closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Instant) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (received, Instant::now()),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (received, Instant::now()),
            Err(e) => panic!("the server kept the connection open past {limit:?}: {e}"),
        }
    }
}

/// One of the server's metrics (a sample's value; 0 when absent).
fn metric(server: &Server, sample: &str) -> f64 {
    let (_, text) = server.get("/metrics");
    text.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[test]
fn slowloris_connections_are_closed_at_the_header_deadline_while_clients_are_served() {
    let server = server(&["--header-timeout-secs", "2"]);
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    // A header byte every 300 ms from each, as slowloris sends them.
    let mut served = 0;
    while opened.elapsed() < Duration::from_millis(4500) {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        if (1000..1500).contains(&opened.elapsed().as_millis()) {
            let open = slow.iter().filter(|s| !closed(s)).count();
            assert_eq!(open, 300, "connections closed before the header deadline");
        }
        assert_eq!(server.get("/v2/health/ready").0, 200, "a real client was not served");
        assert_serves(&server);
        served += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let open = slow.iter().filter(|s| !closed(s)).count();
    assert_eq!(open, 0, "slow connections still open {:?} after they opened", opened.elapsed());
    assert!(served >= 5, "served {served} real requests meanwhile");
    assert!(metric(&server, "wasmserve_connections_timed_out_total{phase=\"headers\"}") >= 300.0);
}

#[test]
fn idle_keep_alive_connections_close_after_the_idle_timeout_not_the_header_deadline() {
    let server = server(&["--header-timeout-secs", "1", "--idle-timeout-secs", "3"]);

    // HTTP/1.1: one request, then nothing.
    let mut http1 = connect(&server);
    http1.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let sent = Instant::now();
    let (answer, closed_at) = read_until_closed(&mut http1, Duration::from_secs(15));
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    let idle = closed_at - sent;
    assert!(
        idle >= Duration::from_millis(2500) && idle < Duration::from_secs(8),
        "HTTP/1 closed after {idle:?}"
    );

    // HTTP/2 (h2c, prior knowledge): one request, then nothing: GOAWAY and close.
    let mut http2 = connect(&server);
    http2.write_all(&h2_request("/v2/health/live")).unwrap();
    let sent = Instant::now();
    let (frames, closed_at) = read_until_closed(&mut http2, Duration::from_secs(15));
    let kinds = h2_frame_types(&frames);
    assert!(kinds.contains(&1), "no HEADERS answered: {kinds:?}");
    assert!(kinds.contains(&7), "no GOAWAY before closing: {kinds:?}");
    let idle = closed_at - sent;
    assert!(
        idle >= Duration::from_millis(2500) && idle < Duration::from_secs(8),
        "HTTP/2 closed after {idle:?}"
    );
    assert!(metric(&server, "wasmserve_connections_timed_out_total{phase=\"idle\"}") >= 2.0);
}

#[test]
fn a_silent_http2_preface_and_a_stalled_body_are_cut_off() {
    let server = server(&["--header-timeout-secs", "2", "--body-timeout-secs", "1"]);
    // The HTTP/2 preface and settings, then no request.
    let mut silent = connect(&server);
    silent.write_all(&h2_preface()).unwrap();
    let sent = Instant::now();
    let (_, closed_at) = read_until_closed(&mut silent, Duration::from_secs(15));
    let waited = closed_at - sent;
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "closed after {waited:?}"
    );

    // A body announced as 100 bytes of which 10 come.
    let started = Instant::now();
    let (status, body) = server.raw_http(
        "POST /v2/models/faulty/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{\"inputs\":",
    );
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("--body-timeout-secs"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(4), "408 after {:?}", started.elapsed());
    assert_serves(&server);
}

#[test]
fn past_the_connection_cap_new_connections_are_refused_and_open_ones_served() {
    let server = server(&["--max-connections", "20", "--header-timeout-secs", "60"]);
    let mut held: Vec<TcpStream> = (0..30).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let refused = held.iter().filter(|s| closed(s)).count();
    // 20 are open: the test's own client holds one or none of them.
    assert!((10..=11).contains(&refused), "{refused} of 30 refused");
    held.retain(|s| !closed(s));
    // An open connection is served as before, and the refusals are counted.
    let mut client = held.pop().unwrap();
    client.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    while !text.contains("# EOF") {
        let mut buf = [0; 8192];
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "the server closed a connection it had accepted");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains(&format!("wasmserve_connections_refused_total {refused}")), "{text}");
    assert!(text.contains("wasmserve_connections_open 20"), "{text}");
    // Room again once some close.
    held.truncate(5);
    std::thread::sleep(Duration::from_millis(300));
    assert_serves(&server);
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    bytes
}

/// The preface, then a GET of `path` on stream 1 (HPACK literals, no Huffman).
fn h2_request(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (name_index, value) in [(4u8, path), (1, "localhost")] {
        // Literal with incremental indexing, indexed name (:path, :authority).
        block.push(0x40 | name_index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut bytes = h2_preface();
    let length = (block.len() as u32).to_be_bytes();
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    bytes.extend_from_slice(&[length[1], length[2], length[3], 0x1, 0x5, 0, 0, 0, 1]);
    bytes.extend_from_slice(&block);
    bytes
}

/// The types of the HTTP/2 frames in `bytes`.
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}
