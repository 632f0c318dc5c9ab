//! Length-prefixed packets on a byte stream (TCP or Unix socket).
//!
//! ```text
//! packet := length: u32, big-endian (bytes after it) | kind: u8 | payload
//! kind 1: a JSON control message        (at most MAX_CONTROL_BYTES)
//! kind 2: a chunk of upload or result   (at most MAX_CHUNK_BYTES)
//! ```
//!
//! The declared length is checked against the limit for its kind before anything is
//! allocated, so a hostile or confused peer (a 4 GB length, an HTTP request) costs nothing
//! but the connection. A writer can be given a time limit per packet, so a peer that stops
//! reading cannot hold the writing side forever.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest JSON control message, in bytes.
pub const MAX_CONTROL_BYTES: usize = 64 << 10;
/// Largest data chunk, in bytes; senders split uploads and results into chunks of this size.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

const KIND_CONTROL: u8 = 1;
const KIND_CHUNK: u8 = 2;

/// Why a packet could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer closed the connection in the middle of a packet.
    #[error("the connection closed in the middle of a message")]
    Truncated,
    /// A declared length over the limit for its kind.
    #[error("a {kind} of {len} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// `control message` or `data chunk`.
        kind: &'static str,
        /// The declared length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// A packet kind this protocol does not have, or a zero length.
    #[error("not a vpd protocol packet (kind {0})")]
    BadPacket(u8),
    /// A control message that is not valid JSON for the expected type, or whose content its
    /// type refuses (an unknown filter, a chain over the limits): says which.
    #[error("{0}")]
    Malformed(String),
    /// The peer did not take a packet within the writer's time limit.
    #[error("the peer took no data for {} s", .0.as_secs())]
    WriteTimeout(Duration),
    /// An earlier write failed or was abandoned part-way through a packet: anything written
    /// now would be read as the rest of that packet.
    #[error("an earlier message to the peer was cut off; the connection is unusable")]
    Broken,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One packet off the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<T> {
    /// A control message.
    Message(T),
    /// A chunk of upload or result data.
    Chunk(Vec<u8>),
}

/// Reads packets from `R`, control messages decoded as `T`.
///
/// A packet read part-way is kept here, not in the future that reads it, so [`read`] is
/// cancel-safe: a caller may drop it in a `select!` (a Ctrl-C, the other direction of the
/// stream) and the next call goes on from the same byte.
///
/// [`read`]: PacketReader::read
pub struct PacketReader<R> {
    inner: R,
    /// The header read so far, and how many of its bytes are in.
    header: [u8; 5],
    header_in: usize,
    /// Whether the header is in and the body is being read; the body's kind, the body, and
    /// how many of its bytes are in.
    in_body: bool,
    kind: u8,
    body: Vec<u8>,
    body_in: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// Wraps a byte stream.
    pub fn new(inner: R) -> Self {
        PacketReader { inner, header: [0; 5], header_in: 0, in_body: false, kind: 0, body: Vec::new(), body_in: 0 }
    }

    /// The byte stream it reads.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next packet, or `None` when the peer closed the connection between packets.
    ///
    /// Cancel-safe: every await is one `read` of the stream, and what it gave is kept before
    /// the next.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<Packet<T>>, ProtocolError> {
        while !self.in_body {
            let n = self.inner.read(&mut self.header[self.header_in..]).await?;
            if n == 0 {
                return if self.header_in == 0 { Ok(None) } else { Err(ProtocolError::Truncated) };
            }
            self.header_in += n;
            if self.header_in == self.header.len() {
                self.header_in = 0;
                (self.kind, self.body) = self.start_body()?;
                (self.body_in, self.in_body) = (0, true);
            }
        }
        while self.body_in < self.body.len() {
            let n = self.inner.read(&mut self.body[self.body_in..]).await?;
            if n == 0 {
                return Err(ProtocolError::Truncated);
            }
            self.body_in += n;
        }
        self.in_body = false;
        let body = std::mem::take(&mut self.body);
        Ok(Some(match self.kind {
            KIND_CONTROL => {
                Packet::Message(serde_json::from_slice(&body).map_err(|e| ProtocolError::Malformed(json_error(&e)))?)
            }
            _ => Packet::Chunk(body),
        }))
    }

    /// The kind and an empty body for the header just read, its length checked against its
    /// kind's limit before anything is allocated.
    fn start_body(&self) -> Result<(u8, Vec<u8>), ProtocolError> {
        let header = self.header;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = header[4];
        let (name, limit) = match kind {
            KIND_CONTROL => ("control message", MAX_CONTROL_BYTES),
            KIND_CHUNK => ("data chunk", MAX_CHUNK_BYTES),
            other => return Err(ProtocolError::BadPacket(other)),
        };
        let body_len = u64::from(len).checked_sub(1).ok_or(ProtocolError::BadPacket(kind))?;
        if body_len > limit as u64 {
            return Err(ProtocolError::TooLarge { kind: name, len: body_len, limit });
        }
        Ok((kind, vec![0u8; body_len as usize]))
    }
}

/// What was wrong with a control message. Content its type refused reads in the words of
/// whatever refused it, as on the command line (a chain's or a codec's own error), without the
/// JSON position; broken JSON says so.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if !e.is_data() {
        return format!("malformed message: {text}");
    }
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Writes packets to `W`.
pub struct PacketWriter<W> {
    inner: W,
    timeout: Option<Duration>,
    /// A packet is (or was left) partly written.
    mid_packet: bool,
}

/// `message` as one whole control packet, for a caller that writes it itself.
pub fn encode_control<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = control_body(message)?;
    let mut packet = Vec::with_capacity(5 + body.len());
    packet.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    packet.push(KIND_CONTROL);
    packet.extend_from_slice(&body);
    Ok(packet)
}

fn control_body<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = serde_json::to_vec(message).map_err(|e| ProtocolError::Malformed(json_error(&e)))?;
    if body.len() > MAX_CONTROL_BYTES {
        return Err(ProtocolError::TooLarge {
            kind: "control message",
            len: body.len() as u64,
            limit: MAX_CONTROL_BYTES,
        });
    }
    Ok(body)
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    /// Wraps a byte stream; writes wait as long as the peer makes them.
    pub fn new(inner: W) -> Self {
        PacketWriter { inner, timeout: None, mid_packet: false }
    }

    /// Wraps a byte stream; a packet the peer has not taken within `limit` fails with
    /// [`ProtocolError::WriteTimeout`].
    pub fn with_timeout(inner: W, limit: Duration) -> Self {
        PacketWriter { inner, timeout: Some(limit), mid_packet: false }
    }

    /// Sends a control message.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), ProtocolError> {
        let body = control_body(message)?;
        self.write_packet(KIND_CONTROL, &body).await
    }

    /// Sends a data chunk of at most [`MAX_CHUNK_BYTES`].
    pub async fn send_chunk(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        if data.len() > MAX_CHUNK_BYTES {
            return Err(ProtocolError::TooLarge { kind: "data chunk", len: data.len() as u64, limit: MAX_CHUNK_BYTES });
        }
        self.write_packet(KIND_CHUNK, data).await
    }

    /// Flushes and shuts the write side down.
    pub async fn shutdown(&mut self) -> Result<(), ProtocolError> {
        self.inner.shutdown().await?;
        Ok(())
    }

    async fn write_packet(&mut self, kind: u8, body: &[u8]) -> Result<(), ProtocolError> {
        // Set until the packet is out whole: a failed write, or a caller that gave up on this
        // future (its own time limit), leaves it set.
        if self.mid_packet {
            return Err(ProtocolError::Broken);
        }
        self.mid_packet = true;
        // Lengths are bounded by the limits above, far below u32::MAX.
        let len = (body.len() + 1) as u32;
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4] = kind;
        let inner = &mut self.inner;
        let write = async move {
            inner.write_all(&header).await?;
            inner.write_all(body).await?;
            inner.flush().await
        };
        match self.timeout {
            None => write.await?,
            Some(limit) => {
                tokio::time::timeout(limit, write).await.map_err(|_| ProtocolError::WriteTimeout(limit))??
            }
        }
        self.mid_packet = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{ClientMessage, Token};

    #[tokio::test]
    async fn messages_and_chunks_round_trip_through_a_tiny_pipe() {
        // An 8-byte pipe forces every packet through many partial reads and writes.
        let (a, b) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            let mut w = PacketWriter::new(a);
            w.send(&ClientMessage::Hello { protocol: 1, client: "t".into(), token: Some(Token::new("s")) })
                .await
                .unwrap();
            w.send_chunk(&[7u8; 1000]).await.unwrap();
            w.send(&ClientMessage::Cancel).await.unwrap();
        });
        let mut r = PacketReader::new(b);
        assert_eq!(
            r.read::<ClientMessage>().await.unwrap(),
            Some(Packet::Message(ClientMessage::Hello {
                protocol: 1,
                client: "t".into(),
                token: Some(Token::new("s"))
            }))
        );
        assert_eq!(r.read::<ClientMessage>().await.unwrap(), Some(Packet::Chunk(vec![7u8; 1000])));
        assert_eq!(r.read::<ClientMessage>().await.unwrap(), Some(Packet::Message(ClientMessage::Cancel)));
        writer.await.unwrap();
        assert_eq!(r.read::<ClientMessage>().await.unwrap(), None, "clean close between packets");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_given_up_part_way_through_a_packet_goes_on_from_the_same_byte() {
        // As a `select!` does when another branch wins: the read is dropped while the packet
        // is part-way in, once in its header and once in its body, and the next read must
        // still give whole packets.
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = PacketReader::new(b);
        let mut bytes = vec![0u8, 0, 3, 233, KIND_CHUNK];
        bytes.extend((0..1000u32).map(|i| (i % 251) as u8));
        bytes.extend_from_slice(&encode_control(&ClientMessage::Cancel).unwrap());
        for part in [&bytes[..3], &bytes[3..400]] {
            a.write_all(part).await.unwrap();
            let gave_up = tokio::time::timeout(Duration::from_secs(1), r.read::<ClientMessage>()).await;
            assert!(gave_up.is_err(), "the packet is not whole yet");
        }
        a.write_all(&bytes[400..]).await.unwrap();
        assert_eq!(r.read::<ClientMessage>().await.unwrap(), Some(Packet::Chunk(bytes[5..1005].to_vec())));
        assert_eq!(r.read::<ClientMessage>().await.unwrap(), Some(Packet::Message(ClientMessage::Cancel)));
        drop(a);
        assert_eq!(r.read::<ClientMessage>().await.unwrap(), None, "clean close between packets");
    }

    #[tokio::test]
    async fn an_oversize_length_is_refused_before_allocating() {
        // 4 GB declared: reading it would need 4 GB; the reader must refuse from the header alone.
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff, KIND_CHUNK];
        bytes.extend_from_slice(b"tiny");
        let mut r = PacketReader::new(&bytes[..]);
        match r.read::<ClientMessage>().await {
            Err(ProtocolError::TooLarge { kind: "data chunk", len, limit }) => {
                assert_eq!(len, u64::from(u32::MAX) - 1);
                assert_eq!(limit, MAX_CHUNK_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // A control message just over its own limit.
        let mut bytes = ((MAX_CONTROL_BYTES + 2) as u32).to_be_bytes().to_vec();
        bytes.push(KIND_CONTROL);
        assert!(matches!(
            PacketReader::new(&bytes[..]).read::<ClientMessage>().await,
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn garbage_truncation_and_bad_json_are_errors() {
        // An HTTP request is not a packet: "GET " as a length is ~1.2 GB, and 'h' is no kind.
        let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            PacketReader::new(&http[..]).read::<ClientMessage>().await,
            Err(ProtocolError::BadPacket(b'/'))
        ));
        // A packet cut short.
        let cut = [0, 0, 0, 10, KIND_CHUNK, 1, 2];
        assert!(matches!(PacketReader::new(&cut[..]).read::<ClientMessage>().await, Err(ProtocolError::Truncated)));
        // A zero length.
        let zero = [0, 0, 0, 0, KIND_CHUNK];
        assert!(matches!(PacketReader::new(&zero[..]).read::<ClientMessage>().await, Err(ProtocolError::BadPacket(_))));
        // JSON of the wrong shape.
        let mut bad = 13u32.to_be_bytes().to_vec();
        bad.push(KIND_CONTROL);
        bad.extend_from_slice(br#"{"type":"x"}"#);
        assert!(matches!(PacketReader::new(&bad[..]).read::<ClientMessage>().await, Err(ProtocolError::Malformed(_))));
        // Content its type refuses reads as that type's own error; broken JSON says so.
        let control = |json: &[u8]| {
            let mut packet = ((json.len() + 1) as u32).to_be_bytes().to_vec();
            packet.push(KIND_CONTROL);
            packet.extend_from_slice(json);
            packet
        };
        let submit = control(br#"{"type":"submit","chain":"blur,,edges"}"#);
        let err = PacketReader::new(&submit[..]).read::<ClientMessage>().await.unwrap_err().to_string();
        assert!(err.starts_with("empty element at position 2 of the filter chain ("), "{err}");
        let broken = control(br#"{"type":"#);
        let err = PacketReader::new(&broken[..]).read::<ClientMessage>().await.unwrap_err().to_string();
        assert!(err.starts_with("malformed message: EOF"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_the_writer_out() {
        // Nobody reads the other end of a 1 kB pipe: the second chunk cannot go out.
        let (a, _unread) = tokio::io::duplex(1024);
        let mut w = PacketWriter::with_timeout(a, Duration::from_secs(60));
        w.send_chunk(&[0u8; 500]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = w.send_chunk(&[0u8; 5000]).await.unwrap_err();
        assert!(matches!(err, ProtocolError::WriteTimeout(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(60), "after the limit, not before");
        // Part of that chunk went out: nothing more may follow it.
        assert!(matches!(w.send(&ClientMessage::Cancel).await, Err(ProtocolError::Broken)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_given_up_by_its_caller_leaves_the_writer_unusable() {
        let (a, _unread) = tokio::io::duplex(16);
        let mut w = PacketWriter::new(a);
        let gave_up = tokio::time::timeout(Duration::from_secs(5), w.send_chunk(&[1u8; 100])).await;
        assert!(gave_up.is_err(), "the pipe is full");
        assert!(matches!(w.send_chunk(&[2u8; 4]).await, Err(ProtocolError::Broken)));
    }

    #[test]
    fn a_whole_control_frame_reads_back() {
        let packet = encode_control(&ClientMessage::Cancel).unwrap();
        let read = futures_lite::future::block_on(PacketReader::new(&packet[..]).read::<ClientMessage>()).unwrap();
        assert_eq!(read, Some(Packet::Message(ClientMessage::Cancel)));
    }

    #[tokio::test]
    async fn writers_refuse_what_readers_would_refuse() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = PacketWriter::new(a);
        assert!(matches!(w.send_chunk(&vec![0u8; MAX_CHUNK_BYTES + 1]).await, Err(ProtocolError::TooLarge { .. })));
    }
}
