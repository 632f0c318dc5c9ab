//! Identities and limits: a tokens file names each client, gives it a role and limits, and is
//! read again on SIGHUP. A client over its limits gets `rate_limited` with when to retry; the
//! other client is unaffected; a read-only token reads and does nothing else; records and logs
//! carry names, never tokens; the dashboard wants a token too.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::util::cluster::*;
use crate::util::*;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";
const BOARD: &str = "board-token-0123456789";
const CAROL: &str = "carol-token-0123456789";

fn tokens_file(path: &Path, upload_per_hour: u64, carol: bool) {
    let mut text = format!(
        "[[client]]\nname = \"alice\"\ntoken = \"{ALICE}\"\njobs = 1\nupload_per_hour = \"{upload_per_hour}\"\nfps = 20\n\n\
         [[client]]\nname = \"bob\"\ntoken = \"{BOB}\"\n\n\
         [[client]]\nname = \"board\"\ntoken = \"{BOARD}\"\nrole = \"read\"\n"
    );
    if carol {
        text.push_str(&format!("\n[[client]]\nname = \"carol\"\ntoken = \"{CAROL}\"\n"));
    }
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn as_client(addr: &str, token: &str, input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--token", token];
    args.extend_from_slice(extra);
    client(addr, input, "edges", out, &args)
}

fn jobs(addr: &str, token: &str, args: &[&str]) -> Output {
    vpd().args(["jobs"]).args(args).args(["--server", addr, "--token", token, "--json"]).output().unwrap()
}

/// The HTTP status of `GET path` on the dashboard, with `token` as a bearer.
fn dashboard(base: &str, path: &str, token: Option<&str>) -> u16 {
    let mut request = ureq::get(&format!("{base}{}", path.trim_start_matches('/')));
    if let Some(t) = token {
        request = request.header("Authorization", &format!("Bearer {t}"));
    }
    match request.call() {
        Ok(r) => r.status().as_u16(),
        Err(ureq::Error::StatusCode(code)) => code,
        Err(e) => panic!("{path}: {e}"),
    }
}

#[test]
fn each_client_has_its_name_role_and_limits_and_the_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = clip(d, ClipSpec { frames: 48, ..ClipSpec::default() });
    let size = std::fs::metadata(&input).unwrap().len();
    let tokens = d.join("tokens.toml");
    tokens_file(&tokens, size * 3 / 2, false);
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--max-jobs",
        "4",
        "--preview",
        "127.0.0.1:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let addr = server.addr();

    // Alice's first job runs at her 20 frames a second, in the background.
    let out = as_client(&addr, ALICE, &input, &d.join("unused.mkv"), &["--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Her second, while it runs: over her one job at once, told when to retry (and, with
    // --wait 0, not waiting for it).
    let out = as_client(&addr, ALICE, &input, &d.join("a2.mkv"), &["--wait", "0"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("(rate_limited): alice may have 1 jobs queued or running at once; retry in 5 s"), "{err}");
    assert!(!d.join("a2.mkv").exists());
    // Bob, meanwhile, is not held back by her limits.
    let bob = summary(&as_client(&addr, BOB, &input, &d.join("bob.mkv"), &[]));
    assert_eq!(bob.frames, 48);
    // The read-only token lists and shows; it does not submit.
    let listed = jobs(&addr, BOARD, &[]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let out = as_client(&addr, BOARD, &input, &d.join("board.mkv"), &[]);
    assert!(stderr(&out).contains("(unauthorized): board has a read-only token"), "{}", stderr(&out));
    let out = jobs(&addr, BOARD, &["cancel", &first]);
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));

    // Alice's job, followed to its end: held to her pace (48 frames at 20 a second).
    let followed = d.join("alice.mkv");
    let out = vpd()
        .args(["client", "--attach", &first, "--server", &addr, "--token", ALICE, "--json", "-o"])
        .arg(&followed)
        .output()
        .unwrap();
    let alice = summary(&out);
    assert_eq!(alice.frames, 48);
    assert!(alice.wall_seconds >= 48.0 / 20.0 * 0.9, "alice's job took {} s, faster than 20 fps", alice.wall_seconds);
    assert!(bob.wall_seconds < alice.wall_seconds, "bob's job was paced too: {} s", bob.wall_seconds);
    // Her jobs at once are free again, but her uploads this hour are not.
    let out = as_client(&addr, ALICE, &input, &d.join("a3.mkv"), &[]);
    let err = stderr(&out);
    assert!(err.contains("(rate_limited): alice has uploaded") && err.contains("retry in 3"), "{err}");

    // A rerun is a job too, hers, counted against her one job at once.
    let rerun = jobs(&addr, ALICE, &["rerun", &first]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let again = jobs(&addr, ALICE, &["rerun", &first, "--wait", "0"]);
    let err = stderr(&again);
    assert!(err.contains("(rate_limited): alice may have 1 jobs queued or running at once; retry in 5 s"), "{err}");

    // The record names alice, never her token.
    let shown = jobs(&addr, BOB, &["show", &first]);
    let record: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(record["client"], "alice", "{record}");
    assert!(record["software"].as_str().unwrap().starts_with("vpd/"), "{record}");
    assert!(!String::from_utf8_lossy(&shown.stdout).contains(ALICE));

    // The dashboard wants a token, of either role; health and metrics stay open.
    let base = server.preview.clone().unwrap();
    assert_eq!(dashboard(&base, "/jobs", None), 401);
    assert_eq!(dashboard(&base, "/jobs", Some("wrong-token-0123456789")), 401);
    assert_eq!(dashboard(&base, "/jobs", Some(BOARD)), 200);
    assert_eq!(dashboard(&base, "/events", None), 401);
    assert_eq!(dashboard(&base, &format!("/jobs/{first}/frame.jpg"), None), 401);
    assert_eq!(dashboard(&base, "/healthz", None), 200);

    // A new client in the file, and SIGHUP: carol gets in without a restart.
    assert_eq!(jobs(&addr, CAROL, &[]).status.code(), Some(1));
    tokens_file(&tokens, size * 3 / 2, true);
    signal(&server.child.0, libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(10), || jobs(&addr, CAROL, &[]).status.success()), "carol was let in");
    // A broken file on the next SIGHUP keeps everyone as they were.
    std::fs::write(&tokens, "[[client]]\nname = \"x\"\ntoken = \"short\"\n").unwrap();
    signal(&server.child.0, libc::SIGHUP);
    assert!(jobs(&addr, CAROL, &[]).status.success());

    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    for token in [ALICE, BOB, BOARD, CAROL] {
        assert!(!log.contains(token), "a token in the log: {log}");
    }
    assert!(log.contains("cannot read the tokens file again"), "{log}");
}

/// An upload cut off is charged what arrived, not what it announced: after alice's connection
/// drops 4 kB into an upload that announced the whole clip, the clip itself still fits in her
/// hour's budget of one and a half clips.
#[test]
fn an_upload_cut_off_costs_only_the_bytes_that_arrived() {
    use crate::util::raw::{Raw, submit};
    use vpd::protocol::message::ServerMessage;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = clip(d, ClipSpec { frames: 12, ..ClipSpec::default() });
    let size = std::fs::metadata(&input).unwrap().len();
    let tokens = d.join("tokens.toml");
    tokens_file(&tokens, size * 3 / 2, false);
    let server =
        Server::start(&["--listen", "127.0.0.1:0", "--threads", "2", "--tokens-file", tokens.to_str().unwrap()]);
    let addr = server.addr();

    let mut raw = Raw::connect(&addr);
    raw.hello(Some(ALICE));
    raw.recv();
    raw.send(&submit("edges", size));
    assert!(matches!(raw.recv(), Some(ServerMessage::Accepted { .. })));
    raw.chunk(&[0u8; 4096]);
    drop(raw);
    // 4 kB, less than one fsync step: nothing worth resuming, so the job fails.
    let failed = || {
        let listed = jobs(&addr, ALICE, &[]);
        String::from_utf8_lossy(&listed.stdout).contains("\"failed\"")
    };
    assert!(wait_for(Duration::from_secs(30), failed), "the cut-off upload's job is recorded failed");

    let out = as_client(&addr, ALICE, &input, &d.join("out.mkv"), &[]);
    assert!(out.status.success(), "charged for the bytes that never came: {}", stderr(&out));
    // The budget is still a budget: another clip is over it (and its hour is longer than any
    // --wait, so the client does not wait for it).
    let out = as_client(&addr, ALICE, &input, &d.join("again.mkv"), &[]);
    assert!(stderr(&out).contains("(rate_limited): alice has uploaded"), "{}", stderr(&out));
}

/// A client over its jobs-at-once limit waits its turn, saying so, and then runs its job;
/// `vpd jobs` does the same; with `--wait 0`, or past its wait, it gives up with the server's
/// words.
#[test]
fn a_client_over_its_limit_waits_its_turn_within_wait() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = clip(d, ClipSpec { frames: 48, ..ClipSpec::default() });
    let size = std::fs::metadata(&input).unwrap().len();
    let tokens = d.join("tokens.toml");
    tokens_file(&tokens, size * 20, false);
    let server =
        Server::start(&["--listen", "127.0.0.1:0", "--threads", "2", "--tokens-file", tokens.to_str().unwrap()]);
    let addr = server.addr();

    // Her first job runs at 20 frames a second: 2.4 s.
    let out = as_client(&addr, ALICE, &input, &d.join("unused.mkv"), &["--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Her second waits for it, then runs.
    let second = as_client(&addr, ALICE, &input, &d.join("a2.mkv"), &["--wait", "60"]);
    let err = stderr(&second);
    assert!(second.status.success(), "{err}");
    assert!(
        err.contains("the server is busy (alice may have 1 jobs queued or running at once); trying again in"),
        "{err}"
    );
    assert_eq!(ffprobe(&d.join("a2.mkv")).frames, 48);
    // A third, with a wait shorter than the server's first retry-after, gives up at once.
    let out = as_client(&addr, ALICE, &input, &d.join("unused2.mkv"), &["--detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = jobs(&addr, ALICE, &["rerun", &first, "--wait", "2"]);
    let err = stderr(&again);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert!(err.contains("(rate_limited): alice may have 1 jobs queued or running at once; retry in 5 s (gave up after waiting 0 s; --wait sets how long)"), "{err}");
    // With room to wait, the rerun goes through once her job ends.
    let rerun = jobs(&addr, ALICE, &["rerun", &first, "--wait", "60"]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert!(stderr(&rerun).contains("trying again in"), "{}", stderr(&rerun));
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}
