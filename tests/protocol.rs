//! Hostile and broken clients against a real `vpd server`: each gets a clear error, and the
//! server goes on serving everyone else.

use std::io::Write;
use std::time::Duration;

use vpd::protocol::message::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};

use crate::util::cluster::*;
use crate::util::raw::*;
use crate::util::*;

/// After each abuse, an honest client still gets its job done.
fn still_serves(server: &Server, input: &std::path::Path, dir: &std::path::Path) {
    let out = dir.join("ok.mp4");
    let r = run_vpd(&[
        "client",
        input.to_str().unwrap(),
        "--server",
        &server.addr(),
        "-f",
        "edges",
        "-o",
        out.to_str().unwrap(),
        "--token",
        "s3cret",
        "-q",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(ffprobe(&out).frames, 8);
}

#[test]
fn hostile_and_broken_clients_get_clear_errors_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    write_clip(&input, &ClipSpec { frames: 8, ..ClipSpec::default() }, "mp4v");
    let server =
        Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--token", "s3cret", "--max-upload", "1M"]);
    let addr = server.addr();

    // Wrong token, then no token.
    for token in [Some("guess"), None] {
        let mut c = Raw::connect(&addr);
        c.hello(token);
        assert_eq!(c.expect_error(), (ErrorCode::Unauthorized, "missing or wrong token".into()));
    }
    // Another protocol version.
    let mut c = Raw::connect(&addr);
    c.send(&ClientMessage::Hello { protocol: PROTOCOL_VERSION + 1, client: "future".into(), token: None });
    let (code, message) = c.expect_error();
    assert_eq!(code, ErrorCode::VersionMismatch);
    assert!(message.contains(&format!("this server speaks {PROTOCOL_VERSION}")), "{message}");

    // A 4 GB length prefix: refused from the header, nothing allocated (the server stays small).
    let mut c = Raw::connect(&addr);
    c.0.write_all(&[0xff, 0xff, 0xff, 0xfe, 2]).unwrap();
    let (code, message) = c.expect_error();
    assert_eq!(code, ErrorCode::TooLarge, "{message}");

    // Garbage: an HTTP request.
    let mut c = Raw::connect(&addr);
    c.0.write_all(b"GET / HTTP/1.1\r\nHost: vpd\r\n\r\n").unwrap();
    let (code, message) = c.expect_error();
    assert_eq!(code, ErrorCode::BadRequest, "{message}");

    // An unknown filter, reported with the list of known ones.
    let mut c = Raw::connect(&addr);
    c.hello(Some("s3cret"));
    assert!(matches!(c.recv(), Some(ServerMessage::Welcome { .. })));
    c.send(&submit("vignette", 100));
    let (code, message) = c.expect_error();
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(
        message,
        "unknown filter 'vignette' (known filters: blur, edges, faces, motion, denoise, sharpen, grade, scale)"
    );

    // An upload over the limit is refused before a byte of it is sent.
    let mut c = Raw::connect(&addr);
    c.hello(Some("s3cret"));
    c.recv();
    c.send(&submit("edges", 2 << 20));
    let (code, message) = c.expect_error();
    assert_eq!(code, ErrorCode::TooLarge, "{message}");

    // A file that is not a video.
    let notes = dir.path().join("notes.mp4");
    std::fs::write(&notes, "not a video\n").unwrap();
    let r = run_vpd(&[
        "client",
        notes.to_str().unwrap(),
        "--server",
        &addr,
        "-f",
        "edges",
        "-o",
        dir.path().join("x.mp4").to_str().unwrap(),
        "--token",
        "s3cret",
    ]);
    assert_eq!(r.status.code(), Some(1));
    let err = stderr(&r);
    assert!(
        err.starts_with("vpd: server refused or failed the job (bad_input):") && err.contains("not a video file"),
        "{err}"
    );
    assert!(!dir.path().join("x.mp4").exists());

    // A client that vanishes mid-upload: the job is dropped and its upload deleted.
    let mut c = Raw::connect(&addr);
    c.hello(Some("s3cret"));
    c.recv();
    c.send(&submit("edges", 100_000));
    assert!(matches!(c.recv(), Some(ServerMessage::Accepted { .. })));
    c.frame(2, &[0u8; 10_000]);
    assert!(wait_for(Duration::from_secs(10), || !files_in(&server.work_dir).is_empty()), "the upload started");
    drop(c);
    assert!(
        wait_for(Duration::from_secs(10), || files_in(&server.work_dir).is_empty()),
        "upload left behind: {:?}",
        files_in(&server.work_dir)
    );

    still_serves(&server, &input, dir.path());
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_silent_client_is_timed_out_not_waited_for_forever() {
    // The handshake timeout is 10 s: a connection that says nothing is closed with a timeout.
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    let mut c = Raw::connect(&server.addr());
    let (code, message) = c.expect_error();
    assert_eq!(code, ErrorCode::Timeout, "{message}");
    assert_eq!(message, "no hello within 10 s");
}
