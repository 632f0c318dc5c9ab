//! The bad-input catalogue: every way a user, a client or a stranger on the network can hand vpd
//! something wrong, in one table, against `vpd run`, `vpd client` → a real server, the raw
//! protocol and the server's HTTP side. Each case asserts its exit or error code and its one-line
//! message (never a panic), that it leaves no output or temporary file, and that the server still
//! serves an honest job afterwards. Inputs that look odd but are valid (odd sizes, 10-bit,
//! variable rate, rotated, a device as output) must work, and are in the table too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vpd::protocol::message::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};

use crate::util::cluster::*;
use crate::util::raw::*;
use crate::util::*;

const TOKEN: &str = "s3cret";

/// Where a case writes its output.
#[derive(Clone, Copy)]
enum Out {
    /// A file of this name in the case's (empty) output directory.
    Named(&'static str),
    /// The case's output directory itself.
    Dir,
    /// This path, as it is.
    Path(&'static str),
    /// A file in a missing directory.
    MissingDir,
    /// A file in a read-only directory.
    ReadOnly,
    /// The input itself.
    Input,
}

/// What a case does.
enum Act {
    /// `vpd run INPUT ARGS -o OUT`.
    Run(&'static str, &'static [&'static str], Out),
    /// `vpd client INPUT ARGS -o OUT` against the catalogue's server.
    Client(&'static str, &'static [&'static str], Out),
    /// A hand-written protocol conversation; returns the server's last word.
    Raw(fn(&mut Raw) -> Option<(ErrorCode, String)>),
    /// Raw bytes to the dashboard's port; the answer's status line is checked.
    Http(&'static [u8]),
}

/// What must come of it.
enum Expect {
    /// This exit code, and one line on stderr containing this.
    Exit(i32, &'static str),
    /// Success: the output holds this many frames of this size.
    Works { frames: u64, size: (u32, u32) },
    /// This protocol error code, with a message containing this.
    Code(ErrorCode, &'static str),
    /// The connection just ends (the peer left): nothing to answer.
    Dropped,
    /// This HTTP status.
    Status(u16),
}

struct Case {
    name: &'static str,
    act: Act,
    expect: Expect,
}

/// Everything the catalogue's cases share: their inputs and one server.
struct Fixture {
    dir: tempfile::TempDir,
    server: Server,
    preview: String,
    small: PathBuf,
}

impl Fixture {
    fn input(&self, name: &str) -> PathBuf {
        self.dir.path().join("in").join(name)
    }

    fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-nostdin"])
        .args(args)
        .arg(out)
        .status()
        .expect("ffmpeg (Debian package ffmpeg) is installed");
    assert!(status.success(), "ffmpeg could not make {}", out.display());
}

/// A YUV4MPEG2 file whose header says `width`x`height`, with `frames` frames of data (none
/// when the header lies about a size too large to write).
fn y4m(path: &Path, width: u32, height: u32, frames: usize) {
    let mut bytes = format!("YUV4MPEG2 W{width} H{height} F24:1 Ip A1:1 C420jpeg\n").into_bytes();
    let plane = (width * height + 2 * width.div_ceil(2) * height.div_ceil(2)) as usize;
    for i in 0..frames {
        bytes.extend_from_slice(b"FRAME\n");
        bytes.extend(std::iter::repeat_n((i * 40) as u8, plane));
    }
    if frames == 0 {
        bytes.extend_from_slice(b"FRAME\n");
        bytes.extend_from_slice(&[0u8; 4096]);
    }
    std::fs::write(path, bytes).unwrap();
}

/// The first `fraction` of a file's bytes, as a download cut off there would leave it.
fn cut(from: &Path, to: &Path, fraction: f64) {
    let bytes = std::fs::read(from).unwrap();
    std::fs::write(to, &bytes[..(bytes.len() as f64 * fraction) as usize]).unwrap();
}

fn make_inputs(d: &Path) {
    std::fs::create_dir_all(d).unwrap();
    let lavfi = |graph: &str| ["-f".to_string(), "lavfi".into(), "-i".into(), graph.into()];
    let src = lavfi("testsrc2=size=320x240:rate=24");
    let src: Vec<&str> = src.iter().map(String::as_str).collect();
    let x264 = ["-c:v", "libx264", "-preset", "ultrafast"];
    ffmpeg(&[&src[..], &["-frames:v", "24"], &x264[..], &["-pix_fmt", "yuv420p"]].concat(), &d.join("good.mp4"));
    ffmpeg(&[&src[..], &["-frames:v", "24", "-c:v", "ffv1"]].concat(), &d.join("good.mkv"));
    ffmpeg(
        &[&src[..], &["-frames:v", "24"], &x264[..], &["-pix_fmt", "yuv420p", "-movflags", "+faststart"]].concat(),
        &d.join("front.mp4"),
    );
    std::fs::write(d.join("notes.mp4"), "these are not the frames you are looking for\n").unwrap();
    std::fs::write(d.join("empty.mp4"), "").unwrap();
    std::fs::create_dir(d.join("folder.mp4")).unwrap();
    for (name, fraction) in [("cut20.mkv", 0.2), ("cut50.mkv", 0.5), ("cut90.mkv", 0.9)] {
        cut(&d.join("good.mkv"), &d.join(name), fraction);
    }
    // The index at the front, the frames cut off behind it.
    cut(&d.join("front.mp4"), &d.join("front-cut.mp4"), 0.5);
    // The index at the end (FFmpeg's default), cut off: the frames are there, the map is not.
    cut(&d.join("good.mp4"), &d.join("no-index.mp4"), 0.97);
    ffmpeg(&["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac"], &d.join("audio.m4a"));
    y4m(&d.join("one.y4m"), 1, 1, 3);
    y4m(&d.join("huge.y4m"), 16384, 16384, 0);
    // Valid, if unusual: each must work.
    write_clip(&d.join("odd.mkv"), &ClipSpec { frames: 12, width: 321, height: 243, ..ClipSpec::default() }, "ffv1");
    ffmpeg(&[&src[..], &["-frames:v", "12"], &x264[..], &["-pix_fmt", "yuv420p10le"]].concat(), &d.join("ten.mp4"));
    ffmpeg(
        &[&src[..], &["-frames:v", "24", "-vf", "setpts='if(lt(N,12),N,N*3)/24/TB'", "-fps_mode", "vfr"], &x264[..]]
            .concat(),
        &d.join("vfr.mp4"),
    );
    ffmpeg(
        &["-i", d.join("good.mp4").to_str().unwrap(), "-c", "copy", "-metadata:s:v:0", "rotate=90"],
        &d.join("rot.mp4"),
    );
}

fn cases() -> Vec<Case> {
    use Act::*;
    use Expect::*;
    let c = |name, act, expect| Case { name, act, expect };
    let edges: &[&str] = &["-f", "edges"];
    let mut cases = Vec::new();
    // Inputs: the same file through `vpd run` and through a client to the server.
    let inputs: [(&str, &str, Expect, Expect); 14] = [
        ("missing.mp4", "missing", Exit(1, "missing.mp4: no such file"), Exit(1, "missing.mp4: no such file")),
        ("empty.mp4", "empty", Exit(1, "empty.mp4: the file is empty"), Exit(1, "empty.mp4: the file is empty")),
        (
            "folder.mp4",
            "a directory",
            Exit(1, "folder.mp4: not a regular file or a pipe"),
            Exit(1, "folder.mp4: not a regular file or a pipe"),
        ),
        (
            "notes.mp4",
            "not a video",
            Exit(1, "notes.mp4: not a video file"),
            Exit(1, "(bad_input): notes.mp4: not a video file"),
        ),
        (
            "cut20.mkv",
            "cut at 20 %",
            Exit(1, "cut20.mkv: truncated or corrupt"),
            Exit(1, "(bad_input): cut20.mkv: truncated or corrupt"),
        ),
        (
            "cut50.mkv",
            "cut at 50 %",
            Exit(1, "cut50.mkv: truncated or corrupt"),
            Exit(1, "(bad_input): cut50.mkv: truncated or corrupt"),
        ),
        (
            "cut90.mkv",
            "cut at 90 %",
            Exit(1, "cut90.mkv: truncated or corrupt"),
            Exit(1, "(bad_input): cut90.mkv: truncated or corrupt"),
        ),
        (
            "front-cut.mp4",
            "an MP4 cut behind its index",
            Exit(1, "front-cut.mp4: truncated or corrupt"),
            Exit(1, "(bad_input): front-cut.mp4: truncated or corrupt"),
        ),
        (
            "no-index.mp4",
            "an MP4 whose index is cut off",
            Exit(1, "no-index.mp4: not a video file (or a truncated one)"),
            Exit(1, "(bad_input): no-index.mp4: not a video file (or a truncated one)"),
        ),
        (
            "audio.m4a",
            "audio only",
            Exit(1, "audio.m4a: has no video stream"),
            Exit(1, "(bad_input): audio.m4a: has no video stream"),
        ),
        (
            "one.y4m",
            "a 1x1 video",
            Exit(1, "1x1 frames are too small for yuv420p, which needs at least 2x2"),
            Exit(1, "1x1 frames are too small for yuv420p, which needs at least 2x2"),
        ),
        (
            "huge.y4m",
            "a 16384x16384 header",
            Exit(1, "huge.y4m: not a video file"),
            Exit(1, "(bad_input): huge.y4m: not a video file"),
        ),
        ("ten.mp4", "10-bit", Works { frames: 12, size: (320, 240) }, Works { frames: 12, size: (320, 240) }),
        (
            "vfr.mp4",
            "a variable frame rate",
            Works { frames: 24, size: (320, 240) },
            Works { frames: 24, size: (320, 240) },
        ),
    ];
    for (file, what, run, client) in inputs {
        let name: &'static str = what;
        let out = Out::Named("o.mp4");
        cases.push(c(name, Run(file, edges, out), run));
        cases.push(c(name, Client(file, edges, out), client));
    }
    let odd: &[&str] = &["-f", "edges", "--codec", "ffv1"];
    cases.push(c(
        "an odd size (lossless keeps it)",
        Run("odd.mkv", odd, Out::Named("o.mkv")),
        Works { frames: 12, size: (321, 243) },
    ));
    cases.push(c(
        "an odd size (lossless keeps it)",
        Client("odd.mkv", odd, Out::Named("o.mkv")),
        Works { frames: 12, size: (321, 243) },
    ));
    cases.push(c(
        "an odd size in 4:2:0",
        Run("odd.mkv", edges, Out::Named("o.mp4")),
        Works { frames: 12, size: (320, 242) },
    ));
    cases.push(c("rotated", Run("rot.mp4", edges, Out::Named("o.mkv")), Works { frames: 24, size: (240, 320) }));
    cases.push(c("rotated", Client("rot.mp4", edges, Out::Named("o.mp4")), Works { frames: 24, size: (240, 320) }));
    // Chains, presets and codecs: usage errors, found before any frame is read or sent.
    let chains: [(&str, &'static [&'static str], &str); 6] = [
        (
            "an unknown filter",
            &["-f", "vignette"],
            "unknown filter 'vignette' (known filters: blur, edges, faces, motion, denoise, sharpen, grade, scale)",
        ),
        ("a bad parameter", &["-f", "blur:ksize=4"], "blur: ksize=4 is invalid: expected an odd integer from 1 to 255"),
        ("a negative threshold", &["-f", "edges:low=-3"], "edges: low=-3 is invalid"),
        (
            "an unknown parameter",
            &["-f", "edges,motion:speed=2"],
            "motion: unknown parameter 'speed' (allowed: threshold, min_area, dilate)",
        ),
        ("an unknown preset", &["--preset", "vintage"], "unknown preset 'vintage'"),
        ("an unknown codec", &["-f", "edges", "--codec", "theora9"], "theora9"),
    ];
    for (name, args, message) in chains {
        cases.push(c(name, Run("good.mp4", args, Out::Named("o.mp4")), Exit(2, message)));
        cases.push(c(name, Client("good.mp4", args, Out::Named("o.mp4")), Exit(2, message)));
    }
    cases.push(c(
        "a codec the container cannot hold",
        Run("good.mp4", &["-f", "edges", "--codec", "ffv1"], Out::Named("o.mp4")),
        Exit(1, "the mp4 container cannot hold codec ffv1"),
    ));
    cases.push(c(
        "a container FFmpeg does not know",
        Client("good.mp4", edges, Out::Named("o.xyz")),
        Exit(1, "o.xyz: FFmpeg writes no container of that name"),
    ));
    cases.push(c(
        "a codec the container cannot hold (webm)",
        Client("good.mp4", edges, Out::Named("o.webm")),
        Exit(1, "the webm container cannot hold codec h264"),
    ));
    cases.push(c(
        "a container FFmpeg does not know",
        Run("good.mp4", edges, Out::Named("o.xyz")),
        Exit(1, "o.xyz: FFmpeg writes no container of that name"),
    ));
    cases.push(c(
        "a missing face cascade",
        Run("good.mp4", &["-f", "faces", "--face-cascade", "/nonexistent/cascade.xml"], Out::Named("o.mp4")),
        Exit(1, "cannot load the face cascade"),
    ));
    // Outputs.
    for (name, out, message) in [
        ("output in a missing directory", Out::MissingDir, "does not exist"),
        ("output equal to the input", Out::Input, "good.mp4: the output would overwrite the input"),
        ("a read-only output directory", Out::ReadOnly, "is not writable"),
    ] {
        cases.push(c(name, Run("good.mp4", edges, out), Exit(1, message)));
        cases.push(c(name, Client("good.mp4", edges, out), Exit(1, message)));
    }
    let mkv: &[&str] = &["-f", "edges", "--format", "matroska"];
    cases.push(c(
        "output to /dev/full",
        Run("good.mp4", mkv, Out::Path("/dev/full")),
        Exit(1, "/dev/full: no space left on device"),
    ));
    cases.push(c("output to /dev/full", Client("good.mp4", mkv, Out::Path("/dev/full")), Exit(1, "writing /dev/full")));
    cases.push(c(
        "output to /dev/null",
        Run("good.mp4", mkv, Out::Path("/dev/null")),
        Works { frames: 0, size: (0, 0) },
    ));
    cases.push(c(
        "output to /dev/null",
        Client("good.mp4", mkv, Out::Path("/dev/null")),
        Works { frames: 0, size: (0, 0) },
    ));
    cases.push(c(
        "output to a directory (a batch of one)",
        Run("good.mkv", edges, Out::Dir),
        Works { frames: 24, size: (320, 240) },
    ));
    // The raw protocol.
    cases.push(c(
        "garbage bytes (an HTTP request)",
        Raw(|c| {
            c.0.write_all(b"GET / HTTP/1.1\r\nHost: vpd\r\n\r\n").unwrap();
            Some(c.expect_error())
        }),
        Code(ErrorCode::BadRequest, ""),
    ));
    cases.push(c(
        "garbage bytes (a frame of an unknown kind)",
        Raw(|c| {
            c.frame(77, &[0xde, 0xad, 0xbe, 0xef]);
            Some(c.expect_error())
        }),
        Code(ErrorCode::BadRequest, ""),
    ));
    cases.push(c(
        "a control message that is not JSON",
        Raw(|c| {
            c.frame(1, b"{\"type\": \"hello\", \"protocol\": ");
            Some(c.expect_error())
        }),
        Code(ErrorCode::BadRequest, ""),
    ));
    cases.push(c(
        "a huge declared length",
        Raw(|c| {
            c.0.write_all(&[0xff, 0xff, 0xff, 0xfe, 2]).unwrap();
            Some(c.expect_error())
        }),
        Code(ErrorCode::TooLarge, ""),
    ));
    cases.push(c(
        "a wrong token",
        Raw(|c| {
            c.hello(Some("guess"));
            Some(c.expect_error())
        }),
        Code(ErrorCode::Unauthorized, "missing or wrong token"),
    ));
    cases.push(c(
        "no token",
        Raw(|c| {
            c.hello(None);
            Some(c.expect_error())
        }),
        Code(ErrorCode::Unauthorized, "missing or wrong token"),
    ));
    cases.push(c(
        "a wrong version",
        Raw(|c| {
            c.send(&ClientMessage::Hello { protocol: PROTOCOL_VERSION + 1, client: "future".into(), token: None });
            Some(c.expect_error())
        }),
        Code(ErrorCode::VersionMismatch, "this server speaks 9"),
    ));
    cases.push(c(
        "a chunk before any submit",
        Raw(|c| {
            c.hello(Some(TOKEN));
            c.recv();
            c.chunk(&[0u8; 100]);
            Some(c.expect_error())
        }),
        Code(ErrorCode::BadRequest, ""),
    ));
    cases.push(c(
        "an unknown filter in a submit",
        Raw(|c| {
            c.hello(Some(TOKEN));
            c.recv();
            c.send(&submit("vignette", 100));
            Some(c.expect_error())
        }),
        Code(ErrorCode::BadRequest, "unknown filter 'vignette'"),
    ));
    cases.push(c(
        "an upload past the limit",
        Raw(|c| {
            c.hello(Some(TOKEN));
            c.recv();
            c.send(&submit("edges", 3 << 20));
            Some(c.expect_error())
        }),
        Code(ErrorCode::TooLarge, ""),
    ));
    cases.push(c(
        "more bytes than the submit declared",
        Raw(|c| {
            c.hello(Some(TOKEN));
            c.recv();
            c.send(&submit("edges", 1000));
            assert!(matches!(c.recv(), Some(ServerMessage::Accepted { .. })));
            c.chunk(&[0u8; 1500]);
            Some(c.expect_error())
        }),
        Code(ErrorCode::BadRequest, ""),
    ));
    cases.push(c(
        "a disconnect mid-upload",
        Raw(|c| {
            c.hello(Some(TOKEN));
            c.recv();
            c.send(&submit("edges", 100_000));
            assert!(matches!(c.recv(), Some(ServerMessage::Accepted { .. })));
            c.chunk(&[0u8; 10_000]);
            None
        }),
        Dropped,
    ));
    cases.push(c(
        "a client that never says hello",
        Raw(|c| Some(c.expect_error())),
        Code(ErrorCode::Timeout, "no hello within 10 s"),
    ));
    // The dashboard's HTTP side.
    for (name, request, status) in [
        ("an unknown path", &b"GET /nope HTTP/1.1\r\nHost: vpd\r\n\r\n"[..], 404),
        ("the job list without a token", b"GET /jobs HTTP/1.1\r\nHost: vpd\r\n\r\n", 401),
        ("the event stream without a token", b"GET /events HTTP/1.1\r\nHost: vpd\r\n\r\n", 401),
        ("a wrong token", b"GET /jobs HTTP/1.1\r\nHost: vpd\r\nAuthorization: Bearer guess\r\n\r\n", 401),
        ("an unknown job", b"GET /jobs/no-such-job HTTP/1.1\r\nHost: vpd\r\nAuthorization: Bearer s3cret\r\n\r\n", 404),
        (
            "an unknown job's thumbnail",
            b"GET /jobs/no-such-job/frame.jpg HTTP/1.1\r\nHost: vpd\r\nCookie: vpd_token=s3cret\r\n\r\n",
            404,
        ),
        ("a path out of the site", b"GET /../../etc/passwd HTTP/1.1\r\nHost: vpd\r\n\r\n", 404),
        ("a POST", b"POST /jobs HTTP/1.1\r\nHost: vpd\r\nContent-Length: 2\r\n\r\n{}", 405),
        ("a malformed request line", b"HELLO THERE\r\n\r\n", 400),
    ] {
        cases.push(c(name, Http(request), Status(status)));
    }
    cases.push(c("a header of 1 MB", Http(Box::leak(huge_header().into_boxed_slice())), Status(431)));
    cases
}

fn huge_header() -> Vec<u8> {
    let mut r = b"GET / HTTP/1.1\r\nHost: vpd\r\nX-Pad: ".to_vec();
    r.extend(std::iter::repeat_n(b'a', 1 << 20));
    r.extend_from_slice(b"\r\n\r\n");
    r
}

/// Text that would mean a panic or a debug dump reached the user.
fn assert_plain(what: &str, text: &str) {
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "Error {", "Os {"] {
        assert!(!text.contains(bad), "{what}: {bad:?} in {text:?}");
    }
}

/// The status code of the HTTP answer to `request`, or of the connection's end.
fn http_status(base: &str, request: &[u8]) -> u16 {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before it has read a large request whole.
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&answer);
    line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no status line in {line:?}"))
}

/// An honest client's job, after each case.
fn still_serves(f: &Fixture) {
    let out = f.dir.path().join("honest.mkv");
    let r = run_vpd(&[
        "client",
        f.small.to_str().unwrap(),
        "--server",
        &f.server.addr(),
        "-f",
        "edges",
        "-o",
        out.to_str().unwrap(),
        "--codec",
        "ffv1",
        "--token",
        TOKEN,
        "-q",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(ffprobe(&out).frames, 4);
    std::fs::remove_file(out).unwrap();
}

/// A read-only directory, even for root: a read-only mount where this test may mount,
/// permissions otherwise.
struct ReadOnlyDir {
    path: PathBuf,
    mounted: bool,
}

impl ReadOnlyDir {
    fn new(path: PathBuf) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(&path)
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        ReadOnlyDir { path, mounted }
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }
}

fn argv(f: &Fixture, role: &str, input: &str, args: &[&str], out: Out, read_only: &Path) -> (Vec<String>, PathBuf) {
    let input = f.input(input);
    let output = match out {
        Out::Named(name) => f.out_dir().join(name),
        Out::Dir => f.out_dir(),
        Out::Path(p) => PathBuf::from(p),
        Out::MissingDir => f.dir.path().join("nowhere").join("o.mp4"),
        Out::ReadOnly => read_only.join("o.mp4"),
        Out::Input => input.clone(),
    };
    let mut v = vec![role.to_string(), input.to_str().unwrap().to_string()];
    v.extend(args.iter().map(|a| a.to_string()));
    v.extend(["-o".to_string(), output.to_str().unwrap().to_string()]);
    if role == "client" {
        v.extend(["--server".to_string(), f.server.addr(), "--token".into(), TOKEN.into()]);
    }
    (v, output)
}

#[test]
fn every_bad_input_gets_a_clear_error_leaves_nothing_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    make_inputs(&dir.path().join("in"));
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let small = dir.path().join("small.mkv");
    write_clip(&small, &ClipSpec { frames: 4, width: 160, height: 120, ..ClipSpec::default() }, "ffv1");
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--token",
        TOKEN,
        "--max-upload",
        "2M",
        "--preview",
        "127.0.0.1:0",
    ]);
    let preview = server.preview.clone().unwrap();
    let f = Fixture { dir, server, preview, small };
    let read_only = ReadOnlyDir::new(f.dir.path().join("read-only"));
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in &cases {
        let label = |via: &str| format!("{} (via {via})", case.name);
        match (&case.act, &case.expect) {
            (Act::Run(input, args, out) | Act::Client(input, args, out), expect) => {
                let role = if matches!(case.act, Act::Run(..)) { "run" } else { "client" };
                let what = label(role);
                let (argv, output) = argv(&f, role, input, args, *out, &read_only.path);
                let result = vpd().args(&argv).arg("-q").stdin(std::process::Stdio::null()).output().unwrap();
                let err = stderr(&result);
                assert_plain(&what, &err);
                match expect {
                    Expect::Exit(code, message) => {
                        assert_eq!(result.status.code(), Some(*code), "{what}: {err}");
                        // A usage error is clap's: `error: …`, then its hint where to read more.
                        let lines: Vec<&str> = err
                            .lines()
                            .filter(|l| {
                                !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage: ")
                            })
                            .collect();
                        assert_eq!(lines.len(), 1, "{what}: one line, got {err:?}");
                        let prefix = if *code == 2 { "error: " } else { "vpd: " };
                        assert!(
                            lines[0].starts_with(prefix) && lines[0].contains(message),
                            "{what}: expected {prefix}…{message:?}, got {err:?}"
                        );
                    }
                    Expect::Works { frames, size } => {
                        assert!(result.status.success(), "{what}: {err}");
                        if output.starts_with("/dev") {
                            use std::os::unix::fs::FileTypeExt;
                            let t = std::fs::metadata(&output).unwrap().file_type();
                            assert!(t.is_char_device(), "{what}: {} is no longer a device", output.display());
                        } else {
                            let file = if output.is_dir() { output.join(input) } else { output.clone() };
                            let p = ffprobe(&file);
                            assert_eq!((p.frames, (p.width, p.height)), (*frames, *size), "{what}");
                            std::fs::remove_file(file).unwrap();
                        }
                    }
                    _ => unreachable!("{what}: a command ends with an exit code"),
                }
                let left = files_in(&f.out_dir());
                assert!(left.is_empty(), "{what} left {left:?}");
                assert!(partial_files(&f.input("")).is_empty(), "{what} left partial files beside the input");
                assert!(!f.dir.path().join("nowhere").exists(), "{what}");
                assert!(files_in(&read_only.path).is_empty(), "{what}");
            }
            (Act::Raw(talk), expect) => {
                let what = label("the protocol");
                let mut c = Raw::connect(&f.server.addr());
                match (talk(&mut c), expect) {
                    (Some((code, message)), Expect::Code(want, fragment)) => {
                        assert_eq!(code, *want, "{what}: {message}");
                        assert!(message.contains(fragment), "{what}: expected {fragment:?}, got {message:?}");
                        assert!(!message.is_empty() && !message.contains('\n'), "{what}: {message:?}");
                        assert_plain(&what, &message);
                    }
                    (None, Expect::Dropped) => drop(c),
                    (got, _) => panic!("{what}: got {got:?}"),
                }
            }
            (Act::Http(request), Expect::Status(status)) => {
                assert_eq!(http_status(&f.preview, request), *status, "{}", label("HTTP"));
            }
            _ => unreachable!("{}: the table pairs each act with what it can end in", case.name),
        }
        // Whatever the case began, the server removes: uploads, results, partial files.
        assert!(
            wait_for(Duration::from_secs(10), || files_in(&f.server.work_dir).is_empty()),
            "{}: the server kept {:?}",
            case.name,
            files_in(&f.server.work_dir)
        );
        still_serves(&f);
    }
    drop(read_only);
    let (code, err) = f.server.stop();
    assert_eq!(code, Some(0), "{err}");
    assert_plain("the server's log", &err);
}

/// The security settings' files, wrong: each stops the start with one line naming the file and
/// what is wrong with it, before the server makes its work directory.
#[test]
fn bad_certificates_tokens_and_keys_stop_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    std::fs::write(d.join("not.pem"), "not a certificate\n").unwrap();
    std::fs::write(d.join("short.toml"), "[[client]]\nname = \"a\"\ntoken = \"short\"\n").unwrap();
    std::fs::write(
        d.join("unknown.toml"),
        "[[client]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nrole = \"root\"\n",
    )
    .unwrap();
    std::fs::write(d.join("short.key"), "short\n").unwrap();
    let work = p("work");
    let server = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["server", "--listen", "127.0.0.1:0", "--work-dir", &work].map(String::from).to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let client = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["client", "/etc/hostname", "-f", "edges", "-o", &p("o.mp4")].map(String::from).to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (
            server(&["--tls-cert", &p("not.pem"), "--tls-key", &p("not.pem")]),
            1,
            format!("{}: no certificate in the file", p("not.pem")),
        ),
        (server(&["--tls-cert", &p("not.pem")]), 2, "--tls-key".into()),
        (
            server(&["--tokens-file", &p("missing.toml")]),
            1,
            format!("cannot read the tokens file {}", p("missing.toml")),
        ),
        (server(&["--tokens-file", &p("short.toml")]), 1, "client 'a': its token is shorter than 16 characters".into()),
        (server(&["--tokens-file", &p("unknown.toml")]), 1, "unknown variant `root`".into()),
        (server(&["--token", "x", "--tokens-file", &p("short.toml")]), 2, "--tokens-file".into()),
        (
            server(&["--amqp", "amqp://127.0.0.1:1", "--cluster-key-file", &p("short.key")]),
            1,
            "the cluster key has 5 bytes; it needs 32 or more".into(),
        ),
        (client(&["--tls-fingerprint", "abc"]), 2, "'abc' is not a SHA-256 fingerprint".into()),
        (client(&["--tls-ca", &p("not.pem")]), 1, format!("{}: no CA certificate in the file", p("not.pem"))),
        (client(&["--tls-ca", &p("not.pem"), "--tls-fingerprint", &"AB".repeat(32)]), 2, "--tls-ca".into()),
    ];
    for (args, code, message) in cases {
        let out = vpd().args(&args).stdin(std::process::Stdio::null()).output().unwrap();
        let err = stderr(&out);
        assert_plain(&format!("{args:?}"), &err);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        if code == 2 {
            // A usage error is clap's, in clap's form (a missing flag is listed on the next line).
            assert!(err.starts_with("error: ") && err.contains(&message), "{args:?}: expected {message:?} in {err:?}");
        } else {
            // Warnings about a file's mode may come first; the error is one line.
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("vpd: ")).collect();
            assert_eq!(errors.len(), 1, "{args:?}: {err}");
            assert!(errors[0].contains(&message), "{args:?}: expected {message:?} in {err:?}");
        }
        assert!(!Path::new(&work).exists() && !d.join("o.mp4").exists(), "{args:?} left files behind");
    }
}
