//! Idle and slow peers must not lock clients out (issue 19): idle connections, slowloris
//! connections and stalled uploads from many addresses, beside an honest client and a health
//! check. The numbers here are the target; `scripts/load-admission.py` runs the same
//! attack from outside for the benchmark figures.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use vpd::protocol::message::{ErrorCode, ServerMessage};

use crate::util::cluster::*;
use crate::util::raw::*;
use crate::util::*;

/// Addresses the attack comes from: 127.0.0.2 …, none of them the honest client's 127.0.0.1.
const ATTACKERS: usize = 20;

/// What one attacking connection does.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Connects and sends nothing.
    Idle,
    /// Sends one byte every 5 s, never a whole message.
    Slowloris,
    /// Says hello, announces a 4 GiB upload, sends one chunk, then nothing.
    Stalled,
}

struct Attacker {
    kind: Kind,
    target: SocketAddr,
    source: String,
    stream: Option<TcpStream>,
    last_byte: Instant,
    /// Times the server closed this connection (and it was opened again).
    closed: u32,
}

impl Attacker {
    fn open(&mut self) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&format!("{}:0", self.source).parse::<SocketAddr>().unwrap().into()).unwrap();
        if socket.connect_timeout(&self.target.into(), Duration::from_secs(2)).is_err() {
            return;
        }
        let mut stream: TcpStream = socket.into();
        if self.kind == Kind::Stalled {
            // The handshake and the submit, then a single chunk of the 4 GiB.
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut raw = Raw(stream);
            raw.hello(None);
            if !matches!(raw.recv(), Some(ServerMessage::Welcome { .. })) {
                return;
            }
            raw.send(&submit("edges", 4 << 30));
            if !matches!(raw.recv(), Some(ServerMessage::Accepted { .. })) {
                return;
            }
            raw.chunk(&[0u8; 1024]);
            stream = raw.0;
        }
        stream.set_nonblocking(true).unwrap();
        self.stream = Some(stream);
        self.last_byte = Instant::now();
    }

    /// Reopens a connection the server closed; sends the slowloris byte when it is due.
    fn tend(&mut self) {
        let closed = match &mut self.stream {
            None => true,
            Some(s) => {
                let mut buf = [0u8; 256];
                let closed = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => continue, // an error frame before the close
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                };
                if !closed && self.kind == Kind::Slowloris && self.last_byte.elapsed() >= Duration::from_secs(5) {
                    // The first bytes of a length prefix, one at a time.
                    let _ = s.write(&[0]);
                    self.last_byte = Instant::now();
                }
                closed
            }
        };
        if closed {
            self.closed += u32::from(self.stream.is_some());
            self.stream = None;
            self.open();
        }
    }
}

/// Runs the attack on `targets` (each `(address, kind, count)`) until `stop` is set, in one
/// thread; returns how often the server closed each kind of connection.
fn attack(
    targets: Vec<(SocketAddr, Kind, usize)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<Vec<(Kind, u32)>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        for (target, kind, count) in targets {
            for i in 0..count {
                let source = format!("127.0.0.{}", 2 + i % ATTACKERS);
                let mut a = Attacker { kind, target, source, stream: None, last_byte: Instant::now(), closed: 0 };
                a.open();
                all.push(a);
            }
        }
        let _ = opened.send(());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for a in &mut all {
                a.tend();
            }
            // The attacker's pace: a sweep over its connections every 50 ms.
            std::thread::park_timeout(Duration::from_millis(50));
        }
        all.iter().map(|a| (a.kind, a.closed)).collect()
    })
}

fn health_answers_within(host: &str, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).unwrap();
    write!(s, "GET /healthz HTTP/1.1\r\nHost: vpd\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| format!("/healthz did not answer within {limit:?}: {e}"))?;
    if !reply.starts_with("HTTP/1.1 200") {
        return Err(format!("/healthz: {reply}"));
    }
    Ok(started.elapsed())
}

#[test]
fn idle_slow_and_stalled_peers_do_not_lock_an_honest_client_out() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 24, ..ClipSpec::default() });
    let server =
        Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--preview", "127.0.0.1:0", "--max-upload", "5G"]);
    let addr = server.addr();
    let host = server.preview.clone().unwrap().trim_start_matches("http://").trim_end_matches('/').to_string();

    // The honest job's normal time, before the attack.
    let normal = Instant::now();
    let out = client(&addr, &input, "edges", &dir.path().join("before.mp4"), &["--wait", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let normal = normal.elapsed();

    // 2000 idle connections (half on the job port, half on the dashboard's), 200 slowloris
    // connections (likewise), 16 stalled 4 GiB uploads, from 20 addresses.
    let (job, http): (SocketAddr, SocketAddr) = (addr.parse().unwrap(), host.parse().unwrap());
    let targets = vec![
        (job, Kind::Idle, 1000),
        (http, Kind::Idle, 1000),
        (job, Kind::Slowloris, 100),
        (http, Kind::Slowloris, 100),
        (job, Kind::Stalled, 16),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (opened, all_open) = std::sync::mpsc::channel();
    let attacker = attack(targets, stop.clone(), opened);
    all_open.recv_timeout(Duration::from_secs(120)).expect("the attack's connections were opened");

    // Beside them: the health check, then the honest job.
    let health = health_answers_within(&host, Duration::from_secs(1));
    let during = Instant::now();
    let out = client(&addr, &input, "edges", &dir.path().join("during.mp4"), &["--wait", "0"]);
    let during = during.elapsed();
    let health_after = health_answers_within(&host, Duration::from_secs(1));

    // The figures BENCHMARKS.md quotes (`cargo nextest run --no-capture -E 'test(idle_slow)'`).
    eprintln!(
        "admission: honest job {:.2} s alone, {:.2} s under the attack; /healthz {:?} during, {:?} after",
        normal.as_secs_f64(),
        during.as_secs_f64(),
        health.as_ref().map(|d| d.as_millis()),
        health_after.as_ref().map(|d| d.as_millis()),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    attacker.thread().unpark();
    let closed = attacker.join().unwrap();
    let (code, log) = server.stop();

    assert!(out.status.success(), "the honest job failed under the attack: {}", stderr(&out));
    assert_eq!(ffprobe(&dir.path().join("during.mp4")).frames, 24);
    assert!(
        during <= normal + Duration::from_secs(30),
        "the honest job took {during:?} under the attack, {normal:?} without it"
    );
    health.unwrap_or_else(|e| panic!("during the attack: {e}"));
    health_after.unwrap_or_else(|e| panic!("after the honest job: {e}"));
    // The idle connections were closed to make room, not the newcomers refused.
    let evicted: u32 = closed.iter().filter(|(k, _)| *k == Kind::Idle).map(|(_, n)| n).sum();
    let cut: u32 = closed.iter().filter(|(k, _)| *k == Kind::Stalled).map(|(_, n)| n).sum();
    eprintln!("admission: {evicted} idle connections closed to make room, {cut} stalled uploads cut");
    assert!(evicted > 0, "no idle connection was closed: {closed:?}");
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_stalled_upload_is_cut_within_the_rate_window_and_says_why() {
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--max-upload", "5G"]);
    let mut raw = Raw::connect(&server.addr());
    raw.hello(None);
    assert!(matches!(raw.recv(), Some(ServerMessage::Welcome { .. })));
    raw.send(&submit("edges", 4 << 30));
    assert!(matches!(raw.recv(), Some(ServerMessage::Accepted { .. })));
    raw.chunk(&[0u8; 1024]);
    let started = Instant::now();
    let (code, message) = raw.expect_error();
    assert_eq!(code, ErrorCode::Timeout);
    assert!(message.contains("the upload fell below 64 kB/s over 10 s"), "{message}");
    // Cut within a window and a tick of it, not after the 60 s idle timeout.
    assert!(started.elapsed() < Duration::from_secs(15), "cut after {:?}", started.elapsed());
    // With nothing safely stored, nothing is kept: a peer that announces uploads and sends
    // nothing leaves no job behind to resume.
    let jobs = server.work_dir.parent().unwrap().join("state").join("jobs");
    let left = || files_in(&jobs);
    assert!(wait_for(Duration::from_secs(10), || left().is_empty()), "left behind: {:?}", left());
}

#[test]
fn one_address_holds_at_most_its_share_of_the_upload_places() {
    // Two job slots: 32 places, 8 for any one address.
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 8, ..ClipSpec::default() });
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--max-upload", "5G"]);
    let stalled: Vec<Raw> = (0..8)
        .map(|_| {
            let mut raw = Raw::connect_from(&server.addr(), "127.0.0.9").unwrap();
            raw.hello(None);
            assert!(matches!(raw.recv(), Some(ServerMessage::Welcome { .. })));
            raw.send(&submit("edges", 4 << 30));
            assert!(matches!(raw.recv(), Some(ServerMessage::Accepted { .. })));
            raw
        })
        .collect();
    // The ninth from that address waits for a place: no Accepted while the others hold theirs.
    let mut ninth = Raw::connect_from(&server.addr(), "127.0.0.9").unwrap();
    ninth.hello(None);
    assert!(matches!(ninth.recv(), Some(ServerMessage::Welcome { .. })));
    ninth.send(&submit("edges", 4 << 30));
    ninth.0.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut byte = [0u8; 1];
    let waited = ninth.0.read(&mut byte);
    assert!(
        matches!(&waited, Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut),
        "the ninth upload from one address was not held back: {waited:?}"
    );
    // Another address goes ahead at once.
    let out = client(&server.addr(), &input, "edges", &dir.path().join("out.mp4"), &["--wait", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop((stalled, ninth));
}
