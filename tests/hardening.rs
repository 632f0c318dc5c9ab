//! The server, worker and client tried as an attacker and a careless user would (issue 7):
//! each test reproduces one way to crash, starve or exhaust them, and checks it no longer
//! works.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vpd::broker::{Broker, MessageKind};
use vpd::protocol::event::JobEvent;
use vpd::protocol::job::{JobId, JobSpec};
use vpd::protocol::message::{ClientMessage, ErrorCode, ServerMessage};
use vpd::protocol::task::Correlation;

use crate::util::cluster::*;
use crate::util::raw::*;
use crate::util::*;

/// Runs `cmd` to completion within `limit`, killing it past that: a test of "does not hang"
/// must not hang itself.
fn finishes_within(cmd: Command, limit: Duration) -> Result<std::process::Output, String> {
    ends_within(spawn_piped(cmd), limit)
}

/// Waits for `child` (started with its output piped) for at most `limit`, then kills it.
fn ends_within(mut child: ChildGuard, limit: Duration) -> Result<std::process::Output, String> {
    let deadline = Instant::now() + limit;
    while child.0.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let mut err = String::new();
            let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
            return Err(format!("still running after {limit:?}; stderr: {err}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child.0.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    child.0.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
    let status = child.0.wait().unwrap();
    Ok(std::process::Output { status, stdout, stderr })
}

/// A small lossless clip in `dir`.
fn small_clip(dir: &Path, frames: u32) -> PathBuf {
    let input = dir.join("in.mkv");
    write_clip(&input, &ClipSpec { frames, ..ClipSpec::default() }, "FFV1");
    input
}

/// Generates a clip with FFmpeg's own test source: `filter` is a lavfi graph.
fn lavfi_clip(path: &Path, graph: &str, frames: u32, codec: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", graph, "-frames:v", &frames.to_string()])
        .args(codec)
        .arg(path)
        .output()
        .expect("ffmpeg (Debian package ffmpeg) is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Open descriptors of a process.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn running_out_of_descriptors_pauses_accepting_and_never_stops_the_server() {
    const LIMIT: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let input = small_clip(dir.path(), 8);
    let work_dir = dir.path().join("work");
    let mut server = Server::start_in(
        &["--listen", "127.0.0.1:0", "--threads", "1"],
        tempfile::tempdir().unwrap(),
        work_dir,
        |cmd| limit_open_files(cmd, LIMIT),
    );
    let pid = server.child.0.id();
    // More connections than the server has descriptors for, from several addresses so that
    // the per-address cap does not turn them away first. The kernel completes them all.
    let flood: Vec<Raw> =
        (0..120).map(|i| Raw::connect_from(&server.addr(), &format!("127.0.0.{}", 2 + i / 20)).unwrap()).collect();
    assert!(
        wait_for(Duration::from_secs(20), || open_files(pid) as u64 >= LIMIT - 1),
        "the server accepts until its descriptors run out ({} open)",
        open_files(pid)
    );
    assert!(server.child.0.try_wait().is_ok_and(|s| s.is_none()), "the server is still running");
    drop(flood);
    // Descriptors come back; an honest client is served.
    let out = dir.path().join("out.mkv");
    let job = finishes_within(
        client_cmd(&server.addr(), &input, "edges", &out, &["--codec", "ffv1"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(job.status.success(), "{}", stderr(&job));
    assert_eq!(ffprobe(&out).frames, 8);
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("Too many open files"), "the test reached the limit: {log}");
}

#[test]
fn connections_over_the_caps_are_turned_away_at_once() {
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    // Connections past their handshake count against their address's cap (idle ones before
    // it are evicted instead: see the admission tests).
    let held: Vec<Raw> = (0..32)
        .map(|_| {
            let mut raw = Raw::connect_from(&server.addr(), "127.0.0.7").unwrap();
            raw.hello(None);
            assert!(matches!(raw.recv(), Some(ServerMessage::Welcome { .. })));
            raw
        })
        .collect();
    let mut extra = Raw::connect_from(&server.addr(), "127.0.0.7").unwrap();
    let started = Instant::now();
    let (code, message) = extra.expect_error();
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("too many connections from your address"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after the handshake timeout");
    // Another address is served as usual.
    let mut other = Raw::connect_from(&server.addr(), "127.0.0.8").unwrap();
    other.hello(None);
    assert!(matches!(other.recv(), Some(ServerMessage::Welcome { .. })));
    drop(held);
}

#[test]
fn a_work_dir_the_server_did_not_create_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("d");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("keep"), "x").unwrap();

    // A failed start (no broker at that port) leaves it alone.
    let state = dir.path().join("state");
    let out = run_vpd(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--work-dir",
        work.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--amqp",
        "amqp://guest:guest@127.0.0.1:1/%2f",
    ]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(work.join("keep")).unwrap(), "x", "{}", stderr(&out));

    // A crashed server's job files are cleared at start, with a word; the user's file stays.
    std::fs::write(work.join("j0123456789ab.in.mp4"), "left by a crash").unwrap();
    let server_dir = tempfile::tempdir().unwrap();
    let jobs_dir = server_dir.path().join("state").join("jobs");
    let server = Server::start_in(&["--listen", "127.0.0.1:0", "--threads", "1"], server_dir, work.clone(), |_| {});
    assert!(!work.join("j0123456789ab.in.mp4").exists());
    // Files of a job are private to the service user while they exist.
    let mut upload = Raw::connect(&server.addr());
    upload.hello(None);
    assert!(matches!(upload.recv(), Some(ServerMessage::Welcome { .. })));
    upload.send(&submit("edges", 1000));
    assert!(matches!(upload.recv(), Some(ServerMessage::Accepted { .. })));
    upload.chunk(&[0u8; 10]);
    // An upload grows in its job's directory (it outlives a restart, for its client to resume).
    let job_file = || {
        let job = files_in(&jobs_dir).into_iter().next()?;
        Some(jobs_dir.join(job).join("upload.partial")).filter(|p| p.is_file())
    };
    assert!(wait_for(Duration::from_secs(10), || job_file().is_some()), "the upload started");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(job_file().unwrap()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "an upload is the user's video: private");
    drop(upload);
    // A clean stop removes the job's files and nothing else.
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("did not stop cleanly"), "the leftovers were reported: {log}");
    assert_eq!(files_in(&work), ["keep"]);
    assert_eq!(std::fs::read_to_string(work.join("keep")).unwrap(), "x");
}

#[test]
fn a_work_dir_the_server_created_is_private_and_removed() {
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    let work = server.work_dir.clone();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&work).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    // A second server on the same directory would clear the first one's uploads: refused.
    let out = run_vpd(&["server", "--listen", "127.0.0.1:0", "--work-dir", work.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the work directory {} is in use by another vpd server; give this server its own with --work-dir DIR",
            work.display()
        )),
        "{err}"
    );
    // So would a second server on the same state directory: it says which, and how to avoid it.
    let state = server.work_dir.parent().unwrap().join("state");
    let out = run_vpd(&["server", "--listen", "127.0.0.1:0", "--state-dir", state.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(
        err.trim(),
        format!(
            "vpd: the state directory {} is in use by another vpd server; give this server its own with --state-dir DIR",
            state.display()
        )
    );
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!work.exists());
}

#[test]
fn slow_uploaders_and_clients_that_never_read_hold_no_job_slot() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_clip(dir.path(), 8);
    // Noise: its lossless result (megabytes) is far more than socket buffers hold.
    let noisy = dir.path().join("noisy.mkv");
    lavfi_clip(&noisy, "testsrc2=size=640x360:rate=25,noise=alls=80:allf=t+u", 30, &["-c:v", "ffv1"]);
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--max-jobs", "1"]);

    // One trickles its upload: 1 byte of 2 MB, then nothing.
    let mut trickle = Raw::connect(&server.addr());
    trickle.hello(None);
    assert!(matches!(trickle.recv(), Some(ServerMessage::Welcome { .. })));
    trickle.send(&submit("edges", 2 << 20));
    assert!(matches!(trickle.recv(), Some(ServerMessage::Accepted { .. })));
    trickle.chunk(&[0]);

    // One uploads a whole video and never reads a byte of what comes back.
    let mut deaf = Raw::connect_small_buffer(&server.addr());
    deaf.hello(None);
    assert!(matches!(deaf.recv(), Some(ServerMessage::Welcome { .. })));
    let bytes = std::fs::read(&noisy).unwrap();
    deaf.send(&ClientMessage::Submit(Box::new(JobSpec {
        chain: "blur:ksize=3".parse().unwrap(),
        output: vpd::media::OutputOptions { codec: "ffv1".parse().unwrap(), ..Default::default() },
        container: "mkv".into(),
        transport: vpd::protocol::wire::TransportEncoding::Auto,
        split: vpd::protocol::segment::Split::Auto,
        input_name: "noisy.mkv".into(),
        input_bytes: bytes.len() as u64,
        client: String::new(),
        live: None,
    })));
    assert!(matches!(deaf.recv(), Some(ServerMessage::Accepted { .. })));
    for chunk in bytes.chunks(1 << 20) {
        deaf.chunk(chunk);
    }

    // With one job slot, an honest client still gets its job done.
    let out = dir.path().join("out.mkv");
    let job = finishes_within(
        client_cmd(&server.addr(), &input, "edges", &out, &["--codec", "ffv1"]),
        Duration::from_secs(60),
    );
    let job = job.unwrap_or_else(|e| panic!("the honest client was starved: {e}"));
    assert!(job.status.success(), "{}", stderr(&job));
    assert_eq!(ffprobe(&out).frames, 8);
    drop((trickle, deaf));
}

#[test]
fn chains_over_the_limits_are_refused_by_the_server() {
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    let long = vec!["blur:ksize=3"; 4000].join(",");
    for (chain, expected) in [
        (long.as_str(), "a chain of 4000 filters is over the limit of 16"),
        ("blur:ksize=3,,edges", "empty element at position 2"),
        ("blur:ksize=100001", "blur: ksize=100001 is invalid"),
    ] {
        let mut c = Raw::connect(&server.addr());
        c.hello(None);
        assert!(matches!(c.recv(), Some(ServerMessage::Welcome { .. })));
        c.send(&submit(chain, 1000));
        let (code, message) = c.expect_error();
        assert_eq!(code, ErrorCode::BadRequest, "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

/// A task body with any chain at all: what someone who can publish to RabbitMQ can send. The
/// layout mirrors `wire::TaskHeader`, field for field, with a chain that skips validation.
fn forged_task(
    job: &str,
    chain: &[vpd::filters::FilterSpec],
    frame: vpd::protocol::wire::Payload,
    pixels: &[u8],
) -> Vec<u8> {
    use vpd::protocol::wire::{Payload, TransportEncoding, WIRE_VERSION};
    #[derive(serde::Serialize)]
    struct Header<'a> {
        version: u8,
        job: &'a str,
        index: u64,
        chain: &'a [vpd::filters::FilterSpec],
        encoding: TransportEncoding,
        frame: Payload,
        previous: Option<Payload>,
    }
    let header =
        Header { version: WIRE_VERSION, job, index: 0, chain, encoding: TransportEncoding::Raw, frame, previous: None };
    let header = postcard::to_stdvec(&header).unwrap();
    let mut body = (header.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(&header);
    body.extend_from_slice(pixels);
    body
}

/// A tiny JPEG whose frame header claims `width`x`height`: 2 kB that decode to gigabytes.
fn jpeg_bomb(width: u16, height: u16) -> Vec<u8> {
    use opencv::core::{CV_8UC3, Mat, Scalar, Vector};
    let m = Mat::new_rows_cols_with_default(16, 16, CV_8UC3, Scalar::all(90.0)).unwrap();
    let mut buf = Vector::<u8>::new();
    opencv::imgcodecs::imencode(".jpg", &m, &mut buf, &Vector::new()).unwrap();
    let mut jpeg = opencv::prelude::VectorToVec::to_vec(&buf);
    let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

#[test]
fn forged_tasks_cannot_exhaust_a_workers_memory_or_pin_its_threads() {
    use vpd::filters::{BlurParams, FilterSpec};
    use vpd::protocol::wire::{self, Encoder, Payload, PayloadEncoding, ResultOutcome, TaskMeta, TransportEncoding};

    let ns = Namespace::new("forged-tasks");
    let worker = Worker::start(&ns, 1);
    ns.wait_for_workers(1);
    let t = ns.topology();
    let blur = |ksize| FilterSpec::Blur(BlurParams { ksize, sigma: 0.0 });
    runtime().block_on(async {
        let broker = Broker::connect_one(&amqp_url(), "vpd-test-forged").await.unwrap();
        let (reply_to, mut replies) = broker.consume_replies(&t, "jforged").await.unwrap();
        let publisher = broker.publisher().await.unwrap();
        // 2 kB of JPEG announced as an 8x8 frame, that would decode to 30000x30000 (2.7 GB).
        let bomb = jpeg_bomb(30_000, 30_000);
        let small = Payload { width: 8, height: 8, encoding: PayloadEncoding::Jpeg, len: bomb.len() as u64 };
        let body = forged_task("jforged", &[blur(3)], small, &bomb);
        assert!(
            publisher
                .task(&t, MessageKind::Task, &body, &reply_to, &Correlation::new("jforged", 0), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );
        // A 720p frame with a kernel of 100001, and one with 3000 blurs: minutes of CPU each.
        let raw = vec![7u8; 1280 * 720 * 3];
        let hd = Payload { width: 1280, height: 720, encoding: PayloadEncoding::Raw, len: raw.len() as u64 };
        let huge_kernel = forged_task("jforged", &[blur(100_001)], hd, &raw);
        assert!(
            publisher
                .task(&t, MessageKind::Task, &huge_kernel, &reply_to, &Correlation::new("jforged", 1), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );
        let many = forged_task("jforged", &vec![blur(255); 3000], hd, &raw);
        assert!(
            publisher
                .task(&t, MessageKind::Task, &many, &reply_to, &Correlation::new("jforged", 2), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );
        // 51 bytes of raw pixels announced as a 4K frame (25 MB), and 2 kB of JPEG that
        // announces and is an 8192x8192 frame (over the worker's 4K limit).
        let tiny = Payload { width: 3840, height: 2160, encoding: PayloadEncoding::Raw, len: 51 };
        let body = forged_task("jforged", &[blur(3)], tiny, &[0u8; 51]);
        assert!(
            publisher
                .task(&t, MessageKind::Task, &body, &reply_to, &Correlation::new("jforged", 4), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );
        let bomb = jpeg_bomb(8192, 8192);
        let eight_k = Payload { width: 8192, height: 8192, encoding: PayloadEncoding::Jpeg, len: bomb.len() as u64 };
        let body = forged_task("jforged", &[blur(3)], eight_k, &bomb);
        assert!(
            publisher
                .task(&t, MessageKind::Task, &body, &reply_to, &Correlation::new("jforged", 5), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );
        // Then an honest task: its result comes at once, from the one filter thread.
        let chain = "blur:ksize=3".parse().unwrap();
        let frame = opencv::core::Mat::new_rows_cols_with_default(
            32,
            32,
            opencv::core::CV_8UC3,
            opencv::core::Scalar::all(1.0),
        )
        .unwrap();
        let meta = TaskMeta { job: "jforged", index: 3, chain: &chain, encoding: TransportEncoding::Raw };
        let honest = wire::encode_task(&meta, &frame, None, &mut Encoder::new(TransportEncoding::Raw)).unwrap();
        assert!(
            publisher
                .task(&t, MessageKind::Task, &honest, &reply_to, &Correlation::new("jforged", 3), 0)
                .await
                .unwrap()
                .accepted()
                .await
                .unwrap()
        );

        let mut outcomes = std::collections::HashMap::new();
        // The honest task's result, and the refusals of the two forged large frames.
        while ![3, 4, 5].iter().all(|i| outcomes.contains_key(i)) {
            let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
                .await
                .expect("each answer within 30 s: no forged task pinned the worker")
                .unwrap()
                .unwrap();
            let (header, _) = wire::decode_result(&reply.body, None, None).unwrap();
            outcomes.insert(header.index, header.outcome);
        }
        assert!(matches!(outcomes[&3], ResultOutcome::Frame(_)));
        match &outcomes[&4] {
            ResultOutcome::Failed(reason) => assert!(reason.contains("51 bytes for 24883200"), "{reason}"),
            other => panic!("the 51-byte 4K frame is refused from its length: {other:?}"),
        }
        match &outcomes[&5] {
            ResultOutcome::Failed(reason) => {
                assert!(
                    reason.contains("a 8192x8192 frame is over this worker's --max-frame-pixels of 8294400"),
                    "{reason}"
                )
            }
            other => panic!("the 8K frame is over the worker's limit: {other:?}"),
        }
        match &outcomes.get(&0) {
            Some(ResultOutcome::Failed(reason)) => {
                assert!(reason.contains("30000x30000 JPEG announced as 8x8"), "{reason}")
            }
            other => panic!("the bomb is reported as undecodable: {other:?}"),
        }
        broker.close().await;
    });
    // The two forged chains do not even parse: dead-lettered with the bomb.
    assert!(wait_for(Duration::from_secs(10), || ns.stats(&t.dead()).0 == 5), "{:?}", ns.stats(&t.dead()));
    let (_, peak) = memory(worker.child.0.id());
    // No 201 MB zeroed for 51 bytes, no 8K frame decoded (1.1 GB): a worker's own size.
    assert!(peak < 300 << 20, "the worker's peak memory is {} MB", peak >> 20);
}

#[test]
fn a_forged_result_is_refused_and_its_frame_dispatched_again() {
    use vpd::protocol::wire::{Payload, PayloadEncoding, ResultHeader, ResultOutcome, WIRE_VERSION};

    let ns = Namespace::new("forged-result");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 40, ..ClipSpec::default() });
    let server = Server::on_broker(&ns, &[]);
    let out = dir.path().join("out.mkv");
    let job = spawn_piped(client_cmd(&server.addr(), &input, "edges", &out, &["--codec", "ffv1"]));

    // Playing a worker: take frame 0's task, answer it with two bombs, and drop the task.
    let t = ns.topology();
    runtime().block_on(async {
        let broker = Broker::connect_one(&amqp_url(), "vpd-test-forger").await.unwrap();
        let mut tasks = broker.consume_tasks(&t, 1, "forger").await.unwrap();
        let task = tokio::time::timeout(Duration::from_secs(30), tasks.next()).await.expect("a task").unwrap().unwrap();
        let (reply_to, correlation) = (task.reply_to.clone().unwrap(), task.correlation.clone().unwrap());
        let index = correlation.index;
        let bomb = jpeg_bomb(30_000, 30_000);
        // Announced as the job's own 320x240, so only the JPEG's header gives it away.
        let payload = Payload { width: 320, height: 240, encoding: PayloadEncoding::Jpeg, len: bomb.len() as u64 };
        let header = ResultHeader {
            version: WIRE_VERSION,
            job: correlation.job.clone(),
            index,
            worker: "forger".into(),
            filter_us: 1,
            retries: 0,
            outcome: ResultOutcome::Frame(payload),
        };
        let header = postcard::to_stdvec(&header).unwrap();
        let mut body = (header.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&header);
        body.extend_from_slice(&bomb);
        let publisher = broker.publisher().await.unwrap();
        for _ in 0..2 {
            assert!(
                publisher
                    .result(&t, MessageKind::Result, &reply_to, &correlation, &body)
                    .await
                    .unwrap()
                    .accepted()
                    .await
                    .unwrap()
            );
        }
        task.ack().await.unwrap();
        tasks.cancel().await.unwrap();
        broker.close().await;
    });
    // A real worker does the rest, frame 0 included once the server sends it again.
    let _worker = Worker::start(&ns, 1);
    let result = ends_within(job, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("the job stalled after a forged result: {e}"));
    let s = summary(&result);
    assert_eq!((s.frames, s.failed_frames), (40, 0));
    assert!(s.retries >= 1, "frame 0 went out again: {s:?}");
    assert_eq!(ffprobe(&out).frames, 40);
    let (_, peak) = server.memory();
    assert!(peak < 1 << 30, "the server's peak memory is {} MB", peak >> 20);
}

/// Stops `worker`, submits `input` through `edges` to `server` and waits until the job has
/// started: its tasks wait in the queue. Returns the client and the job's id.
fn a_held_job(ns: &Namespace, server: &Server, worker: &Worker, input: &Path, out: &Path) -> (ChildGuard, JobId) {
    let events = Events::subscribe(ns);
    signal(&worker.child.0, libc::SIGSTOP);
    let job = spawn_piped(client_cmd(&server.addr(), input, "edges", out, &["--codec", "ffv1"]));
    let started = events.wait_for(Duration::from_secs(30), "started", |e| matches!(e, JobEvent::Started { .. }));
    let JobEvent::Started { job: id, .. } = started else { unreachable!() };
    (job, id)
}

/// A job's reply queue answers a passive declare from another connection with its counts,
/// rather than closing that channel with RESOURCE_LOCKED: a worker checks a claimed cancel
/// without a channel error, and sees the job's collector there.
#[test]
fn a_reply_queue_can_be_looked_up_from_another_connection() {
    let ns = Namespace::new("reply-lookup");
    let t = ns.topology();
    runtime().block_on(async {
        let server = Broker::connect_one(&amqp_url(), "vpd-test-collector").await.unwrap();
        let (reply_to, _replies) = server.consume_replies(&t, "jlookup").await.unwrap();
        let worker = Broker::connect_one(&amqp_url(), "vpd-test-worker").await.unwrap();
        assert_eq!(worker.queue_stats(&reply_to).await.unwrap(), (0, 1), "one consumer: the job's collector");
        assert!(worker.queue_exists(&reply_to).await.unwrap());
        // No one else can read the job's results.
        assert!(worker.consume_replies(&t, "jlookup").await.is_err(), "a second consumer is refused");
        server.close().await;
        let gone = async {
            while worker.queue_exists(&reply_to).await.unwrap() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the queue goes with its consumer");
        worker.close().await;
    });
}

#[test]
fn a_forged_cancel_does_not_stall_a_job() {
    let ns = Namespace::new("forged-cancel");
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 30, ..ClipSpec::default() });
    let server = Server::on_broker(&ns, &[]);
    let worker = Worker::start(&ns, 1);
    ns.wait_for_workers(1);
    // The worker hears the forged cancel before it sees any of the job's tasks.
    let (job, id) = a_held_job(&ns, &server, &worker, &input, &dir.path().join("out.mkv"));
    runtime().block_on(async {
        let broker = Broker::connect_one(&amqp_url(), "vpd-test-canceller").await.unwrap();
        broker.publisher().await.unwrap().event(&ns.topology(), &JobEvent::Cancelled { job: id }).await.unwrap();
        broker.close().await;
    });
    signal(&worker.child.0, libc::SIGCONT);
    let result = ends_within(job, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the job stalled after a forged cancel: {e}"));
    let s = summary(&result);
    assert_eq!((s.frames, s.failed_frames), (30, 0));
    drop(server);
}

#[test]
fn server_memory_stays_flat_across_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("hd.mp4");
    lavfi_clip(&input, "testsrc2=size=1280x720:rate=30", 120, &["-c:v", "libx264", "-preset", "ultrafast"]);
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "2"]);
    let out = dir.path().join("out.mp4");
    let mut after = Vec::new();
    for _ in 0..24 {
        let job = client_cmd(&server.addr(), &input, "blur", &out, &["-q"]).output().unwrap();
        assert!(job.status.success(), "{}", stderr(&job));
        after.push(server.memory().0 >> 20);
    }
    let (first, last) = (after[0], *after.last().unwrap());
    assert!(last as f64 <= first as f64 * 1.3, "RSS after each job, MB: {after:?}");
}

#[test]
fn the_client_checks_its_output_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_clip(dir.path(), 4);
    // Nothing listens on port 1: had the client connected first, that would be the error.
    let out = run_vpd(&[
        "client",
        input.to_str().unwrap(),
        "--server",
        "127.0.0.1:1",
        "-f",
        "edges",
        "-o",
        "/nonexistent/dir/x.mp4",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim(), "vpd: cannot write /nonexistent/dir/x.mp4: the directory /nonexistent/dir does not exist");
}

#[test]
fn health_and_metrics_answer_while_300_event_streams_are_open() {
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--preview", "127.0.0.1:0"]);
    let base = server.preview.clone().unwrap();
    let host = base.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut streams = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: vpd\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        *statuses.entry(String::from_utf8_lossy(&head[9..12]).into_owned()).or_insert(0) += 1;
        streams.push(s);
    }
    assert_eq!(statuses.get("200"), Some(&256), "{statuses:?}");
    assert_eq!(statuses.get("503"), Some(&44), "{statuses:?}");
    for path in ["healthz", "metrics"] {
        let mut s = TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /{path} HTTP/1.1\r\nHost: vpd\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap_or_else(|e| panic!("/{path} did not answer: {e}"));
        assert!(reply.starts_with("HTTP/1.1 200"), "/{path}: {reply}");
    }
    drop(streams);
}

#[test]
fn errors_name_the_users_file_never_the_servers_paths() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.mp4");
    std::fs::write(&notes, b"these are my notes, not a video").unwrap();
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    let out = run_vpd(&[
        "client",
        notes.to_str().unwrap(),
        "--server",
        &server.addr(),
        "-f",
        "edges",
        "-o",
        dir.path().join("o.mp4").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("notes.mp4: not a video file"), "{err}");
    assert!(!err.contains(server.work_dir.to_str().unwrap()), "{err}");
    assert!(!err.contains(".in."), "no job file name either: {err}");
}

#[test]
fn a_full_disk_fails_the_job_at_once_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("small"), "1m") else {
        // Mounting needs root (CI runs as root); without it there is no small disk to fill.
        assert_ne!(unsafe { libc::geteuid() }, 0, "root can mount a tmpfs");
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let input = dir.path().join("noisy.mkv");
    lavfi_clip(&input, "testsrc2=size=640x360:rate=25,noise=alls=80:allf=t+u", 60, &["-c:v", "ffv1"]);
    let out = run_vpd(&[
        "run",
        input.to_str().unwrap(),
        "-f",
        "blur:ksize=3",
        "-o",
        disk.0.join("out.mkv").to_str().unwrap(),
        "--codec",
        "ffv1",
        "-q",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let frames: u64 = err
        .split("no space left on device after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(frames < 60, "noticed at the frame it happened, not at the end: {err}");
    assert_eq!(files_in(&disk.0), Vec::<String>::new(), "nothing left that looks like output");
}

#[test]
fn an_output_that_is_a_symlink_is_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_clip(dir.path(), 6);
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let link = dir.path().join("link.mkv");
    std::os::unix::fs::symlink("real/out.mkv", &link).unwrap();
    let out = run_vpd(&[
        "run",
        input.to_str().unwrap(),
        "-f",
        "edges",
        "-o",
        link.to_str().unwrap(),
        "--codec",
        "ffv1",
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
    assert_eq!(ffprobe(&dir.path().join("real/out.mkv")).frames, 6);
}

#[test]
fn wrong_tokens_are_answered_ever_more_slowly() {
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--token", "s3cret"]);
    let guess = || {
        let mut c = Raw::connect_from(&server.addr(), "127.0.0.9").unwrap();
        let asked = Instant::now();
        c.hello(Some("guess"));
        assert_eq!(c.expect_error().0, ErrorCode::Unauthorized);
        asked.elapsed()
    };
    let waits: Vec<Duration> = (0..4).map(|_| guess()).collect();
    // 0.2, 0.4, 0.8, 1.6 s: at most a guess or two a second where 3000 took 0.4 s.
    assert!(waits[3] >= Duration::from_millis(1600), "{waits:?}");
    assert!(waits[0] >= Duration::from_millis(200), "{waits:?}");
    // The right token from the same address is not kept waiting for the guesses.
    let mut c = Raw::connect_from(&server.addr(), "127.0.0.9").unwrap();
    c.hello(Some("s3cret"));
    assert!(matches!(c.recv(), Some(ServerMessage::Welcome { .. })));
}

/// With a cluster key, whoever can publish to the broker but lacks the key cannot make workers
/// run work, inject frames into a job, or cancel it: the forgeries are dropped, the job's output
/// is `vpd run`'s, frame for frame.
#[test]
fn with_a_cluster_key_forged_tasks_results_and_cancels_are_dropped() {
    use vpd::protocol::wire::{self, Encoder, ResultMeta, TaskMeta, TransportEncoding};

    let ns = Namespace::new("cluster-key");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef-test-key\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let key_args = ["--cluster-key-file", key.to_str().unwrap()];
    let server = Server::on_broker(&ns, &["--cluster-key-file", key.to_str().unwrap()]);
    let (worker, _) = Worker::with_metrics_and(&ns, 1, &key_args);
    ns.wait_for_workers(1);
    let t = ns.topology(); // no key: what a stranger on the broker has
    let frame = opencv::core::Mat::new_rows_cols_with_default(
        240,
        320,
        opencv::core::CV_8UC3,
        opencv::core::Scalar::all(200.0),
    )
    .unwrap();

    // A task without the key: dead-lettered unopened, never answered.
    runtime().block_on(async {
        let broker = Broker::connect_one(&amqp_url(), "vpd-test-stranger").await.unwrap();
        let (reply_to, _replies) = broker.consume_replies(&t, "jstranger").await.unwrap();
        let chain = "blur:ksize=3".parse().unwrap();
        let meta = TaskMeta { job: "jstranger", index: 0, chain: &chain, encoding: TransportEncoding::Raw };
        let body = wire::encode_task(&meta, &frame, None, &mut Encoder::new(TransportEncoding::Raw)).unwrap();
        let publisher = broker.publisher().await.unwrap();
        let sent = publisher
            .task(&t, MessageKind::Task, &body, &reply_to, &Correlation::new("jstranger", 0), 0)
            .await
            .unwrap();
        assert!(sent.accepted().await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while broker.queue_stats(&t.dead()).await.unwrap().0 != 1 {
            assert!(Instant::now() < deadline, "the forged task was not dead-lettered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(broker.queue_stats(&reply_to).await.unwrap().0, 0, "no worker answered the forged task");
        broker.close().await;
    });

    // A job, held while forged results for every frame and a forged cancel reach it.
    let input = clip(dir.path(), ClipSpec { frames: 20, ..ClipSpec::default() });
    let want = reference(&input, "edges", &dir.path().join("want.mkv"));
    let out = dir.path().join("out.mkv");
    let (job, id) = a_held_job(&ns, &server, &worker, &input, &out);
    runtime().block_on(async {
        let broker = Broker::connect_one(&amqp_url(), "vpd-test-forger").await.unwrap();
        let publisher = broker.publisher().await.unwrap();
        let reply_to = t.reply(id.as_str());
        for index in 0..20 {
            let meta = ResultMeta { job: id.as_str(), index, worker: "forger", filter_us: 1, retries: 0 };
            let body = wire::encode_result(&meta, Ok(&frame), None, &mut Encoder::new(TransportEncoding::Raw)).unwrap();
            let correlation = Correlation::new(id.as_str(), index);
            assert!(
                publisher
                    .result(&t, MessageKind::Result, &reply_to, &correlation, &body)
                    .await
                    .unwrap()
                    .accepted()
                    .await
                    .unwrap()
            );
        }
        publisher.event(&t, &JobEvent::Cancelled { job: id.clone() }).await.unwrap();
        broker.close().await;
    });
    signal(&worker.child.0, libc::SIGCONT);
    let result = ends_within(job, Duration::from_secs(60)).unwrap_or_else(|e| panic!("the job did not end: {e}"));
    assert_eq!(summary(&result).frames, 20);
    assert_same_frames(&out, &want, "a job that forged results were sent to");
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("dropped a message without a valid signature"), "{log}");
}
