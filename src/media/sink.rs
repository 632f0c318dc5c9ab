//! The muxer: encoded video (from [`super::encoder`], or packets already encoded: a join of
//! segments) and the input's other streams, copied or re-encoded, into a file that appears at
//! its path only when complete, or into a pipe.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ffmpeg_next::codec;
use ffmpeg_next::util::color;
use ffmpeg_next::{Dictionary, Packet, Rational, encoder, format};
use opencv::core::Mat;
use tracing::warn;

use super::FrameSink;
use super::audio::AudioTranscoder;
use super::codec::{OutputOptions, check_output, container_holds};
use super::convert::Colour;
use super::encoder::{Container, Frames, VideoEncoder, even_where_needed, ffmpeg_error};
use super::output::{is_stream_target, temp_path};
use super::side::SideQueue;
use super::{MediaError, MediaSource, STDIO};
use crate::files::RemoveOnDrop;

/// Where a copied input stream goes.
struct Copied {
    output: usize,
    from: Rational,
    to: Rational,
    /// Re-encoded on the way (the container cannot hold its codec); `from` is then the
    /// encoder's time base.
    transcoder: Option<Box<AudioTranscoder>>,
}

/// The output being written.
pub struct MediaSink {
    output: format::context::Output,
    /// The output as the user named it (`-` for standard output).
    shown: PathBuf,
    /// The temporary file and where it goes when complete; none for a pipe.
    files: Option<(PathBuf, PathBuf)>,
    /// Frames in, packets out; none when the video comes encoded ([`MediaSink::join`]).
    encoder: Option<VideoEncoder>,
    /// The time base of the video packets written: the encoder's, or the segments'.
    packet_tb: Rational,
    video_tb: Rational,
    side: Arc<SideQueue>,
    copied: Vec<Option<Copied>>,
    written: u64,
    packets: u64,
    committed: bool,
}

/// Where a [`MediaSink`]'s video comes from.
enum Video<'a> {
    /// Frames, encoded by the sink.
    Encode,
    /// Packets already encoded, with these parameters and in this time base.
    Copy { parameters: &'a codec::Parameters, time_base: Rational },
}

/// Adds to `output` each stream of `source` that is copied: as it is where the container holds
/// its codec, re-encoded where it is audio the container cannot hold, else left out (and said
/// so). One entry per input stream, `None` for those not written.
fn copy_streams(
    output: &mut format::context::Output,
    source: &MediaSource,
    muxer: &format::Output,
    global_header: bool,
    shown: &Path,
) -> Result<Vec<Option<Copied>>, MediaError> {
    let mut copied = Vec::new();
    for stream in source.input.streams() {
        let index = stream.index();
        if !source.copied.get(index).copied().unwrap_or(false) {
            copied.push(None);
            continue;
        }
        let id = stream.parameters().id();
        if !container_holds(muxer, id) {
            copied.push(transcode_stream(output, &stream, muxer, global_header, shown)?);
            continue;
        }
        let mut ost =
            output.add_stream(encoder::find(codec::Id::None)).map_err(ffmpeg_error(shown, "adding a stream"))?;
        ost.set_parameters(stream.parameters());
        // SAFETY: the stream's parameters were just set; a zero tag lets the muxer pick its own.
        unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
        ost.set_time_base(stream.time_base());
        ost.set_metadata(stream.metadata().to_owned());
        copied.push(Some(Copied {
            output: ost.index(),
            from: stream.time_base(),
            to: stream.time_base(),
            transcoder: None,
        }));
    }
    Ok(copied)
}

/// A stream the container cannot hold: audio is re-encoded to the container's own audio codec
/// (AAC into WebM becomes Opus); anything else is left out. Either way, says so, naming it.
fn transcode_stream(
    output: &mut format::context::Output,
    stream: &format::stream::Stream<'_>,
    muxer: &format::Output,
    global_header: bool,
    shown: &Path,
) -> Result<Option<Copied>, MediaError> {
    let (index, id) = (stream.index(), stream.parameters().id());
    let target = muxer.codec(&PathBuf::from("x"), ffmpeg_next::media::Type::Audio);
    let transcoder = if stream.parameters().medium() == ffmpeg_next::media::Type::Audio && target != codec::Id::None {
        AudioTranscoder::new(stream, target, global_header).ok().flatten()
    } else {
        None
    };
    let Some(transcoder) = transcoder else {
        warn!("a {} file cannot hold stream #{index} ({}); it is left out", muxer.name(), id.name());
        return Ok(None);
    };
    warn!(
        "a {} file cannot hold stream #{index} ({}): re-encoding it ({})",
        muxer.name(),
        id.name(),
        transcoder.describe
    );
    let mut ost = output.add_stream(encoder::find(codec::Id::None)).map_err(ffmpeg_error(shown, "adding a stream"))?;
    ost.set_parameters(transcoder.encoder());
    let tb = transcoder.encoder().time_base();
    ost.set_time_base(tb);
    ost.set_metadata(stream.metadata().to_owned());
    Ok(Some(Copied { output: ost.index(), from: tb, to: tb, transcoder: Some(Box::new(transcoder)) }))
}

/// The input's own metadata (less its encoder's name) and chapters, onto `output`.
fn copy_metadata(output: &mut format::context::Output, source: &MediaSource, shown: &Path) -> Result<(), MediaError> {
    output.set_metadata(without_encoder(source.input.metadata().to_owned()));
    for chapter in source.input.chapters() {
        let title = chapter.metadata().get("title").unwrap_or_default().to_string();
        output
            .add_chapter(chapter.id(), chapter.time_base(), chapter.start(), chapter.end(), title)
            .map_err(ffmpeg_error(shown, "copying chapters"))?;
    }
    Ok(())
}

impl MediaSink {
    /// Opens the encoder and the muxer for `target` (checked with [`super::check_output_path`]),
    /// taking the streams to copy, metadata and chapters from `source`.
    /// `size` is the frames' size when the filters change it.
    pub fn create(
        source: &MediaSource,
        target: &Path,
        options: &OutputOptions,
        size: Option<(u32, u32)>,
    ) -> Result<Self, MediaError> {
        let frames = Frames::sized(source, size);
        Self::open(frames, Some(source), target, options, Video::Encode)
    }

    /// A sink for video already encoded into `parameters` (a segmented output's segments,
    /// joined), with `source`'s other streams, metadata and chapters: the packets
    /// come through [`MediaSink::write_video`] in `time_base`, the other streams' through
    /// [`MediaSink::write_other`].
    pub(super) fn join(
        source: &MediaSource,
        target: &Path,
        options: &OutputOptions,
        parameters: &codec::Parameters,
        time_base: Rational,
        size: Option<(u32, u32)>,
    ) -> Result<Self, MediaError> {
        let frames = Frames::sized(source, size);
        Self::open(frames, Some(source), target, options, Video::Copy { parameters, time_base })
    }

    /// A sink for video already encoded into `parameters` (in `time_base`), alone: a clip of a
    /// live stream, its packets through [`MediaSink::write_video`].
    pub(super) fn for_packets(
        target: &Path,
        options: &OutputOptions,
        frames: Frames,
        parameters: &codec::Parameters,
        time_base: Rational,
    ) -> Result<Self, MediaError> {
        Self::open(frames, None, target, options, Video::Copy { parameters, time_base })
    }

    /// A sink for frames made rather than decoded (`width`x`height` BGR at `fps`): no other
    /// streams, timestamps one frame apart.
    pub fn for_frames(
        target: &Path,
        options: &OutputOptions,
        width: u32,
        height: u32,
        fps: f64,
    ) -> Result<Self, MediaError> {
        super::init();
        let rate = Rational::from(fps);
        let frames = Frames {
            width,
            height,
            fps,
            time_base: rate.invert(),
            rate,
            colour: Colour { space: color::Space::BT709, range: color::Range::MPEG },
            primaries: color::Primaries::BT709,
            transfer: color::TransferCharacteristic::BT709,
            aspect_ratio: Rational::new(1, 1),
            live: false,
        };
        Self::open(frames, None, target, options, Video::Encode)
    }

    fn open(
        f: Frames,
        source: Option<&MediaSource>,
        target: &Path,
        options: &OutputOptions,
        video: Video<'_>,
    ) -> Result<Self, MediaError> {
        let muxer = check_output(target, options)?;
        let stdout = target == Path::new(STDIO);
        // An HLS playlist is rewritten in place as its segments come, beside it.
        let playlist = target.extension().is_some_and(|e| e.eq_ignore_ascii_case("m3u8"));
        let pipe = stdout || playlist || is_stream_target(target);
        let (url, files) = if stdout {
            (PathBuf::from("pipe:1"), None)
        } else if pipe {
            (target.to_path_buf(), None)
        } else {
            let temp = temp_path(target);
            (temp.clone(), Some((temp, target.to_path_buf())))
        };
        let shown = target.to_path_buf();
        let mut output = format::output_as(&url, muxer.name()).map_err(|cause| match cause {
            ffmpeg_next::Error::Other { errno } => {
                MediaError::Unwritable { path: shown.clone(), cause: std::io::Error::from_raw_os_error(errno) }
            }
            error => MediaError::Ffmpeg { path: shown.clone(), what: "opening the output", error },
        })?;
        // From here the temporary file exists: a failure below must remove it.
        let guard = files.as_ref().map(|(temp, _)| RemoveOnDrop::new(temp.clone()));

        let container = Container::of_muxer(&output.format());
        let global_header = container.global_header;
        let (encoder, params, packet_tb) = match video {
            Video::Encode => {
                even_where_needed(&f, options, &shown)?;
                let e = VideoEncoder::open(&f, options, container, &shown)?;
                let params = codec::Parameters::from(&e.encoder);
                let tb = e.time_base;
                (Some(e), params, tb)
            }
            Video::Copy { parameters, time_base } => (None, parameters.clone(), time_base),
        };

        // The video stream: the encoder's parameters and the input's metadata (its frames were
        // turned upright as they were decoded: no display matrix).
        {
            let mut ost = output
                .add_stream(encoder::find(codec::Id::None))
                .map_err(ffmpeg_error(&shown, "adding the video stream"))?;
            ost.set_parameters(params);
            // SAFETY: the stream's parameters were just set; a zero tag lets the muxer pick its own.
            unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
            ost.set_time_base(packet_tb);
            if let Some(input_stream) = source.and_then(|s| s.input.stream(s.video)) {
                ost.set_metadata(without_encoder(input_stream.metadata().to_owned()));
            }
        }
        // Every other stream the container can hold, copied as it is.
        let mut copied = match source {
            Some(source) => copy_streams(&mut output, source, &muxer, global_header, &shown)?,
            None => Vec::new(),
        };
        if let Some(source) = source {
            copy_metadata(&mut output, source, &shown)?;
        }

        let mut header = Dictionary::new();
        if matches!(muxer.name(), "mp4" | "mov" | "ipod" | "3gp") {
            // A file: the index goes to the front, so a browser plays it while it downloads. A
            // pipe cannot be rewritten: fragments instead.
            header.set("movflags", if pipe { "frag_keyframe+empty_moov+default_base_moof" } else { "+faststart" });
        }
        if stdout || is_stream_target(target) {
            // A reader waits on the other end: each packet goes out as it is written, not when
            // FFmpeg's 32 KiB buffer fills (several frames of a live stream).
            header.set("flush_packets", "1");
        }
        if muxer.name() == "hls" {
            // A rolling playlist: six segments of about two seconds (one keyframe interval each
            // in a live job), the older ones removed as they leave it.
            header.set("hls_time", "2");
            header.set("hls_list_size", "6");
            header.set("hls_flags", "delete_segments+independent_segments");
        }
        output.write_header_with(header).map_err(|e| write_error(&shown, e, 0))?;
        let video_tb = output.stream(0).expect("the video stream").time_base();
        for c in copied.iter_mut().flatten() {
            c.to = output.stream(c.output).expect("an added stream").time_base();
        }
        if let Some(guard) = guard {
            guard.keep(); // the sink removes it from now on, unless it is committed
        }
        Ok(MediaSink {
            output,
            shown,
            files,
            encoder,
            packet_tb,
            video_tb,
            side: source.map_or_else(|| Arc::new(SideQueue::default()), |s| s.side.clone()),
            copied,
            written: 0,
            packets: 0,
            committed: false,
        })
    }

    /// The encoded frame size (none for a sink that only muxes).
    pub fn size(&self) -> Option<(u32, u32)> {
        self.encoder.as_ref().map(|e| e.size)
    }

    /// Writes a packet of the input's other streams (its `stream()` the input's index):
    /// copied, or re-encoded where the container needs it.
    pub(super) fn write_other(&mut self, packet: Packet) -> Result<(), MediaError> {
        let index = packet.stream();
        let Some(Some(c)) = self.copied.get_mut(index) else { return Ok(()) };
        let packets = match c.transcoder.as_mut() {
            Some(t) => t.transcode(Some(&packet)).map_err(ffmpeg_error(&self.shown, "re-encoding audio"))?,
            None => vec![packet],
        };
        self.write_packets(index, packets)
    }

    /// Writes packets of input stream `index`'s output stream.
    fn write_packets(&mut self, index: usize, packets: Vec<Packet>) -> Result<(), MediaError> {
        let Some(Some(c)) = self.copied.get(index) else { return Ok(()) };
        let (from, to, output) = (c.from, c.to, c.output);
        for mut packet in packets {
            packet.rescale_ts(from, to);
            packet.set_stream(output);
            packet.set_position(-1);
            packet.write_interleaved(&mut self.output).map_err(|e| write_error(&self.shown, e, self.written))?;
        }
        Ok(())
    }

    /// Writes video packets whose timestamps are in the sink's packet time base.
    pub(super) fn write_video(&mut self, packets: Vec<Packet>) -> Result<(), MediaError> {
        for mut packet in packets {
            packet.set_stream(0);
            packet.set_position(-1);
            packet.rescale_ts(self.packet_tb, self.video_tb);
            packet.write_interleaved(&mut self.output).map_err(|e| write_error(&self.shown, e, self.written))?;
            self.packets += 1;
        }
        Ok(())
    }

    /// Flushes the encoder, writes what is left of the copied streams and the container's
    /// index, checks the result, and moves a file into place.
    pub fn finish(mut self) -> Result<PathBuf, MediaError> {
        if let Some(encoder) = self.encoder.as_mut() {
            let mut packets = Vec::new();
            encoder.flush(&mut packets).map_err(ffmpeg_error(&self.shown, "flushing the encoder"))?;
            self.write_video(packets)?;
        }
        let mut rest = Vec::new();
        self.side.take_rest(&mut rest);
        for packet in rest {
            self.write_other(packet)?;
        }
        // What the audio encoders still hold.
        for index in 0..self.copied.len() {
            let flushed = match self.copied[index].as_mut().and_then(|c| c.transcoder.as_mut()) {
                Some(t) => t.transcode(None).map_err(ffmpeg_error(&self.shown, "re-encoding audio"))?,
                None => continue,
            };
            self.write_packets(index, flushed)?;
        }
        self.output.write_trailer().map_err(|e| write_error(&self.shown, e, self.written))?;
        if self.encoder.is_some() && self.packets < self.written {
            return Err(MediaError::Ffmpeg {
                path: self.shown.clone(),
                what: "the encoder lost frames",
                error: ffmpeg_next::Error::Bug,
            });
        }
        if let Some((temp, target)) = &self.files {
            std::fs::rename(temp, target).map_err(|cause| MediaError::Io { path: target.clone(), cause })?;
        }
        self.committed = true;
        Ok(self.shown.clone())
    }
}

/// What a failed write means: a full disk, a closed pipe, or FFmpeg's own reason.
fn write_error(path: &Path, error: ffmpeg_next::Error, frames: u64) -> MediaError {
    match error {
        ffmpeg_next::Error::Other { errno } if errno == libc::ENOSPC => {
            MediaError::NoSpace { path: path.to_path_buf(), frames }
        }
        ffmpeg_next::Error::Other { errno } if errno == libc::EPIPE => {
            MediaError::StreamClosed { path: path.to_path_buf(), frames }
        }
        error => MediaError::Ffmpeg { path: path.to_path_buf(), what: "writing", error },
    }
}

/// Metadata without the input's `encoder` tag (the muxer writes its own) or `rotate` tag (the
/// frames were turned upright as they were decoded; the MP4 muxer would turn them again).
fn without_encoder(mut d: Dictionary<'static>) -> Dictionary<'static> {
    let mut kept = Dictionary::new();
    for (k, v) in d.iter() {
        if k != "encoder" && k != "rotate" {
            kept.set(k, v);
        }
    }
    d = kept;
    d
}

impl FrameSink for MediaSink {
    fn write(&mut self, mat: &Mat) -> anyhow::Result<()> {
        let mut others = Vec::new();
        let pts = self.side.take_until_frame(&mut others).flatten();
        for packet in others {
            self.write_other(packet)?;
        }
        let encoder = self.encoder.as_mut().ok_or_else(|| anyhow::anyhow!("this output takes encoded video only"))?;
        let mut packets = Vec::new();
        encoder.encode(mat, pts, &mut packets).map_err(|e| match e.downcast::<ffmpeg_next::Error>() {
            Ok(error) => write_error(&self.shown, error, self.written).into(),
            Err(e) => e,
        })?;
        self.written += 1;
        self.write_video(packets)?;
        Ok(())
    }

    fn packets_out(&self) -> Option<u64> {
        Some(self.packets)
    }
}

impl Drop for MediaSink {
    fn drop(&mut self) {
        if !self.committed
            && let Some((temp, _)) = &self.files
        {
            let _ = std::fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_are_printed_once() {
        let err = MediaError::Unwritable { path: "/x".into(), cause: std::io::Error::from_raw_os_error(libc::ENOENT) };
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");
    }
}
