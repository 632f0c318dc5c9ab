//! Real `vpd server` and `vpd worker` processes on a real RabbitMQ, each test in its own
//! namespace, all removed when the test ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use vpd::broker::{Broker, Topology};

use vpd::metrics::JobSummary;

use super::{ChildGuard, ClipSpec, decode_all, max_diff, run_vpd, stderr, vpd, write_clip};

/// The broker the tests use: `VPD_TEST_AMQP_URL`, or the local default (`make test` starts one).
pub fn amqp_url() -> String {
    std::env::var("VPD_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A runtime for the tests' own broker calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A namespace of queues and exchanges for one test, deleted when dropped.
pub struct Namespace {
    /// The namespace's name, for `--namespace`.
    pub name: String,
}

impl Namespace {
    /// A fresh namespace named after `test`, declared with classic queues.
    pub fn new(test: &str) -> Self {
        Self::of(test, Some(Topology::new))
    }

    /// A fresh namespace named after `test` that nothing has declared yet (whatever a role
    /// declares in it is deleted all the same).
    pub fn undeclared(test: &str) -> Self {
        Self::of(test, None)
    }

    fn of(test: &str, declare: Option<fn(String) -> Topology>) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("vpdtest-{test}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        // Fail early and clearly when there is no broker.
        runtime().block_on(async {
            let b = Broker::connect_one(&amqp_url(), "vpd-test").await.unwrap_or_else(|e| {
                panic!("{e:#}\n(the distributed tests need RabbitMQ: `make test` starts one, or set VPD_TEST_AMQP_URL)")
            });
            if let Some(topology) = declare {
                b.declare(&topology(name.clone())).await.unwrap();
            }
            b.close().await;
        });
        Namespace { name }
    }

    /// The namespace's names.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.name)
    }

    /// Messages waiting in one of the namespace's queues, and its consumers.
    pub fn stats(&self, queue: &str) -> (u32, u32) {
        runtime().block_on(async {
            let b = Broker::connect_one(&amqp_url(), "vpd-test").await.unwrap();
            let n = b.queue_stats(queue).await.unwrap();
            b.close().await;
            n
        })
    }

    /// Waits until `n` workers consume the namespace's task queue.
    pub fn wait_for_workers(&self, n: u32) {
        let tasks = self.topology().tasks();
        // The queue may not be there yet: a server declares it after it starts listening.
        let consumers = || {
            runtime().block_on(async {
                let b = Broker::connect_one(&amqp_url(), "vpd-test").await.unwrap();
                let n = b.queue_stats(&tasks).await.map_or(0, |(_, consumers)| consumers);
                b.close().await;
                n
            })
        };
        let ready = super::wait_for(Duration::from_secs(60), || consumers() >= n);
        assert!(ready, "{n} workers did not start consuming within a minute");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let t = self.topology();
        runtime().block_on(async {
            if let Ok(b) = Broker::connect_one(&amqp_url(), "vpd-test").await {
                let _ = b.delete(&t).await;
                b.close().await;
            }
        });
    }
}

/// A running `vpd server`, stopped (and waited for) when dropped.
pub struct Server {
    /// The process.
    pub child: ChildGuard,
    /// Its TCP address (`127.0.0.1:PORT` or `[::]:PORT`).
    pub tcp: Option<String>,
    /// Its Unix socket.
    pub unix: Option<PathBuf>,
    /// Its work directory.
    pub work_dir: PathBuf,
    /// Its dashboard's base URL (`http://127.0.0.1:PORT/`), with `--preview`.
    pub preview: Option<String>,
    /// Its `/metrics` base URL, with `--metrics`.
    pub metrics: Option<String>,
    /// Its certificate's fingerprint (`sha256:AB:…`), with `--tls-cert`.
    pub tls: Option<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `vpd server ARGS --work-dir …` and waits for it to announce its sockets.
    pub fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let work_dir = dir.path().join("work");
        Server::start_in(args, dir, work_dir, |_| {})
    }

    /// A server on the test broker in `ns`, listening on a free loopback port: `vpd server
    /// --listen 127.0.0.1:0 --amqp … --namespace NS EXTRA`.
    pub fn on_broker(ns: &Namespace, extra: &[&str]) -> Server {
        let amqp = amqp_url();
        let mut args = vec!["--listen", "127.0.0.1:0", "--amqp", &amqp, "--namespace", &ns.name];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// Like [`Server::start`], with `work_dir` (which `dir` holds) and `configure` applied to
    /// the command.
    pub fn start_in(
        args: &[&str],
        dir: tempfile::TempDir,
        work_dir: PathBuf,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Server {
        let mut cmd = vpd();
        cmd.arg("server").args(args).arg("--work-dir").arg(&work_dir);
        if !args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(dir.path().join("state"));
        }
        configure(&mut cmd);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting vpd server");
        let stdout = child.stdout.take().unwrap();
        let (mut tcp, mut unix, mut preview, mut metrics, mut tls) = (None, None, None, None, None);
        // The server prints a `listening …` line per socket, then nothing more on stdout.
        let expected = usize::from(!args.contains(&"--unix") || args.contains(&"--listen"))
            + usize::from(args.contains(&"--unix"))
            + usize::from(args.contains(&"--preview"))
            + usize::from(args.contains(&"--metrics"))
            + usize::from(args.contains(&"--tls-cert") && args.contains(&"--listen"));
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < expected {
            match lines.next() {
                Some(Ok(line)) => {
                    seen += 1;
                    if let Some(a) = line.strip_prefix("listening tcp ") {
                        tcp = Some(a.to_string());
                    } else if let Some(p) = line.strip_prefix("listening unix ") {
                        unix = Some(PathBuf::from(p));
                    } else if let Some(u) = line.strip_prefix("listening preview ") {
                        preview = Some(u.to_string());
                    } else if let Some(u) = line.strip_prefix("listening metrics ") {
                        metrics = Some(u.to_string());
                    } else if let Some(f) = line.strip_prefix("listening tls ") {
                        tls = Some(f.to_string());
                    }
                }
                _ => {
                    let out = child.wait_with_output().unwrap();
                    panic!("vpd server exited before listening: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
        Server { child: ChildGuard(child), tcp, unix, work_dir, preview, metrics, tls, _dir: dir }
    }

    /// The process's memory: its resident set now and its peak, in bytes (Linux `/proc`).
    pub fn memory(&self) -> (u64, u64) {
        memory(self.child.0.id())
    }

    /// The address clients use over IPv4 loopback.
    pub fn addr(&self) -> String {
        let tcp = self.tcp.as_deref().expect("listening on TCP");
        let port = tcp.rsplit(':').next().unwrap();
        format!("127.0.0.1:{port}")
    }

    /// Stops the server with SIGTERM and returns its exit code and stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        signal(&self.child.0, libc::SIGTERM);
        wait_output(&mut self.child.0)
    }
}

/// A running `vpd worker`, killed when dropped.
pub struct Worker {
    /// The process.
    pub child: ChildGuard,
}

impl Worker {
    fn command(ns: &Namespace, concurrency: usize) -> std::process::Command {
        let mut cmd = vpd();
        cmd.args(["worker", "--amqp", &amqp_url(), "--namespace", &ns.name, "--threads", &concurrency.to_string()]);
        cmd
    }

    /// Starts a worker in `ns` with one thread and `args`, which may give its own `--amqp`.
    pub fn start_with(ns: &Namespace, args: &[&str]) -> Worker {
        let mut cmd = vpd();
        cmd.args(["worker", "--namespace", &ns.name, "--threads", "1"]).args(args);
        if !args.contains(&"--amqp") {
            cmd.args(["--amqp", &amqp_url()]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("starting vpd worker");
        Worker { child: ChildGuard(child) }
    }

    /// Starts a worker in `ns` with `concurrency` threads.
    pub fn start(ns: &Namespace, concurrency: usize) -> Worker {
        let child = Worker::command(ns, concurrency)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vpd worker");
        Worker { child: ChildGuard(child) }
    }

    /// Starts a worker that serves `/metrics`, and returns it with its base URL.
    pub fn with_metrics(ns: &Namespace, concurrency: usize) -> (Worker, String) {
        Worker::with_metrics_and(ns, concurrency, &[])
    }

    /// Like [`Worker::with_metrics`], with more arguments.
    pub fn with_metrics_and(ns: &Namespace, concurrency: usize, extra: &[&str]) -> (Worker, String) {
        let mut child = Worker::command(ns, concurrency)
            .args(["--metrics", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting vpd worker");
        let url = announced(&mut child, "metrics");
        (Worker { child: ChildGuard(child) }, url)
    }
}

/// The address in `listening WHAT ADDR`, the line a role prints on stdout once it serves.
pub fn announced(child: &mut Child, what: &str) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    line.trim_end()
        .strip_prefix(&format!("listening {what} "))
        .unwrap_or_else(|| panic!("expected `listening {what} …`, got {line:?}"))
        .to_string()
}

/// A running `vpd preview`, killed when dropped.
pub struct Preview {
    /// The process.
    pub child: ChildGuard,
    /// Its base URL, `http://127.0.0.1:PORT/`.
    pub url: String,
}

impl Preview {
    /// Starts a preview of `ns` on a free port.
    pub fn start(ns: &Namespace) -> Preview {
        Preview::start_with(ns, &[])
    }

    /// Starts a preview of `ns` on a free port, with `extra` arguments.
    pub fn start_with(ns: &Namespace, extra: &[&str]) -> Preview {
        let mut child = vpd()
            .args(["preview", "--listen", "127.0.0.1:0", "--amqp", &amqp_url(), "--namespace", &ns.name])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vpd preview");
        let url = announced(&mut child, "preview");
        Preview { child: ChildGuard(child), url }
    }
}

/// Whether `rabbitmqctl` is here to cut connections (it runs beside a local broker only).
pub fn can_cut_connections() -> bool {
    std::process::Command::new("rabbitmqctl").arg("help").output().is_ok()
}

/// Messages of `queue` delivered to a consumer and not yet acknowledged, as the broker counts
/// them (`None` without `rabbitmqctl`, i.e. a remote broker).
pub fn unacked(queue: &str) -> Option<u32> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.split_once(char::is_whitespace).filter(|(name, _)| *name == queue).map(|(_, n)| n.trim().to_string())
        })
        .and_then(|n| n.parse().ok())
}

/// Closes, from the broker's side as a broker restart would, the connection that the vpd role
/// `role` (`vpd-server`, `vpd-preview`, …) in process `pid` opened.
pub fn cut_connection(role: &str, pid: u32) {
    let list = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    // Each line: the connection's pid, then its client properties with the name vpd gave it
    // (`ROLE HOST:PID`).
    let connection = list
        .lines()
        .find(|l| l.contains(&format!("{role} ")) && l.contains(&format!(":{pid}\"")))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {role} connection of process {pid} in:\n{list}"))
        .to_string();
    let closed =
        std::process::Command::new("rabbitmqctl").args(["close_connection", &connection, "test"]).output().unwrap();
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
}

/// A process's resident set and its peak (VmRSS, VmHWM), in bytes.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {status}"));
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Limits a command's process to `n` open files (soft and hard), as `prlimit --nofile` would.
pub fn limit_open_files(cmd: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to a child.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling a child process of this test.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Waits for a child to exit (at most a minute) and returns its exit code and stderr.
pub fn wait_output(child: &mut Child) -> (Option<i32>, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "process did not exit within a minute");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    (status.code(), err)
}

/// Files in `dir` (none when it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// A subscription to a namespace's job events, ready when `subscribe` returns.
pub struct Events {
    rx: crossbeam_channel::Receiver<vpd::protocol::event::JobEvent>,
}

impl Events {
    /// Subscribes to `ns`'s events exchange.
    pub fn subscribe(ns: &Namespace) -> Events {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let t = ns.topology();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let b = Broker::connect_one(&amqp_url(), "vpd-test-events").await.unwrap();
                let mut consumer = b.consume_events(&t, "test-events").await.unwrap();
                ready_tx.send(()).unwrap();
                while let Some(Ok(m)) = consumer.next().await {
                    let Ok(event) = serde_json::from_slice(&m.body) else { continue };
                    if tx.send(event).is_err() {
                        break; // the test is done with it
                    }
                }
                b.close().await;
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(20)).expect("subscribing to events");
        Events { rx }
    }

    /// Waits (up to a minute) for a job's progress to reach `done` frames.
    pub fn wait_for_progress(&self, done: u64) {
        use vpd::protocol::event::JobEvent;
        self.wait_for(
            Duration::from_secs(60),
            "progress",
            |e| matches!(e, JobEvent::Progress { progress, .. } if progress.done >= done),
        );
    }

    /// The first event matching `pred` (earlier ones are dropped); panics after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&vpd::protocol::event::JobEvent) -> bool,
    ) -> vpd::protocol::event::JobEvent {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(_) => panic!("no {what} event within {timeout:?}"),
            }
        }
    }
}

/// `vpd client INPUT --server ADDR -f CHAIN -o OUT --codec ffv1 --json ARGS…`.
pub fn client(addr: &str, input: &Path, chain: &str, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "client",
        input.to_str().unwrap(),
        "--server",
        addr,
        "-f",
        chain,
        "-o",
        output.to_str().unwrap(),
        "--json",
    ];
    if output.extension().is_some_and(|e| e == "mkv") {
        args.extend(["--codec", "ffv1"]);
    }
    args.extend_from_slice(extra);
    run_vpd(&args)
}

/// The client's JSON summary, after checking it succeeded.
pub fn summary(out: &Output) -> JobSummary {
    assert!(out.status.success(), "client failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("a JSON summary on stdout")
}

/// Writes a lossless clip to `dir/in.mkv`.
pub fn clip(dir: &Path, spec: ClipSpec) -> PathBuf {
    let input = dir.join("in.mkv");
    write_clip(&input, &spec, "FFV1");
    input
}

/// Starts `cmd` with its output piped, killed if the test ends first.
pub fn spawn_piped(mut cmd: std::process::Command) -> ChildGuard {
    ChildGuard(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
}

/// `vpd client INPUT --server ADDR -f CHAIN -o OUTPUT ARGS --json` as a command.
pub fn client_cmd(addr: &str, input: &Path, chain: &str, output: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = vpd();
    cmd.args(["client", input.to_str().unwrap(), "--server", addr, "-f", chain, "-o", output.to_str().unwrap()]);
    cmd.args(extra).arg("--json");
    cmd
}

/// `vpd run` on the same input: the reference every other path must equal.
pub fn reference(input: &Path, chain: &str, output: &Path) -> Vec<opencv::core::Mat> {
    vpd_run(input, chain, output, &["--codec", "ffv1"])
}

/// `vpd run` with 1 s segments in `codec`: the reference of jobs in 1 s segments.
pub fn reference_in_segments(input: &Path, chain: &str, output: &Path, codec: &str) -> Vec<opencv::core::Mat> {
    vpd_run(input, chain, output, &["--codec", codec, "--segment-seconds", "1"])
}

/// `vpd run INPUT -f CHAIN -o OUTPUT ARGS -q`, decoded.
fn vpd_run(input: &Path, chain: &str, output: &Path, args: &[&str]) -> Vec<opencv::core::Mat> {
    let mut all = vec!["run", input.to_str().unwrap(), "-f", chain, "-o", output.to_str().unwrap(), "-q"];
    all.extend_from_slice(args);
    let out = run_vpd(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    decode_all(output)
}

pub fn assert_same_frames(got: &Path, want: &[opencv::core::Mat], what: &str) {
    let got = decode_all(got);
    assert_eq!(got.len(), want.len(), "{what}: frame count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(max_diff(g, w), 0.0, "{what}: frame {i} differs from vpd run's");
    }
}
