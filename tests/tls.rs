//! TLS end to end, with a CA made for each run (rcgen): the protocol listener with a CA and with a
//! pinned fingerprint, the dashboard over HTTPS, and AMQP over TLS through a TLS front to the real
//! broker. A recording relay between client and server proves the token and the video are not
//! on the wire in clear text.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use vpd::tls::{ClientTls, Fingerprint, Trust};

use crate::util::cluster::*;
use crate::util::*;

const TOKEN: &str = "tls-test-token-0123456789";

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    fingerprint: Fingerprint,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("vpd test CA {name}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let p = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
        fingerprint: Fingerprint::of(leaf.der()),
    };
    std::fs::write(&p.ca, ca_cert.pem()).unwrap();
    std::fs::write(&p.cert, leaf.pem()).unwrap();
    std::fs::write(&p.key, key.serialize_pem()).unwrap();
    p
}

/// A TCP relay to `target` that keeps a copy of every byte the client sent.
struct Relay {
    addr: String,
    seen: Arc<Mutex<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
}

fn relay(target: String) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (s, n) = (seen.clone(), connections.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(&target) else { return };
            n.fetch_add(1, Ordering::SeqCst);
            let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let seen = s.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(k) = c_read.read(&mut buf) {
                    if k == 0 || s_write.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..k]);
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Relay { addr, seen, connections }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The status line of `GET path` over TLS to `base` (`http://HOST:PORT/`), trusting `ca`, with
/// `token` as a bearer.
fn https_get(base: &str, path: &str, ca: &Path, token: Option<&str>) -> anyhow::Result<String> {
    let addr = base.trim_start_matches("http://").trim_end_matches('/').to_string();
    let tls = ClientTls::new(&Trust::Ca(ca.to_path_buf()))?;
    runtime().block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(&addr).await?;
        let mut s = tls.connect(&addr, tcp).await?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: vpd\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string())
    })
}

#[test]
fn the_protocol_and_the_dashboard_speak_tls_verified_by_a_ca_or_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = pki(d, "good");
    let other = pki(d, "other");
    let input = d.join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 6, ..ClipSpec::default() }, "ffv1");
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--token",
        TOKEN,
        "--preview",
        "127.0.0.1:0",
        "--tls-cert",
        good.cert.to_str().unwrap(),
        "--tls-key",
        good.key.to_str().unwrap(),
    ]);
    let wire = relay(server.addr());
    let job = |out: &str, tls: &[&str]| {
        let mut args = vec!["--token", TOKEN];
        args.extend_from_slice(tls);
        client(&wire.addr, &input, "edges", &d.join(out), &args)
    };

    // Verified by the CA, and by the pinned fingerprint: both get the job done.
    let by_ca = job("ca.mkv", &["--tls-ca", good.ca.to_str().unwrap()]);
    assert_eq!(summary(&by_ca).frames, 6);
    let pin = good.fingerprint.to_string();
    let pinned = job("pinned.mkv", &["--tls-fingerprint", &pin]);
    assert_eq!(summary(&pinned).frames, 6);
    assert_eq!(ffprobe(&d.join("pinned.mkv")).frames, 6);
    assert_eq!(wire.connections.load(Ordering::SeqCst), 2, "both jobs went through the relay");
    // Neither the token nor the video's bytes crossed the wire in clear.
    let seen = wire.seen.lock().unwrap().clone();
    assert!(seen.len() > std::fs::metadata(&input).unwrap().len() as usize, "the upload went through the relay");
    assert!(!contains(&seen, TOKEN.as_bytes()), "the token is on the wire in clear text");
    let video = std::fs::read(&input).unwrap();
    assert!(!contains(&seen, &video[video.len() / 2..video.len() / 2 + 64]), "the video is on the wire in clear text");

    // Another CA's certificate, a wrong pin, and plain TCP are each refused, in one line.
    for (tls, message) in [
        (vec!["--tls-ca", other.ca.to_str().unwrap()], "invalid peer certificate"),
        (vec!["--tls-fingerprint", &other.fingerprint.to_string()], "not the pinned"),
        (vec![], "answered in TLS: connect with --tls"),
    ] {
        let out = job("refused.mkv", &tls);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{tls:?}: {err}");
        assert!(err.contains(message) && err.lines().count() == 1, "{tls:?}: {err}");
        assert!(!d.join("refused.mkv").exists());
    }

    // The dashboard: HTTPS for a client that trusts the CA, nothing for one that speaks HTTP.
    let preview = server.preview.clone().unwrap();
    assert_eq!(https_get(&preview, "/healthz", &good.ca, Some(TOKEN)).unwrap(), "HTTP/1.1 200 OK");
    assert_eq!(https_get(&preview, "/jobs", &good.ca, Some(TOKEN)).unwrap(), "HTTP/1.1 200 OK");
    assert!(https_get(&preview, "/healthz", &other.ca, Some(TOKEN)).is_err(), "another CA's client is refused");
    assert!(ureq::get(&format!("{preview}healthz")).call().is_err(), "plain HTTP is not answered");
    assert_eq!(server.tls, Some(format!("sha256:{}", good.fingerprint)), "the server announces what to pin");
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_standalone_preview_serves_its_dashboard_over_tls_to_token_holders() {
    let ns = Namespace::new("tls-preview");
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "preview");
    let preview = Preview::start_with(
        &ns,
        &["--token", TOKEN, "--tls-cert", pki.cert.to_str().unwrap(), "--tls-key", pki.key.to_str().unwrap()],
    );
    assert_eq!(https_get(&preview.url, "/jobs", &pki.ca, Some(TOKEN)).unwrap(), "HTTP/1.1 200 OK");
    assert_eq!(https_get(&preview.url, "/jobs", &pki.ca, None).unwrap(), "HTTP/1.1 401 Unauthorized");
    assert_eq!(https_get(&preview.url, "/events", &pki.ca, Some("guess")).unwrap(), "HTTP/1.1 401 Unauthorized");
    assert_eq!(https_get(&preview.url, "/healthz", &pki.ca, None).unwrap(), "HTTP/1.1 200 OK");
    assert!(ureq::get(&format!("{}healthz", preview.url)).call().is_err(), "plain HTTP is not answered");
}

#[test]
fn a_token_served_in_clear_text_beyond_loopback_is_warned_about() {
    let warning = "clients send their token in clear text";
    let open = Server::start(&["--listen", "0.0.0.0:0", "--threads", "1", "--token", TOKEN]);
    let (_, err) = open.stop();
    assert!(err.contains(warning), "{err}");
    let local = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--token", TOKEN]);
    let (_, err) = local.stop();
    assert!(!err.contains(warning), "{err}");
}

/// A TLS front for the broker: TLS from the roles, plain AMQP on to RabbitMQ, as a TLS listener
/// of RabbitMQ's own (or a load balancer) would be.
struct TlsFront {
    port: u16,
    connections: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

fn tls_front(pki: &Pki, broker: String) -> TlsFront {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tls = vpd::tls::ServerTls::load(&pki.cert, &pki.key).unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let n = connections.clone();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, broker, n) = (tls.acceptor.clone(), broker.clone(), n.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&broker).await else { return };
                n.fetch_add(1, Ordering::SeqCst);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    TlsFront { port, connections, _runtime: rt }
}

fn pki_of_a_stranger(dir: &Path) -> PathBuf {
    pki(dir, "stranger").ca
}

#[test]
fn amqps_carries_a_job_through_workers_verified_against_the_trusted_ca() {
    let ns = Namespace::new("tls-amqps");
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "broker");
    let plain = amqp_url();
    let authority = plain.split('@').next_back().unwrap().split('/').next().unwrap().to_string();
    let front = tls_front(&pki, authority);
    let url = format!("amqps://guest:guest@localhost:{}/%2f", front.port);
    // The CA is trusted the way the system's store is read: SSL_CERT_FILE.
    let trust = |cmd: &mut std::process::Command| {
        cmd.env("SSL_CERT_FILE", &pki.ca);
    };
    let server = Server::start_in(
        &["--listen", "127.0.0.1:0", "--amqp", &url, "--namespace", &ns.name],
        tempfile::tempdir().unwrap(),
        dir.path().join("work"),
        trust,
    );
    let mut worker = vpd();
    worker.args(["worker", "--amqp", &url, "--namespace", &ns.name, "--threads", "2"]);
    trust(&mut worker);
    let _worker = spawn_piped(worker);
    ns.wait_for_workers(1);
    let input = clip(dir.path(), ClipSpec { frames: 8, ..ClipSpec::default() });
    let want = reference(&input, "edges", &dir.path().join("want.mkv"));
    let out = dir.path().join("got.mkv");
    assert_eq!(summary(&client(&server.addr(), &input, "edges", &out, &[])).frames, 8);
    assert_same_frames(&out, &want, "over amqps");
    assert!(front.connections.load(Ordering::SeqCst) >= 2, "the server and the worker came through TLS");

    // A worker that does not trust the broker's CA does not connect.
    let out = vpd()
        .args(["worker", "--amqp", &url, "--namespace", &ns.name])
        .env("SSL_CERT_FILE", pki_of_a_stranger(dir.path()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
}
