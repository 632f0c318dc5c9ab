//! Re-encoding an audio stream that the output container cannot hold as it is (AAC into WebM,
//! say): decode, resample to what the container's own audio encoder takes, encode in that
//! encoder's frame size. Used only then; every other stream is copied untouched.

use ffmpeg_next::{ChannelLayout, Packet, Rational, codec, decoder, encoder, ffi, format, frame};

/// Bits per second for re-encoded audio: transparent for Opus and AAC in stereo.
const BITRATE: usize = 128_000;

/// One audio stream on its way from the input's codec to the container's.
pub struct AudioTranscoder {
    decoder: decoder::Audio,
    encoder: encoder::Audio,
    resampler: ffmpeg_next::software::resampling::Context,
    fifo: *mut ffi::AVAudioFifo,
    /// Samples sent to the encoder so far: the next frame's timestamp, in 1/rate.
    samples: i64,
    /// The first input timestamp, in the encoder's time base: where the output audio starts.
    start: Option<i64>,
    input_tb: Rational,
    /// What it is, for messages: `aac → opus`.
    pub describe: String,
}

// SAFETY: the FIFO is owned by this value and used by one thread at a time.
unsafe impl Send for AudioTranscoder {}

impl Drop for AudioTranscoder {
    fn drop(&mut self) {
        // SAFETY: the FIFO came from av_audio_fifo_alloc and is freed once, here.
        unsafe { ffi::av_audio_fifo_free(self.fifo) };
    }
}

impl AudioTranscoder {
    /// A transcoder from `input`'s audio to `target`'s encoder, or `None` when this FFmpeg has
    /// no encoder for it. `global_header`: the muxer wants codec headers out of band.
    pub fn new(
        input: &format::stream::Stream<'_>,
        target: codec::Id,
        global_header: bool,
    ) -> Result<Option<Self>, ffmpeg_next::Error> {
        // Opus: FFmpeg's own encoder is experimental; libopus is the one to use.
        let found = if target == codec::Id::OPUS { encoder::find_by_name("libopus") } else { None };
        let Some(codec) = found.or_else(|| encoder::find(target)) else { return Ok(None) };
        let audio_codec = codec.audio()?;
        let mut decoder = codec::context::Context::from_parameters(input.parameters())?.decoder().audio()?;
        decoder.set_parameters(input.parameters())?;

        let in_layout = if decoder.channel_layout().is_empty() {
            ChannelLayout::default(i32::from(decoder.channels()))
        } else {
            decoder.channel_layout()
        };
        let layout = audio_codec.channel_layouts().map_or(in_layout, |layouts| layouts.best(in_layout.channels()));
        let rate = audio_codec.rates().map_or(decoder.rate() as i32, |mut rates| {
            let wanted = decoder.rate() as i32;
            let all: Vec<i32> = rates.by_ref().collect();
            if all.contains(&wanted) { wanted } else { all.iter().copied().find(|r| *r == 48_000).unwrap_or(all[0]) }
        });
        let sample_format = audio_codec
            .formats()
            .and_then(|mut f| f.next())
            .unwrap_or(format::Sample::F32(format::sample::Type::Planar));

        let mut context = codec::context::Context::new_with_codec(codec).encoder().audio()?;
        context.set_rate(rate);
        context.set_channel_layout(layout);
        context.set_format(sample_format);
        context.set_bit_rate(BITRATE);
        context.set_time_base(Rational::new(1, rate));
        if global_header {
            context.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let encoder = context.open_as(codec)?;
        let resampler = ffmpeg_next::software::resampling::Context::get(
            decoder.format(),
            in_layout,
            decoder.rate(),
            sample_format,
            layout,
            rate as u32,
        )?;
        // SAFETY: allocates a FIFO for this format and channel count.
        let fifo = unsafe { ffi::av_audio_fifo_alloc(sample_format.into(), layout.channels(), 1024) };
        if fifo.is_null() {
            return Err(ffmpeg_next::Error::Other { errno: libc::ENOMEM });
        }
        let describe = format!("{} → {}", input.parameters().id().name(), codec.name());
        let t = AudioTranscoder {
            decoder,
            encoder,
            resampler,
            fifo,
            samples: 0,
            start: None,
            input_tb: input.time_base(),
            describe,
        };
        Ok(Some(t))
    }

    /// The opened encoder, for the output stream's parameters.
    pub fn encoder(&self) -> &encoder::Audio {
        &self.encoder
    }

    /// Decodes `packet` (or, with `None`, flushes everything) and returns the encoded packets,
    /// in the encoder's time base (1/rate).
    pub fn transcode(&mut self, packet: Option<&Packet>) -> Result<Vec<Packet>, ffmpeg_next::Error> {
        match packet {
            Some(p) => {
                if self.start.is_none()
                    && let Some(pts) = p.pts()
                {
                    self.start = Some(ffmpeg_next::Rescale::rescale(&pts, self.input_tb, self.encoder.time_base()));
                }
                // A packet that does not decode is dropped, as FFmpeg does.
                if self.decoder.send_packet(p).is_err() {
                    return Ok(Vec::new());
                }
            }
            None => {
                let _ = self.decoder.send_eof();
            }
        }
        let mut decoded = frame::Audio::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            let mut resampled = frame::Audio::empty();
            self.resampler.run(&decoded, &mut resampled)?;
            self.push(&resampled)?;
        }
        let mut out = Vec::new();
        let frame_size = match self.encoder.frame_size() {
            0 => 1024,
            n => n as i32,
        };
        // SAFETY: reads the FIFO's fill level.
        while unsafe { ffi::av_audio_fifo_size(self.fifo) } >= frame_size || (packet.is_none() && self.fifo_len() > 0) {
            let n = self.fifo_len().min(frame_size);
            self.encode_from_fifo(n, &mut out)?;
        }
        if packet.is_none() {
            let _ = self.encoder.send_eof();
            self.receive(&mut out);
        }
        Ok(out)
    }

    fn fifo_len(&self) -> i32 {
        // SAFETY: reads the FIFO's fill level.
        unsafe { ffi::av_audio_fifo_size(self.fifo) }
    }

    fn push(&mut self, frame: &frame::Audio) -> Result<(), ffmpeg_next::Error> {
        if frame.samples() == 0 {
            return Ok(());
        }
        // SAFETY: the frame's data pointers hold `samples` samples of the FIFO's format.
        let written = unsafe {
            let f = frame.as_ptr();
            ffi::av_audio_fifo_write(self.fifo, (*f).extended_data as *mut *mut libc::c_void, (*f).nb_samples)
        };
        if written < frame.samples() as i32 { Err(ffmpeg_next::Error::Other { errno: libc::ENOMEM }) } else { Ok(()) }
    }

    fn encode_from_fifo(&mut self, n: i32, out: &mut Vec<Packet>) -> Result<(), ffmpeg_next::Error> {
        let mut chunk = frame::Audio::new(self.encoder.format(), n as usize, self.encoder.channel_layout());
        chunk.set_rate(self.encoder.rate());
        // SAFETY: the frame was allocated for `n` samples of the FIFO's format and layout.
        let read = unsafe {
            let f = chunk.as_mut_ptr();
            ffi::av_audio_fifo_read(self.fifo, (*f).extended_data as *mut *mut libc::c_void, n)
        };
        if read < n {
            return Err(ffmpeg_next::Error::Bug);
        }
        chunk.set_pts(Some(self.start.unwrap_or(0) + self.samples));
        self.samples += i64::from(n);
        self.encoder.send_frame(&chunk)?;
        self.receive(out);
        Ok(())
    }

    fn receive(&mut self, out: &mut Vec<Packet>) {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            out.push(std::mem::replace(&mut packet, Packet::empty()));
        }
    }
}
