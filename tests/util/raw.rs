//! A client of the vpd protocol written by hand, for tests of what the real client refuses
//! to do.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use vpd::protocol::message::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage, Token};

/// A raw protocol connection, written by hand (the real client refuses to misbehave).
pub struct Raw(pub TcpStream);

impl Raw {
    /// Connects to `addr`, with a 30 s read timeout.
    pub fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw(s)
    }

    /// Connects from the loopback address `source` (any of 127.0.0.0/8), as another host would.
    pub fn connect_from(addr: &str, source: &str) -> std::io::Result<Raw> {
        let target: std::net::SocketAddr = addr.parse().unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&format!("{source}:0").parse::<std::net::SocketAddr>().unwrap().into())?;
        socket.connect(&target.into())?;
        let s: TcpStream = socket.into();
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Raw(s))
    }

    /// Connects with a receive buffer of a few kilobytes, so that a client that stops reading
    /// stops the server's writes soon.
    pub fn connect_small_buffer(addr: &str) -> Raw {
        let target: std::net::SocketAddr = addr.parse().unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&target.into()).unwrap();
        let s: TcpStream = socket.into();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw(s)
    }

    /// Sends a data chunk.
    pub fn chunk(&mut self, data: &[u8]) {
        self.frame(2, data);
    }

    /// Sends a raw frame of `kind`.
    pub fn frame(&mut self, kind: u8, body: &[u8]) {
        let mut bytes = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(body);
        self.0.write_all(&bytes).unwrap();
    }

    /// Sends a control message: a typed one, or any JSON at all.
    pub fn send<M: serde::Serialize>(&mut self, m: &M) {
        self.frame(1, &serde_json::to_vec(m).unwrap());
    }

    /// Says hello with `token`.
    pub fn hello(&mut self, token: Option<&str>) {
        self.send(&ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
            client: "raw".into(),
            token: token.map(Token::new),
        });
    }

    /// The next control message; `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<ServerMessage> {
        let mut header = [0u8; 5];
        if self.0.read_exact(&mut header).is_err() {
            return None;
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize - 1;
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        assert_eq!(header[4], 1, "a control message");
        Some(serde_json::from_slice(&body).unwrap())
    }

    /// The error the server ends with, and proof that it closed the connection after it.
    pub fn expect_error(&mut self) -> (ErrorCode, String) {
        let mut last = None;
        while let Some(m) = self.recv() {
            last = Some(m);
        }
        match last {
            Some(ServerMessage::Error { code, message, .. }) => (code, message),
            other => panic!("expected an error before the close, got {other:?}"),
        }
    }
}

/// A submit of the chain `filters`, written as JSON by hand (so that it may be one the real
/// client would refuse to send), for an upload of `upload_bytes`, to an `.mp4`.
pub fn submit(filters: &str, upload_bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "type": "submit",
        "chain": filters,
        "output": vpd::media::OutputOptions::default(),
        "container": "mp4",
        "transport": "auto",
        "input_name": "in.mp4",
        "input_bytes": upload_bytes,
    })
}
