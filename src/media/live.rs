//! Live sources and outputs: which inputs are read live, what container a streaming output's
//! URL implies, and how FFmpeg opens a live input. The reading itself is the pipeline's
//! (`pipeline::live`).

use std::path::Path;
use std::time::Duration;

/// URL schemes read as live streams: FFmpeg's network protocols.
const LIVE_SCHEMES: [&str; 11] =
    ["rtsp", "rtsps", "srt", "udp", "rtp", "rtmp", "rtmps", "http", "https", "tcp", "rist"];

/// Whether `input` is a network URL (`scheme://…`) that FFmpeg's protocols read.
pub fn is_url(input: &Path) -> bool {
    scheme(input).is_some()
}

fn scheme(input: &Path) -> Option<String> {
    let text = input.to_str()?;
    let (scheme, _) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    LIVE_SCHEMES.contains(&scheme.as_str()).then_some(scheme)
}

/// Whether `input` is read live without being asked: a network URL or a V4L2 device.
pub fn is_live_input(input: &Path) -> bool {
    is_url(input) || is_capture_device(input)
}

/// Whether `path` is `pipe:N`: a pipe this process holds open as descriptor `N`, as FFmpeg's
/// `pipe` protocol names it. A server's live job reads its client's stream from one and writes
/// its result into another (see [`super::relay`]).
pub fn is_pipe_url(path: &Path) -> bool {
    path.to_str()
        .and_then(|t| t.strip_prefix("pipe:"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The `pipe:N` URL of descriptor `fd`.
pub fn pipe_url(fd: std::os::fd::RawFd) -> std::path::PathBuf {
    format!("pipe:{fd}").into()
}

/// Whether `input` is a video capture device (`/dev/video*`).
pub fn is_capture_device(input: &Path) -> bool {
    input.starts_with("/dev") && input.file_name().is_some_and(|n| n.to_string_lossy().starts_with("video"))
}

/// The container a live output's URL implies when `--format` does not say: MPEG-TS for
/// datagram and byte-stream protocols, FLV for RTMP, RTSP for RTSP; `None` for a file.
pub fn implied_format(output: &Path) -> Option<&'static str> {
    match scheme(output)?.as_str() {
        "udp" | "srt" | "tcp" | "rtp" | "rist" => Some("mpegts"),
        "rtmp" | "rtmps" => Some("flv"),
        "rtsp" | "rtsps" => Some("rtsp"),
        _ => None,
    }
}

/// How long a live input may send nothing before it counts as lost and is opened again.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(5);

/// FFmpeg's options for opening a live input: reads that give up after [`LOSS_TIMEOUT`] (the
/// input is then lost, and opened again; a stop ends them at once through the interrupt
/// callback), no probing of more than a second and none of the probe's packets kept, and for
/// UDP a receive buffer that rides out a scheduling hiccup.
pub(super) fn input_options(input: &Path) -> Vec<(&'static str, String)> {
    let mut options = vec![("probesize", "5000000".into()), ("analyzeduration", "1000000".into())];
    match scheme(input).as_deref() {
        Some("udp") | Some("rtp") => {
            options.push(("fifo_size", "1000000".into()));
            options.push(("overrun_nonfatal", "1".into()));
            options.push(("buffer_size", "8388608".into()));
        }
        Some("rtsp") | Some("rtsps") => options.push(("rtsp_transport", "tcp".into())),
        _ => {}
    }
    if is_url(input) {
        options.push(("rw_timeout", LOSS_TIMEOUT.as_micros().to_string()));
    }
    if is_pipe_url(input) {
        // A relayed stream (NUT: every stream's parameters are in its header): only its rate
        // is left to find, from half a second of frames, and those are not handed over (they
        // are that old by the time the probe ends), as for any live input below.
        return vec![
            ("probesize", "1000000".into()),
            ("analyzeduration", "500000".into()),
            ("fflags", "nobuffer".into()),
        ];
    }
    if is_live_input(input) {
        // What was read while probing the stream is not handed over afterwards: as a burst,
        // those frames were a second old before the first was dispatched. Decoding starts at
        // the first keyframe after the probe instead (BENCHMARKS.md, "Live streams").
        options.push(("fflags", "nobuffer".into()));
    }
    options
}
