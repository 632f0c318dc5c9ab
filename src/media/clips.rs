//! Clips of a live stream, recorded only while a detector fires (`--record-on`).
//!
//! The stream is encoded all the time, and the last `pre_roll` seconds of packets (from the
//! keyframe before them) wait in a ring. When a frame is marked (the detector fired on it), a
//! clip opens with the ring's packets from that keyframe, so it starts up to one keyframe
//! interval before the pre-roll; it goes on while marks come, and closes `post_roll` seconds
//! after the last one. Each clip is a file of its own, named by `strftime` from the pattern at
//! its first frame's wall time, written beside its place and renamed into it whole.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ffmpeg_next::{Packet, Rational, Rescale, codec};
use opencv::core::Mat;
use serde::{Deserialize, Serialize};

use super::codec::{OutputOptions, check_output};
use super::encoder::{Container, Frames, VideoEncoder, ffmpeg_error};
use super::side::SideQueue;
use super::{FrameSink, MediaError, MediaSink, MediaSource};

/// Packet bytes the ring holds at most, whatever the keyframe interval: a keyframe interval
/// far longer than the pre-roll at a high bitrate loses its oldest whole GOPs instead.
const RING_BYTES: usize = 256 << 20;

/// How clips are cut and named.
#[derive(Debug, Clone)]
pub struct ClipSettings {
    /// The clips' path, with `strftime` fields (`cam-%Y%m%d-%H%M%S.mp4`); its extension picks
    /// the container.
    pub pattern: PathBuf,
    /// Seconds kept before the first marked frame.
    pub pre_roll: Duration,
    /// Seconds kept after the last marked frame.
    pub post_roll: Duration,
}

/// One clip written, as the job store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipRecord {
    /// Its place among the job's clips, from 0.
    pub number: u64,
    /// Where it is.
    pub path: PathBuf,
    /// The wall time of its first frame, in milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// Its length, from its first frame's start to its last frame's end.
    pub seconds: f64,
    /// Its frames.
    pub frames: u64,
    /// Its size.
    pub bytes: u64,
}

/// Told of each clip once it is in place.
pub type OnClip = Box<dyn FnMut(&ClipRecord) -> anyhow::Result<()> + Send>;

/// Whether the detector fired, per frame, in the order the frames are written: the feed
/// pushes as it dispatches a frame, the sink pops as it writes one.
#[derive(Default)]
pub struct Marks(Mutex<VecDeque<bool>>);

impl Marks {
    /// Marks the next frame dispatched.
    pub fn push(&self, fired: bool) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_back(fired);
    }

    /// Whether the next frame written was marked (unmarked when none is queued).
    pub fn pop(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front().unwrap_or(false)
    }
}

/// A clip being written.
struct Clip {
    sink: MediaSink,
    path: PathBuf,
    started: SystemTime,
    /// Subtracted from every timestamp: the clip starts at 0.
    offset: i64,
    first_pts: i64,
    last_pts: i64,
    frames: u64,
}

/// Frames in, clips out (a [`FrameSink`] for a live job with `--record-on`).
pub struct ClipSink {
    settings: ClipSettings,
    options: OutputOptions,
    frames: Frames,
    encoder: VideoEncoder,
    parameters: codec::Parameters,
    side: Arc<SideQueue>,
    marks: Arc<Marks>,
    on_clip: OnClip,
    /// The last packets, from a keyframe at or before the pre-roll's start.
    ring: VecDeque<Packet>,
    ring_bytes: usize,
    clip: Option<Clip>,
    /// The last marked frame's timestamp.
    last_mark: Option<i64>,
    clips: u64,
    /// The newest frame's timestamp and when it was written.
    newest: Option<(i64, SystemTime)>,
    /// Packets the encoder gave so far.
    encoded: u64,
}

impl ClipSink {
    /// Opens the encoder for `source`'s frames (at `size` when the filters resize them) and
    /// checks that clips can be written where `settings.pattern` says; `marks` says which
    /// frames the detector fired on.
    pub fn create(
        source: &MediaSource,
        settings: ClipSettings,
        options: &OutputOptions,
        size: Option<(u32, u32)>,
        marks: Arc<Marks>,
        on_clip: OnClip,
    ) -> Result<Self, MediaError> {
        let first = clip_path(&settings.pattern, SystemTime::now(), 0);
        if let Some(dir) = first.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| MediaError::Unwritable { path: dir.to_path_buf(), cause })?;
        }
        super::check_output_path(source.shown(), &first)?;
        check_output(&first, options)?;
        let frames = Frames::sized(source, size);
        let container = Container::of(&first, options)?;
        let encoder = VideoEncoder::open(&frames, options, container, &settings.pattern)?;
        let parameters = codec::Parameters::from(&encoder.encoder);
        Ok(ClipSink {
            settings,
            options: options.clone(),
            frames,
            encoder,
            parameters,
            side: source.side.clone(),
            marks,
            on_clip,
            ring: VecDeque::new(),
            ring_bytes: 0,
            clip: None,
            last_mark: None,
            clips: 0,
            newest: None,
            encoded: 0,
        })
    }

    fn ticks(&self, d: Duration) -> i64 {
        let tb = self.encoder.time_base;
        (d.as_secs_f64() * f64::from(tb.invert())).round() as i64
    }

    /// Keeps `packet` in the ring and writes it to the clip being written, if one is.
    fn take(&mut self, packet: Packet) -> anyhow::Result<()> {
        if let Some(clip) = self.clip.as_mut() {
            clip.write(&packet)?;
        }
        self.ring_bytes += packet.size();
        self.ring.push_back(packet);
        self.trim();
        Ok(())
    }

    /// Drops what the pre-roll no longer needs: everything before the last keyframe at or
    /// before it starts; and whole keyframe intervals while the ring is over [`RING_BYTES`].
    fn trim(&mut self) {
        let Some(newest) = self.ring.back().and_then(Packet::pts) else { return };
        let cutoff = newest - self.ticks(self.settings.pre_roll);
        let keep_from = self.ring.iter().rposition(|p| p.is_key() && p.pts().is_some_and(|t| t <= cutoff));
        let mut drop = keep_from.unwrap_or(0);
        if self.ring_bytes > RING_BYTES {
            // The next keyframe after the first, or everything but the newest packet.
            drop = drop.max(self.ring.iter().skip(1).position(Packet::is_key).map_or(self.ring.len() - 1, |i| i + 1));
        }
        for p in self.ring.drain(..drop) {
            self.ring_bytes -= p.size();
        }
    }

    /// Opens a clip with the ring's packets from its first keyframe.
    fn open_clip(&mut self) -> anyhow::Result<()> {
        let Some(start) = self.ring.iter().position(Packet::is_key) else { return Ok(()) };
        let first = &self.ring[start];
        let first_pts = first.pts().unwrap_or(0);
        let offset = first.dts().unwrap_or(first_pts).min(first_pts);
        // Its first frame's wall time: the newest frame's, less the stream time between them.
        let (newest_pts, newest_at) = self.newest.unwrap_or((first_pts, SystemTime::now()));
        let behind = (newest_pts - first_pts).max(0).rescale(self.encoder.time_base, Rational::new(1, 1_000_000));
        let started = newest_at - Duration::from_micros(behind as u64);
        let path = self.free_path(started);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| MediaError::Unwritable { path: dir.to_path_buf(), cause })?;
        }
        let sink = MediaSink::for_packets(&path, &self.options, self.frames, &self.parameters, self.encoder.time_base)?;
        let mut clip = Clip { sink, path, started, offset, first_pts, last_pts: first_pts, frames: 0 };
        for packet in self.ring.iter().skip(start) {
            clip.write(packet)?;
        }
        tracing::info!(clip = %clip.path.display(), "recording a clip");
        self.clip = Some(clip);
        Ok(())
    }

    /// The pattern's path at `at`, with `-2`, `-3`, … before the extension where a file is
    /// already there (two clips in one second of a pattern without sub-second fields).
    fn free_path(&self, at: SystemTime) -> PathBuf {
        (0..)
            .map(|n| clip_path(&self.settings.pattern, at, n))
            .find(|p| std::fs::symlink_metadata(p).is_err())
            .expect("some suffix is free")
    }

    /// Closes the clip being written: into place, then recorded.
    fn close_clip(&mut self) -> anyhow::Result<()> {
        let Some(clip) = self.clip.take() else { return Ok(()) };
        let step = (f64::from(self.encoder.time_base.invert()) / self.frames.fps).round().max(1.0) as i64;
        let ticks = clip.last_pts - clip.first_pts + step;
        let seconds = ticks as f64 * f64::from(self.encoder.time_base);
        let path = clip.sink.finish()?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let record = ClipRecord {
            number: self.clips,
            path,
            started_ms: clip.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            seconds,
            frames: clip.frames,
            bytes,
        };
        self.clips += 1;
        tracing::info!(clip = %record.path.display(), seconds = format!("{:.2}", record.seconds), frames = record.frames, "clip written");
        (self.on_clip)(&record)
    }

    /// Flushes the encoder into the clip being written, closes it, and says how many clips
    /// were written.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        let mut packets = Vec::new();
        self.encoder.flush(&mut packets).map_err(ffmpeg_error(&self.settings.pattern, "flushing the encoder"))?;
        for packet in packets {
            self.take(packet)?;
        }
        self.close_clip()?;
        Ok(self.clips)
    }
}

impl Clip {
    fn write(&mut self, packet: &Packet) -> Result<(), MediaError> {
        let mut p = packet.clone();
        p.set_pts(packet.pts().map(|t| t - self.offset));
        p.set_dts(packet.dts().map(|t| t - self.offset));
        if let Some(pts) = packet.pts() {
            self.last_pts = self.last_pts.max(pts);
        }
        self.frames += 1;
        self.sink.write_video(vec![p])
    }
}

impl FrameSink for ClipSink {
    fn write(&mut self, frame: &Mat) -> anyhow::Result<()> {
        // A live job copies no other stream: what is queued before the frame is left out.
        let mut others = Vec::new();
        let pts = self.side.take_until_frame(&mut others).flatten();
        let fired = self.marks.pop();
        let mut packets = Vec::new();
        self.encoder.encode(frame, pts, &mut packets)?;
        let at = self.encoder.last_pts().unwrap_or(0);
        self.newest = Some((at, SystemTime::now()));
        for packet in packets {
            self.encoded += 1;
            self.take(packet)?;
        }
        if fired {
            self.last_mark = Some(at);
            if self.clip.is_none() {
                self.open_clip()?;
            }
        }
        let post_roll = self.ticks(self.settings.post_roll);
        if self.clip.is_some() && self.last_mark.is_some_and(|m| at - m > post_roll) {
            self.close_clip()?;
        }
        Ok(())
    }

    fn packets_out(&self) -> Option<u64> {
        Some(self.encoded)
    }
}

/// `pattern` with its `strftime` fields filled in for `at`, in local time; `n` > 0 adds `-N+1`
/// before the extension.
pub fn clip_path(pattern: &Path, at: SystemTime, n: u32) -> PathBuf {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: a zeroed tm is a valid value for localtime_r to fill in.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to locals that outlive the call.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    let raw = pattern.as_os_str().as_bytes();
    let filled = match CString::new(raw) {
        Ok(format) => {
            let mut buf = vec![0u8; raw.len() * 8 + 256];
            // SAFETY: strftime writes at most buf.len() bytes into buf, reading the
            // NUL-terminated format and the tm filled above.
            let len = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), format.as_ptr(), &tm) };
            buf.truncate(len);
            if len == 0 { raw.to_vec() } else { buf }
        }
        Err(_) => raw.to_vec(),
    };
    let path = PathBuf::from(std::ffi::OsString::from_vec(filled));
    if n == 0 {
        return path;
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    match path.extension() {
        Some(ext) => path.with_file_name(format!("{stem}-{}.{}", n + 1, ext.to_string_lossy())),
        None => path.with_file_name(format!("{stem}-{}", n + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_names_fill_in_strftime_fields_and_take_a_suffix_when_taken() {
        // 2026-01-02 03:04:05 UTC; the fields are local time, so only their shape is checked.
        let at = UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        let name = clip_path(Path::new("out/cam-%Y%m%d-%H%M%S.mp4"), at, 0);
        let text = name.to_str().unwrap();
        assert!(text.starts_with("out/cam-2026010"), "{text}");
        assert_eq!(text.len(), "out/cam-20260102-030405.mp4".len(), "{text}");
        assert!(!text.contains('%'), "{text}");
        let again = clip_path(Path::new("out/cam-%Y.mp4"), at, 1);
        assert_eq!(again, Path::new("out/cam-2026-2.mp4"));
        assert_eq!(clip_path(Path::new("plain"), at, 2), Path::new("plain-3"));
    }
}
