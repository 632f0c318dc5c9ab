//! A live stream relayed over a connection: `vpd client LIVE --server` sends its input's video
//! to the server as it comes, and takes the result back as the server encodes it.
//!
//! ```text
//!  client: live input ─demux─▶ packets (copied) ─▶ NUT ─▶ pipe ─▶ chunks ──▶ server: pipe ─▶
//!  live job (decode, filters on threads or workers, encode) ─▶ NUT ─▶ pipe ─▶ chunks ──▶
//!  client: pipe ─▶ NUT ─demux─▶ packets (copied) ─▶ mux ─▶ the output (file, stream, HLS)
//! ```
//!
//! Neither end decodes what it relays: the client copies its input's compressed packets, as a
//! capture device or a camera gives them, and copies the server's encoded packets into its
//! output. NUT carries them both ways because it frames each packet with its size (a reader
//! has it as soon as its last byte arrives, where MPEG-TS hands a packet over only when the
//! next one starts) and holds any codec, raw video from a webcam included. Each end writes
//! every packet out at once (`flush_packets`). FFmpeg reads and writes the pipes through its
//! `pipe:N` protocol; the descriptors stay owned here, and closing a write end is the stream's
//! end for its reader.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ffmpeg_next::{Dictionary, Packet, Rational, Rescale as _, codec, format, media};
use tracing::{debug, warn};

use super::MediaError;
use super::OutputOptions;
use super::convert::Colour;
use super::encoder::Frames;
use super::sink::MediaSink;
use super::source::open_live_input;

/// The container of both directions.
pub const RELAY_FORMAT: &str = "nut";

/// The first pause before opening a lost input again; it doubles up to [`REOPEN_MAX_PAUSE`].
const REOPEN_FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two openings of a lost input.
const REOPEN_MAX_PAUSE: Duration = Duration::from_secs(5);

/// A pipe: its read end and its write end, both closed on exec.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors of the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened by pipe2 and are owned by nobody else.
    Ok(unsafe { (std::os::fd::FromRawFd::from_raw_fd(fds[0]), std::os::fd::FromRawFd::from_raw_fd(fds[1])) })
}

/// When each relayed packet was read, by its presentation time: what the client measures its
/// end-to-end latency against, when the server's packet with the same time comes back (a
/// relayed stream keeps its timeline through the server's job).
#[derive(Default)]
pub struct ReadTimes(Mutex<BTreeMap<i64, Instant>>);

/// Packets whose read time is kept: 40 s at 100 fps, a few hundred kilobytes.
const READ_TIMES_KEPT: usize = 4096;

/// How far apart a packet's time there and back may be (time bases round), in µs.
const SAME_PACKET_US: i64 = 2_000;

impl ReadTimes {
    fn read(&self, pts_us: i64) {
        let mut by_pts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        by_pts.insert(pts_us, Instant::now());
        while by_pts.len() > READ_TIMES_KEPT {
            by_pts.pop_first();
        }
    }

    /// The time since the packet the server's packet at `out_us` came from was read, if it is
    /// known; it and every earlier one are forgotten.
    fn back(&self, out_us: i64) -> Option<Duration> {
        let mut by_pts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let near = by_pts.range(out_us - SAME_PACKET_US..=out_us + SAME_PACKET_US);
        let (&pts, &read) = near.min_by_key(|(p, _)| (**p - out_us).abs())?;
        *by_pts = by_pts.split_off(&(pts + 1));
        Some(read.elapsed())
    }
}

/// A live input opened to relay its video: opened before the job is submitted, so that an
/// input that does not open is an error at once, sent once the server runs the job.
pub struct LiveSender {
    input: std::path::PathBuf,
    source: format::context::Input,
    stop: Arc<AtomicBool>,
}

impl LiveSender {
    /// Opens `input` live; setting `stop` ends the relay, and a read blocked on the network at
    /// once.
    pub fn open(input: &Path, stop: Arc<AtomicBool>) -> Result<Self, MediaError> {
        let source = open_live_input(input, &stop)?;
        if source.streams().best(media::Type::Video).is_none() {
            return Err(MediaError::NoVideoStream(input.to_path_buf()));
        }
        Ok(LiveSender { input: input.to_path_buf(), source, stop })
    }

    /// Copies the video, as it comes, into NUT on `out` (a pipe's write end, closed when this
    /// returns) until the stop is set or the input ends; returns the packets sent. A network
    /// input or a device that is lost is opened again with backoff, each time counted in
    /// `reconnects`, its timestamps going on from where the last opening's stopped. Each
    /// packet's read time goes into `times`.
    pub fn send(self, out: OwnedFd, reconnects: &AtomicU64, times: &ReadTimes) -> Result<u64, MediaError> {
        let LiveSender { input, mut source, stop } = self;
        let shown = input.clone();
        let stream =
            source.streams().best(media::Type::Video).ok_or_else(|| MediaError::NoVideoStream(shown.clone()))?;
        let (mut video, in_tb) = (stream.index(), stream.time_base());
        let rate = stream.avg_frame_rate();
        let parameters = stream.parameters();
        let url = super::live::pipe_url(out.as_raw_fd());
        let ffmpeg = |what: &'static str| {
            let path = shown.clone();
            move |error| MediaError::Ffmpeg { path, what, error }
        };
        let mut muxer = format::output_as(&url, RELAY_FORMAT).map_err(ffmpeg("opening the relay"))?;
        {
            let mut ost = muxer.add_stream(ffmpeg_next::encoder::find(codec::Id::None)).map_err(ffmpeg("relaying"))?;
            ost.set_parameters(parameters);
            // SAFETY: the stream's parameters were just set; a zero tag lets the muxer pick its own.
            unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
            ost.set_time_base(in_tb);
            ost.set_avg_frame_rate(rate);
        }
        let mut header = Dictionary::new();
        header.set("flush_packets", "1");
        muxer.write_header_with(header).map_err(ffmpeg("writing the relay's header"))?;
        let out_tb = muxer.stream(0).expect("the relayed stream").time_base();
        // One frame, in the output's time base: the step from a lost opening's last timestamp.
        let frame = if rate.numerator() > 0 { 1i64.rescale(rate.invert(), out_tb).max(1) } else { 1 };
        let micros = Rational::new(1, 1_000_000);
        let network = super::live::is_url(&input) || super::live::is_capture_device(&input);
        let mut sent = 0;
        // Output timestamp = input timestamp + shift; each opening gets its own shift.
        let (mut shift, mut last): (Option<i64>, Option<i64>) = (None, None);
        let mut tb = in_tb;
        loop {
            let mut packet = Packet::empty();
            match packet.read(&mut source) {
                Ok(()) if packet.stream() == video => {
                    packet.rescale_ts(tb, out_tb);
                    let Some(ts) = packet.dts().or(packet.pts()) else { continue };
                    let shift = *shift.get_or_insert_with(|| last.map_or(0, |l| l + frame) - ts);
                    let (pts, dts) = (packet.pts().map(|t| t + shift), packet.dts().map(|t| t + shift));
                    if last.is_some_and(|l| dts.or(pts).is_some_and(|d| d <= l)) {
                        continue; // a muxer takes timestamps that only go forward
                    }
                    packet.set_pts(pts);
                    packet.set_dts(dts);
                    packet.set_stream(0);
                    packet.set_position(-1);
                    last = dts.or(pts);
                    if let Some(pts) = pts {
                        times.read(pts.rescale(out_tb, micros));
                    }
                    packet.write(&mut muxer).map_err(ffmpeg("relaying the stream"))?;
                    sent += 1;
                }
                Ok(()) => {}
                Err(e) => {
                    if stop.load(Ordering::Relaxed) || !network {
                        debug!(error = %e, "the live input ended");
                        break;
                    }
                    warn!(input = %input.display(), error = %e, "the live input was lost; opening it again");
                    let Some(fresh) = reopen(&input, &stop) else { break };
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    let Some((v, t)) = fresh.streams().best(media::Type::Video).map(|s| (s.index(), s.time_base()))
                    else {
                        break;
                    };
                    (video, tb, shift, source) = (v, t, None, fresh);
                }
            }
        }
        muxer.write_trailer().map_err(ffmpeg("ending the relay"))?;
        drop(muxer);
        drop(out);
        Ok(sent)
    }
}

/// `input` opened again, with backoff, until it opens or `stop` is set.
fn reopen(input: &Path, stop: &Arc<AtomicBool>) -> Option<format::context::Input> {
    let mut pause = REOPEN_FIRST_PAUSE;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(pause);
        match open_live_input(input, stop) {
            Ok(fresh) => return Some(fresh),
            Err(e) => debug!(error = %e, "opening the live input again failed"),
        }
        pause = (pause * 2).min(REOPEN_MAX_PAUSE);
    }
    None
}

/// Copies the relayed stream that arrives on `from` (a pipe's read end) into `target`, as
/// [`MediaSink`] writes any output: a file appears whole when the stream ends, a stream URL or
/// an HLS playlist is written as it comes. Each packet's time from its read at the sender
/// (`times`) to its write here goes to `back`. Set, `abandon` leaves a file output unwritten
/// when the stream ends (the job failed). Returns the packets written.
pub fn receive_live(
    from: OwnedFd,
    target: &Path,
    options: &OutputOptions,
    times: &ReadTimes,
    back: &mut dyn FnMut(Duration),
    abandon: &AtomicBool,
) -> Result<u64, MediaError> {
    super::init();
    let url = super::live::pipe_url(from.as_raw_fd());
    let shown = target.to_path_buf();
    let ffmpeg = |what: &'static str| {
        let path = shown.clone();
        move |error| MediaError::Ffmpeg { path, what, error }
    };
    let mut options_in = Dictionary::new();
    // The header says everything a copy needs: read no further before the first packet.
    options_in.set("probesize", "32");
    options_in.set("analyzeduration", "1");
    let mut input = format::input_with_dictionary(&url, options_in).map_err(ffmpeg("reading the server's stream"))?;
    let stream = input.streams().best(media::Type::Video).ok_or_else(|| MediaError::NoVideoStream(url.clone()))?;
    let (video, time_base, parameters) = (stream.index(), stream.time_base(), stream.parameters());
    let rate = match stream.avg_frame_rate() {
        r if r.numerator() > 0 => r,
        _ => stream.rate(),
    };
    let fps = if rate.numerator() > 0 { f64::from(rate) } else { 25.0 };
    // SAFETY: the parameters are the stream's own, alive as long as the input.
    let (width, height, aspect) = unsafe {
        let p = &*parameters.as_ptr();
        (p.width.max(0) as u32, p.height.max(0) as u32, p.sample_aspect_ratio)
    };
    let frames = Frames {
        width,
        height,
        fps,
        time_base,
        rate: if rate.numerator() > 0 { rate } else { Rational::new(25, 1) },
        colour: Colour { space: ffmpeg_next::color::Space::Unspecified, range: ffmpeg_next::color::Range::Unspecified },
        primaries: ffmpeg_next::color::Primaries::Unspecified,
        transfer: ffmpeg_next::color::TransferCharacteristic::Unspecified,
        aspect_ratio: Rational::from(aspect),
        live: true,
    };
    let mut sink = MediaSink::for_packets(target, options, frames, &parameters, time_base)?;
    let mut written = 0;
    loop {
        let mut packet = Packet::empty();
        match packet.read(&mut input) {
            Ok(()) if packet.stream() == video => {
                let pts = packet.pts().map(|t| t.rescale(time_base, Rational::new(1, 1_000_000)));
                sink.write_video(vec![packet])?;
                written += 1;
                if let Some(latency) = pts.and_then(|t| times.back(t)) {
                    back(latency);
                }
            }
            Ok(()) => {}
            Err(ffmpeg_next::Error::Eof) => break,
            Err(error) => return Err(MediaError::Ffmpeg { path: url, what: "reading the server's stream", error }),
        }
    }
    if abandon.load(Ordering::Relaxed) {
        return Err(MediaError::Io {
            path: target.to_path_buf(),
            cause: std::io::Error::other("the job ended in error; its output is left unwritten"),
        });
    }
    sink.finish()?;
    drop(input);
    drop(from);
    Ok(written)
}
