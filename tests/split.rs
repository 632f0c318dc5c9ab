//! Segment mode over the real RabbitMQ: `vpd server` cuts the upload into segments of packets,
//! `vpd worker`s decode, filter and encode them, and the joined output decodes to the frames
//! `vpd run` gives with the same segment length, audio included; workers killed mid-segment,
//! segments too large for a message, and inputs that cannot be cut.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::cluster::*;
use crate::util::*;

/// `frames` frames of `w`x`h` H.264 at 25 fps with up to 3 B-frames, a keyframe every 20
/// frames (so that 1 s segments start inside GOPs and their frames are reordered), and AAC.
fn h264_with_audio(dir: &Path, frames: u32, (w, h): (u32, u32)) -> PathBuf {
    let path = dir.join(format!("in-{frames}-{w}.mp4"));
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={w}x{h}:rate=25,noise=alls=20:allf=t"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-frames:v", &frames.to_string(), "-c:v", "libx264", "-g", "20", "-bf", "3", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-shortest"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

fn same(got: &Path, want: &[opencv::core::Mat], what: &str) {
    let got = decode_all(got);
    assert_eq!(got.len(), want.len(), "{what}: frame count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(max_diff(g, w), 0.0, "{what}: frame {i} differs from vpd run's");
    }
}

fn segment_server(ns: &Namespace, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--amqp", &amqp_url_static(), "--namespace", &ns.name];
    args.extend(["--segment-seconds", "1"]);
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// [`amqp_url`], kept for the life of the test process (server arguments borrow it).
fn amqp_url_static() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(amqp_url)
}

#[test]
fn segment_mode_gives_the_frames_and_audio_of_vpd_run() {
    let ns = Namespace::new("segsame");
    let dir = tempfile::tempdir().unwrap();
    let input = h264_with_audio(dir.path(), 90, (320, 240));
    let server = segment_server(&ns, &[]);
    let _workers = [Worker::start(&ns, 1), Worker::start(&ns, 1)];
    ns.wait_for_workers(2);
    // `motion` needs the true previous frame at every boundary; FFV1 keeps what the filters made.
    for (chain, codec, container) in [("motion,edges", "h264", "mp4"), ("motion", "ffv1", "mkv")] {
        let reference = dir.path().join(format!("run.{container}"));
        let want = reference_in_segments(&input, chain, &reference, codec);
        assert_eq!(want.len(), 90);
        let output = dir.path().join(format!("seg.{container}"));
        // (`client` asks for FFV1 in .mkv.)
        let codec_args: &[&str] = if container == "mp4" { &["--codec", "h264"] } else { &[] };
        let s =
            summary(&client(&server.addr(), &input, chain, &output, &[&["--split", "segments"], codec_args].concat()));
        assert_eq!((s.frames, s.failed_frames), (90, 0), "{chain}");
        assert_eq!(s.split.as_deref(), Some("segments"), "{chain}");
        assert_eq!(s.split_why.as_deref(), Some("--split segments: 4 segments of 25 frames"));
        assert_eq!(s.workers.values().sum::<u64>(), 90, "{chain}: {:?}", s.workers);
        same(&output, &want, &format!("{chain} in {codec}, segment mode"));
        assert_eq!(audio_md5(&output), audio_md5(&reference), "{chain}: the audio, muxed once");
        // Compressed packets, not pixels: about the input's size (`motion` also takes the
        // frames from a keyframe to each segment's previous one), far below the raw frames.
        let (raw, file) = (90 * 320 * 240 * 3, std::fs::metadata(&input).unwrap().len());
        assert!(
            s.wire_bytes_sent < 2 * file && 4 * file < raw,
            "sent {} bytes of a {file}-byte input",
            s.wire_bytes_sent
        );
    }
    // `auto` (the default) takes segments for 4 of them, frames for fewer than 3.
    let s = summary(&client(&server.addr(), &input, "edges", &dir.path().join("auto.mp4"), &[]));
    assert_eq!((s.split.as_deref(), s.split_why.as_deref()), (Some("segments"), Some("auto: 4 segments of 25 frames")));
    let short = h264_with_audio(dir.path(), 40, (320, 240));
    let s = summary(&client(&server.addr(), &short, "edges", &dir.path().join("short.mp4"), &[]));
    assert_eq!(
        (s.split.as_deref(), s.split_why.as_deref()),
        (Some("frames"), Some("auto: 2 segment(s) of 25 frames, fewer than 3"))
    );
    // A raw H.264 stream has no timestamps to cut by: frame mode, saying why.
    let raw = dir.path().join("in.h264");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&input)
        .args(["-map", "0:v", "-c", "copy"])
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = summary(&client(&server.addr(), &raw, "edges", &dir.path().join("raw.mp4"), &["--split", "segments"]));
    assert_eq!(s.frames, 90);
    assert_eq!(
        (s.split.as_deref(), s.split_why.as_deref()),
        (Some("frames"), Some("the video cannot be cut as packets: some video packets have no timestamp"))
    );
}

#[test]
fn killing_a_worker_mid_segment_loses_nothing() {
    let ns = Namespace::new("segkill");
    let dir = tempfile::tempdir().unwrap();
    let input = h264_with_audio(dir.path(), 125, (640, 480));
    let chain = "blur:ksize=51,motion";
    let want = reference_in_segments(&input, chain, &dir.path().join("run.mkv"), "ffv1");
    let server = segment_server(&ns, &[]);
    let mut doomed = Worker::start(&ns, 1);
    ns.wait_for_workers(1);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let mut survivor = None;
    let job = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, chain, &output, &["--split", "segments"]));
        // Five frames into its first segment (workers say so every five): kill -9, mid-segment.
        events.wait_for_progress(5);
        signal(&doomed.child.0, libc::SIGKILL);
        let _ = doomed.child.0.wait();
        survivor = Some(Worker::start(&ns, 1));
        job.join().unwrap()
    });
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames, s.split.as_deref()), (125, 0, Some("segments")));
    assert!(s.retries >= 1, "the segment the killed worker held was redelivered and counted: {s:?}");
    drop(survivor);
    same(&output, &want, "after kill -9 mid-segment");
}

#[test]
fn a_segment_over_the_message_limit_goes_by_reference() {
    let ns = Namespace::new("segbig");
    let dir = tempfile::tempdir().unwrap();
    let input = h264_with_audio(dir.path(), 75, (640, 480));
    let chain = "motion,edges";
    let want = reference_in_segments(&input, chain, &dir.path().join("run.mkv"), "ffv1");
    // 64 KiB: every segment of this noisy 640x480 video is larger, so each goes on a stream of
    // its own in 64 KiB parts, and its task says where.
    let server = segment_server(&ns, &["--max-message", "65536"]);
    let _workers = [Worker::start(&ns, 1), Worker::start(&ns, 1)];
    ns.wait_for_workers(2);
    let output = dir.path().join("out.mkv");
    let s = summary(&client(&server.addr(), &input, chain, &output, &["--split", "segments"]));
    assert_eq!((s.frames, s.failed_frames, s.split.as_deref()), (75, 0, Some("segments")));
    // Compressed packets, not frames: the streams' bytes count as sent.
    let file = std::fs::metadata(&input).unwrap().len();
    assert!((file / 2..3 * file).contains(&s.wire_bytes_sent), "sent {} of a {file}-byte input", s.wire_bytes_sent);
    same(&output, &want, "segments by reference");
    // Each stream went once its segment was committed.
    if can_cut_connections() {
        let queues = Command::new("rabbitmqctl").args(["list_queues", "-q", "name"]).output().unwrap();
        let left: Vec<String> = String::from_utf8_lossy(&queues.stdout)
            .lines()
            .filter(|q| q.starts_with(&format!("{}.blob.", ns.name)))
            .map(str::to_string)
            .collect();
        assert!(left.is_empty(), "streams left behind: {left:?}");
    }
}

#[test]
fn a_segment_that_keeps_failing_is_done_frame_by_frame() {
    let ns = Namespace::new("segfail");
    let dir = tempfile::tempdir().unwrap();
    let input = h264_with_audio(dir.path(), 75, (320, 240));
    let server = segment_server(&ns, &[]);
    // The worker takes no frame this large: every segment fails on it, then every frame.
    let _worker = Worker::start_with(&ns, &["--max-frame-pixels", "1000"]);
    ns.wait_for_workers(1);
    let output = dir.path().join("out.mkv");
    let s = summary(&client(&server.addr(), &input, "edges", &output, &["--split", "segments"]));
    // Frame by frame, each frame then failed alone and was written as it was.
    assert_eq!((s.frames, s.failed_frames, s.split.as_deref()), (75, 75, Some("segments")));
    // As the input, through the same conversions (`blur:ksize=1` changes nothing).
    let unfiltered = reference_in_segments(&input, "blur:ksize=1", &dir.path().join("run.mkv"), "ffv1");
    same(&output, &unfiltered, "frames written unfiltered only after failing alone");
}

/// Two network namespaces, each joined to this one by a veth pair with addresses private to
/// the test, and a broker user of the test's own; all removed when dropped.
struct Hosts {
    names: Vec<String>,
    user: String,
}

impl Hosts {
    /// `None` where namespaces cannot be made here (no CAP_NET_ADMIN, no `ip`, no `rabbitmqctl`).
    fn make(count: usize) -> Option<Hosts> {
        let tag = std::process::id() % 100_000;
        let probe = format!("vpdp{tag}");
        let made = Command::new("ip").args(["netns", "add", &probe]).output().ok()?;
        if !made.status.success() {
            return None;
        }
        let _ = Command::new("ip").args(["netns", "del", &probe]).output();
        let user = format!("vpdtest{tag}");
        let ctl = |args: &[&str]| Command::new("rabbitmqctl").args(args).output().ok().filter(|o| o.status.success());
        ctl(&["add_user", &user, "not-guest"])?;
        let mut hosts = Hosts { names: Vec::new(), user };
        ctl(&["set_permissions", "-p", "/", &hosts.user, ".*", ".*", ".*"])?;
        let net = 200 + tag % 50;
        for k in 0..count {
            let name = format!("vpdn{tag}{k}");
            let (outside, inside) = (format!("vpdo{tag}{k}"), format!("vpdi{tag}{k}"));
            let (host_ip, ns_ip) = (format!("10.{net}.{k}.1"), format!("10.{net}.{k}.2"));
            hosts.names.push(name.clone());
            let steps: Vec<Vec<String>> = vec![
                vec!["netns".into(), "add".into(), name.clone()],
                vec![
                    "link".into(),
                    "add".into(),
                    outside.clone(),
                    "type".into(),
                    "veth".into(),
                    "peer".into(),
                    "name".into(),
                    inside.clone(),
                ],
                vec!["link".into(), "set".into(), inside.clone(), "netns".into(), name.clone()],
                vec!["addr".into(), "add".into(), format!("{host_ip}/30"), "dev".into(), outside.clone()],
                vec!["link".into(), "set".into(), outside.clone(), "up".into()],
                vec![
                    "-n".into(),
                    name.clone(),
                    "addr".into(),
                    "add".into(),
                    format!("{ns_ip}/30"),
                    "dev".into(),
                    inside.clone(),
                ],
                vec!["-n".into(), name.clone(), "link".into(), "set".into(), inside.clone(), "up".into()],
            ];
            for step in steps {
                let out = Command::new("ip").args(&step).output().unwrap();
                assert!(out.status.success(), "ip {step:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            // RabbitMQ here listens on loopback only: a relay on this side of the veth carries the
            // namespace's connections to it. The workers reach it only across the veth (their own
            // loopback is down), as a broker's address.
            forward(&format!("{host_ip}:5672"), "127.0.0.1:5672");
        }
        Some(hosts)
    }

    /// The broker's URL from namespace `k`, as the test's user.
    fn amqp(&self, k: usize) -> String {
        let net = 200 + (std::process::id() % 100_000) % 50;
        format!("amqp://{}:not-guest@10.{net}.{k}.1:5672/%2f", self.user)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth inside it, and so its peer.
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        let _ = Command::new("rabbitmqctl").args(["delete_user", &self.user]).output();
    }
}

/// Relays every connection to `from` to `to`, for as long as the test runs.
fn forward(from: &str, to: &str) {
    let listener = std::net::TcpListener::bind(from).unwrap_or_else(|e| panic!("binding {from}: {e}"));
    let to = to.to_string();
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            let Ok(outbound) = std::net::TcpStream::connect(&to) else { continue };
            relay(inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            relay(outbound, inbound);
        }
    });
}

/// Copies what `from` reads to `to` on a thread of its own, until `from` ends.
fn relay(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

#[test]
fn workers_on_hosts_of_their_own_give_the_same_frames() {
    let Some(hosts) = Hosts::make(2) else {
        eprintln!("skipped: making network namespaces needs CAP_NET_ADMIN, `ip` and `rabbitmqctl`");
        return;
    };
    let ns = Namespace::new("seghosts");
    let dir = tempfile::tempdir().unwrap();
    let input = h264_with_audio(dir.path(), 100, (320, 240));
    let chain = "motion,edges";
    let want = reference_in_segments(&input, chain, &dir.path().join("run.mkv"), "ffv1");
    let server = segment_server(&ns, &[]);
    let workers: Vec<ChildGuard> = (0..2)
        .map(|k| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &hosts.names[k]]).arg(vpd().get_program());
            cmd.args(["worker", "--amqp", &hosts.amqp(k), "--namespace", &ns.name, "--threads", "1"]);
            cmd.env_remove("VPD_CONFIG").env_remove("RUST_LOG").stdin(Stdio::null());
            ChildGuard(
                cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starting a worker in a namespace"),
            )
        })
        .collect();
    ns.wait_for_workers(2);
    let output = dir.path().join("out.mkv");
    let s = summary(&client(&server.addr(), &input, chain, &output, &["--split", "segments"]));
    assert_eq!((s.frames, s.failed_frames, s.split.as_deref()), (100, 0, Some("segments")));
    assert_eq!(s.workers.len(), 2, "both workers took segments: {:?}", s.workers);
    drop(workers);
    same(&output, &want, "workers in network namespaces");
}
