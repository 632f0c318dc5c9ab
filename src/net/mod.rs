//! Listening sockets every serving role uses: TCP on one dual-stack socket (the server's
//! clients, the dashboard, `/metrics`), and a Unix socket for same-host clients; and
//! [`ServerAddr`], how clients name a server; and the [`gate`] every listener admits its
//! connections through.

pub mod gate;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

/// Binds `addr`. An IPv6 wildcard such as `[::]:9000` also accepts IPv4 clients (as
/// `::ffff:a.b.c.d`): IPV6_V6ONLY is switched off, whatever the system default.
pub fn bind_tcp(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        TcpListener::from_std(socket.into())
    };
    bind().with_context(|| format!("cannot listen on {addr}"))
}

/// A bound Unix socket whose file is removed when this is dropped.
pub struct UnixSocket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
}

impl UnixSocket {
    /// Where the socket file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix socket at `path` with mode 0660 (owner and group may connect). A stale socket
/// file left by a crashed server is replaced; a live one, or any other file, is an error.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixSocket> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{}: exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{}: another server is listening on it", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let socket = UnixSocket { listener, path: path.to_path_buf() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(socket)
}

/// Where the server listens: `HOST:PORT`, `[IPV6]:PORT` or `unix:PATH` (so written in a
/// configuration file, too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ServerAddr {
    /// A TCP address (name or IP, and port).
    Tcp(String),
    /// A Unix socket.
    Unix(PathBuf),
}

impl TryFrom<String> for ServerAddr {
    type Error = <ServerAddr as FromStr>::Err;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ServerAddr> for String {
    fn from(a: ServerAddr) -> String {
        a.to_string()
    }
}

impl FromStr for ServerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return if path.is_empty() {
                Err("unix: needs a socket path".into())
            } else {
                Ok(ServerAddr::Unix(path.into()))
            };
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(ServerAddr::Tcp(s.to_string())),
            _ => Err(format!("'{s}' is not HOST:PORT, [IPV6]:PORT or unix:PATH")),
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(a) => f.write_str(a),
            ServerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_parse() {
        assert_eq!("127.0.0.1:9000".parse(), Ok(ServerAddr::Tcp("127.0.0.1:9000".into())));
        assert_eq!("[::1]:9000".parse(), Ok(ServerAddr::Tcp("[::1]:9000".into())));
        assert_eq!("render-1.lan:9000".parse(), Ok(ServerAddr::Tcp("render-1.lan:9000".into())));
        assert_eq!("unix:/run/vpd/vpd.sock".parse(), Ok(ServerAddr::Unix("/run/vpd/vpd.sock".into())));
        for bad in ["9000", "host", "host:port", "unix:", ":9000"] {
            assert!(bad.parse::<ServerAddr>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn one_ipv6_socket_takes_ipv4_and_ipv6_clients() {
        let listener = bind_tcp("[::]:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        for client in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            let connect = tokio::net::TcpStream::connect(&client);
            let (c, a) = tokio::join!(connect, listener.accept());
            c.unwrap_or_else(|e| panic!("{client}: {e}"));
            a.unwrap();
        }
    }

    #[tokio::test]
    async fn unix_socket_is_0660_replaces_stale_files_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vpd.sock");
        {
            let s = bind_unix(&path).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
            // A second server on the same path is refused while the first listens.
            let err = bind_unix(&path).err().unwrap();
            assert!(err.to_string().contains("another server"), "{err}");
            drop(s);
        }
        assert!(!path.exists(), "removed on drop");
        // A stale socket (its server gone without cleaning up) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let _s = bind_unix(&path).unwrap();
        // A regular file is never clobbered.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
