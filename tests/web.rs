//! The web application (issue 22): a real browser signs in, uploads the sample, watches it
//! with its charts, plays and downloads the result and reruns it from history; and, at the HTTP
//! level, its security (tokens, sessions, same origin, anti-CSRF, roles, SIGHUP) and its
//! uploads and files (411, 413, a cut-off upload, ranges).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::util::cluster::*;
use crate::util::web::*;
use crate::util::*;

const ALICE: &str = "alice-web-token-0123456789";
const READER: &str = "reader-web-token-0123456789";

fn tokens_file(path: &Path, with_alice: bool) {
    let mut text = format!("[[client]]\nname = \"reader\"\ntoken = \"{READER}\"\nrole = \"read\"\n");
    if with_alice {
        text.push_str(&format!("\n[[client]]\nname = \"alice\"\ntoken = \"{ALICE}\"\n"));
    }
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// One HTTP/1.1 exchange on a fresh connection: the status, the headers (names lower-cased)
/// and the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn exchange(host: &str, head: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v == "chunked") {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line + 2..line + 2 + size]);
        raw = &raw[line + 2 + size + 2..];
    }
}

/// A signed-in browser's credentials, as a script holds them.
#[derive(Debug)]
struct Signed {
    cookie: String,
    csrf: String,
}

/// Requests as a page of the site sends them.
struct Web {
    host: String,
}

impl Web {
    fn new(base: &str) -> Web {
        Web { host: base.trim_start_matches("http://").trim_end_matches('/').to_string() }
    }

    fn request(&self, method: &str, path: &str, extra: &str, body: &[u8]) -> Answer {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len(),
            host = self.host
        );
        exchange(&self.host, &head, body)
    }

    fn origin(&self) -> String {
        format!("Origin: http://{}\r\n", self.host)
    }

    fn sign_in(&self, token: &str) -> Result<Signed, Answer> {
        let body = format!("token={token}");
        let extra = format!("{}Content-Type: application/x-www-form-urlencoded\r\n", self.origin());
        let answer = self.request("POST", "/api/login", &extra, body.as_bytes());
        if answer.status != 200 {
            return Err(answer);
        }
        let cookie = answer.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
        let csrf = answer.json()["csrf"].as_str().unwrap().to_string();
        Ok(Signed { cookie, csrf })
    }

    fn get(&self, path: &str, signed: &Signed) -> Answer {
        self.request("GET", path, &format!("Cookie: {}\r\n", signed.cookie), b"")
    }

    /// A state-changing request as the page sends it: session, anti-CSRF token, same origin.
    fn change(&self, path: &str, signed: &Signed, body: &[u8]) -> Answer {
        let extra = format!("Cookie: {}\r\nX-CSRF-Token: {}\r\n{}", signed.cookie, signed.csrf, self.origin());
        self.request("POST", path, &extra, body)
    }
}

fn wait_state(web: &Web, signed: &Signed, job: &str, state: &str) -> Value {
    let mut last = Value::Null;
    let reached = wait_for(Duration::from_secs(120), || {
        last = web.get(&format!("/api/jobs/{job}"), signed).json();
        last["record"]["state"] == state
    });
    assert!(reached, "job {job} never became {state}: {last}");
    last
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_browser_signs_in_uploads_watches_plays_downloads_and_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    tokens_file(&tokens, true);
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--preview",
        "127.0.0.1:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let base = server.preview.clone().unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web");
    let mut browser = Browser::launch();
    browser.viewport(1280, 900, false);
    browser.navigate(&base);

    // Signed out: the form, and nothing else. A wrong token is refused; the right one, typed
    // and sent with Enter, signs in.
    assert!(
        browser.wait_until(Duration::from_secs(30), "document.querySelector('#signin')?.hidden === false"),
        "the sign-in form"
    );
    browser.eval("document.querySelector('#token').focus()");
    browser.type_text("not-the-token", true);
    let refused = "!document.querySelector('#signin-error').hidden";
    assert!(browser.wait_until(Duration::from_secs(30), refused), "a wrong token is refused");
    // The refused token is selected: typing replaces it.
    browser.type_text(ALICE, true);
    let signed_in = "!document.querySelector('#new').hidden && document.querySelector('#stream').dataset.state === 'live' \
                     && document.querySelector('#preset').options.length > 1";
    let ok = browser.wait_until(Duration::from_secs(30), signed_in);
    assert!(ok, "signed in, with the upload form: {}", browser.eval("document.body.innerText.slice(0, 400)"));
    assert_eq!(browser.eval("document.querySelector('#who-name').textContent"), "signed in as alice");

    // A chain typed wrong is refused with the parser's own words, as the command line says it.
    browser.eval("document.querySelector('#add-filter').value = 'blur'; document.querySelector('#add').click()");
    browser
        .eval("const i = document.querySelector('#step0-ksize'); i.value = '4'; i.dispatchEvent(new Event('input'))");
    let hint = browser.eval("document.querySelector('#step0-ksize-hint').textContent");
    let parser = run_vpd(&["run", "in.mp4", "-f", "blur:ksize=4", "-o", "out.mp4"]);
    assert!(
        stderr(&parser).contains(hint.as_str().unwrap()),
        "{hint} is not what the parser says: {}",
        stderr(&parser)
    );
    assert!(browser.wait_until(Duration::from_secs(10), "!document.querySelector('#chain-error').hidden"));
    assert_eq!(browser.eval("document.querySelector('#start').disabled"), Value::Bool(true));

    // The sample, picked through the file input; the anonymise preset; start.
    let sample = asset("sample.mp4");
    browser.set_files("#file", &[&sample]);
    browser.eval(
        "const p = document.querySelector('#preset'); p.value = 'anonymise'; p.dispatchEvent(new Event('change'))",
    );
    assert!(browser.wait_until(Duration::from_secs(10), "!document.querySelector('#start').disabled"));
    browser.screenshot(&shots.join("upload-1280.png"));
    browser.eval("document.querySelector('#start').click()");
    let running = "(() => { const r = document.querySelector('#jobs tbody tr.selected'); \
                   return !!r && (r.dataset.status === 'running' || r.dataset.status === 'done'); })()";
    assert!(browser.wait_until(Duration::from_secs(60), running), "the job runs, selected");
    assert_eq!(browser.eval("document.querySelector('#upload').dataset.state"), "done");
    browser.screenshot(&shots.join("running-1280.png"));
    let id = browser.eval("document.querySelector('#detail').dataset.job").as_str().unwrap().to_string();

    let done = format!(
        "(() => {{ const r = document.querySelector('#jobs tr[data-job=\"{id}\"]'); \
         return !!r && r.dataset.status === 'done' && r.dataset.percent === '100' \
         && document.querySelector('#result').readyState >= 2; }})()"
    );
    let ok = browser.wait_until(Duration::from_secs(120), &done);
    let state = browser.eval(&format!(
        "(() => {{ const v = document.querySelector('#result'); const r = document.querySelector('#jobs tr[data-job=\"{id}\"]'); \
         return [r && r.dataset.status, r && r.dataset.percent, v.src, v.readyState, v.networkState, v.error && v.error.message, \
         document.querySelector('#player').hidden, JSON.stringify(details.get('{id}') && [details.get('{id}').record.state, details.get('{id}').result, details.get('{id}').source]), selected]; }})()"
    ));
    assert!(ok, "done at 100 %, its result playable in the page: {state}");
    let frames = ffprobe(&sample).frames;
    let charts = browser.eval(
        "[+document.querySelector('#chart-throughput').dataset.points, +document.querySelector('#chart-latency').dataset.total, \
          +document.querySelector('#chart-workers').dataset.bars]",
    );
    assert!(charts[0].as_u64().unwrap() > 0, "throughput points: {charts}");
    assert_eq!(charts[1].as_u64(), Some(frames), "every frame in the latency chart: {charts}");
    assert!(charts[2].as_u64().unwrap() >= 1, "frames per worker: {charts}");
    let marked = "performance.getEntriesByName('vpd:first-chart-point').length";
    assert_eq!(browser.eval(marked).as_u64(), Some(1), "the page marks its first chart point once");

    // The page's player has the result's duration, within a frame; the download is the bytes
    // `vpd jobs fetch` gives.
    let fetched = dir.path().join("fetched.mp4");
    let out = vpd()
        .args(["jobs", "fetch", &id, "-o", fetched.to_str().unwrap(), "--server", &server.addr(), "--token", ALICE])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (duration, frame) = duration_and_frame(&fetched);
    let played = browser.eval("document.querySelector('#result').duration").as_f64().unwrap();
    assert!((played - duration).abs() <= frame, "the page plays {played} s, ffprobe says {duration} s");
    let digest = browser.eval_async(
        "(async () => { const href = document.querySelector('#download').getAttribute('href'); \
         const bytes = await (await fetch(href)).arrayBuffer(); \
         const d = await crypto.subtle.digest('SHA-256', bytes); \
         return Array.from(new Uint8Array(d)).map(b => b.toString(16).padStart(2, '0')).join(''); })()",
    );
    assert_eq!(digest.as_str().unwrap(), sha256_hex(&std::fs::read(&fetched).unwrap()), "the download is the result");

    // Compare with the original: the slider mode lays the original over the result.
    browser
        .eval("const c = document.querySelector('#compare'); c.value = 'slider'; c.dispatchEvent(new Event('change'))");
    assert!(browser.wait_until(Duration::from_secs(30), "document.querySelector('#original').readyState >= 2"));
    assert_eq!(browser.eval("document.querySelector('#slider-label').hidden"), Value::Bool(false));
    browser.screenshot(&shots.join("done-1280.png"));
    let no_scroll = "document.documentElement.scrollWidth <= window.innerWidth";
    assert_eq!(browser.eval(no_scroll), Value::Bool(true), "no horizontal scroll at 1280 px");
    browser.viewport(375, 800, true);
    assert!(browser.wait_until(Duration::from_secs(5), no_scroll), "no horizontal scroll at 375 px");
    browser.screenshot(&shots.join("done-375.png"));
    browser.eval("window.scrollTo(0, 0)");
    browser.screenshot(&shots.join("upload-375.png"));
    browser.viewport(1280, 900, false);

    // Rerun from history: the row, by keyboard, then Run again; the new job runs to its end.
    let row = format!("document.querySelector('#history tr[data-job=\"{id}\"]')");
    assert!(browser.wait_until(Duration::from_secs(30), &format!("!!{row}")), "the job is in history");
    browser.eval(&format!("{row}.focus()"));
    browser.type_text("", true);
    assert!(browser.wait_until(Duration::from_secs(10), "!document.querySelector('#rerun').hidden"));
    browser.viewport(375, 800, true);
    browser.eval("document.querySelector('#rerun').click()");
    let rerunning = format!(
        "(() => {{ const id = document.querySelector('#detail').dataset.job; \
         return id !== '{id}' && document.querySelector('#detail-status').textContent === 'running'; }})()"
    );
    if browser.wait_until(Duration::from_secs(60), &rerunning) {
        browser.screenshot(&shots.join("running-375.png"));
    }
    let rerun = format!(
        "(() => {{ const id = document.querySelector('#detail').dataset.job; \
         return id !== '{id}' && document.querySelector('#detail-status').textContent === 'done'; }})()"
    );
    assert!(browser.wait_until(Duration::from_secs(120), &rerun), "the rerun ran to its end");
    eprintln!("screenshots in {}", shots.display());
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Not a test but a measurement (`scripts/bench-web.sh`, BENCHMARKS.md): with a job running,
/// the page is loaded `VPD_BENCH_LOADS` times (default 5), each time timing its first chart
/// point from the navigation's start and from the end of its load event.
#[test]
#[ignore = "a benchmark: scripts/bench-web.sh runs it"]
fn first_chart_point_after_page_load() {
    let loads: usize = std::env::var("VPD_BENCH_LOADS").ok().and_then(|n| n.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    tokens_file(&tokens, true);
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--preview",
        "127.0.0.1:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let base = server.preview.clone().unwrap();
    // 900 frames of 720p through `faces`: long enough to load the page several times.
    let input = dir.path().join("in.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-frames:v", "900"])
        .args(["-c:v", "libx264", "-preset", "ultrafast"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(made.success());
    let _job =
        spawn_piped(client_cmd(&server.addr(), &input, "faces", &dir.path().join("out.mp4"), &["--token", ALICE]));
    let mut browser = Browser::launch();
    browser.viewport(1280, 900, false);
    browser.navigate(&format!("{base}?token={ALICE}"));
    let running = "(() => { const r = document.querySelector('#jobs tbody tr'); return !!r && r.dataset.status === 'running' \
                   && +r.dataset.percent > 0; })()";
    assert!(browser.wait_until(Duration::from_secs(60), running), "a job runs");
    let mark = "performance.getEntriesByName('vpd:first-chart-point').length > 0";
    let (mut from_start, mut from_load) = (Vec::new(), Vec::new());
    for _ in 0..loads {
        browser.navigate(&base);
        assert!(browser.wait_until(Duration::from_secs(30), mark), "a chart point");
        let t = browser.eval(
            "[performance.getEntriesByName('vpd:first-chart-point')[0].startTime, \
              performance.getEntriesByType('navigation')[0].loadEventEnd]",
        );
        let (point, load) = (t[0].as_f64().unwrap(), t[1].as_f64().unwrap());
        from_start.push(point);
        from_load.push(point - load);
        assert_eq!(browser.eval("document.querySelector('#jobs tbody tr').dataset.status"), "running");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let show = |v: &[f64]| v.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(" ");
    println!(
        "first chart point, {loads} loads: from navigation start median {:.0} ms ({} ms); after the load event median {:.0} ms ({} ms)",
        median(&mut from_start.clone()),
        show(&from_start),
        median(&mut from_load.clone()),
        show(&from_load)
    );
    drop(browser);
    let _ = server.stop();
}

#[test]
fn tokens_sessions_origins_and_roles_guard_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    tokens_file(&tokens, true);
    let input = clip(dir.path(), ClipSpec { frames: 6, ..ClipSpec::default() });
    let video = std::fs::read(&input).unwrap();
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--preview",
        "127.0.0.1:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let web = Web::new(server.preview.as_ref().unwrap());

    // A wrong token: 401, slower each time.
    let wrong = web.sign_in("wrong-token").expect_err("refused");
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    // A sign-in from another site's page: refused before the token is looked at.
    let form = format!("token={ALICE}");
    let crossed = web.request(
        "POST",
        "/api/login",
        "Origin: http://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        form.as_bytes(),
    );
    assert_eq!(crossed.status, 403, "{}", crossed.text());

    let alice = web.sign_in(ALICE).unwrap();
    assert!(alice.cookie.starts_with("vpd_session=") && alice.cookie.len() == "vpd_session=".len() + 64);
    let upload = "/api/jobs?chain=edges&container=mkv&name=clip.mkv&codec=ffv1";
    // The same request from another site, or without the anti-CSRF token, or without the
    // session: refused, and no job is made.
    let cross_site = format!(
        "Cookie: {}\r\nX-CSRF-Token: {}\r\nSec-Fetch-Site: cross-site\r\nOrigin: http://evil.example\r\n",
        alice.cookie, alice.csrf
    );
    assert_eq!(web.request("POST", upload, &cross_site, &video).status, 403);
    let no_csrf = format!("Cookie: {}\r\n{}", alice.cookie, web.origin());
    assert_eq!(web.request("POST", upload, &no_csrf, &video).status, 403);
    let bearer = format!("Authorization: Bearer {ALICE}\r\nX-CSRF-Token: {}\r\n{}", alice.csrf, web.origin());
    assert_eq!(web.request("POST", upload, &bearer, &video).status, 403, "a change needs the session");
    assert_eq!(web.get("/api/history", &alice).json()["jobs"].as_array().unwrap().len(), 0);

    // The read role signs in and looks, and cannot upload or control.
    let reader = web.sign_in(READER).unwrap();
    let refused = web.change(upload, &reader, &video);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.json()["error"].as_str().unwrap().contains("read-only"), "{}", refused.text());

    // Alice uploads; the job runs to its end.
    let made = web.change(upload, &alice, &video);
    assert_eq!(made.status, 201, "{}", made.text());
    let job = made.json()["job"].as_str().unwrap().to_string();
    wait_state(&web, &alice, &job, "done");
    let refused = web.change(&format!("/api/jobs/{job}/rerun"), &reader, b"");
    assert_eq!(refused.status, 403);
    assert_eq!(web.get("/api/history", &reader).json()["jobs"][0]["id"], job.as_str(), "the reader sees history");

    // Alice leaves the tokens file: at the SIGHUP her session ends at once; the reader's stays.
    tokens_file(&tokens, false);
    signal(&server.child.0, libc::SIGHUP);
    let ended = wait_for(Duration::from_secs(10), || web.get("/api/history", &alice).status == 401);
    assert!(ended, "alice's session outlived her removal");
    assert_eq!(web.get("/api/me", &alice).json()["signed_in"], false);
    assert_eq!(web.get("/api/history", &reader).status, 200);
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn uploads_are_bounded_a_cut_one_leaves_nothing_and_ranges_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), ClipSpec { frames: 12, ..ClipSpec::default() });
    let video = std::fs::read(&input).unwrap();
    let server =
        Server::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--preview", "127.0.0.1:0", "--max-upload", "2M"]);
    let web = Web::new(server.preview.as_ref().unwrap());
    // No token here: the page's session comes from /api/me, on loopback.
    let me = web.request("GET", "/api/me", "", b"");
    assert_eq!(me.json()["may_change"], true, "{}", me.text());
    let signed = Signed {
        cookie: me.header("set-cookie").unwrap().split(';').next().unwrap().to_string(),
        csrf: me.json()["csrf"].as_str().unwrap().to_string(),
    };
    let jobs_dir = server.work_dir.parent().unwrap().join("state").join("jobs");
    let upload = "/api/jobs?chain=edges&container=mp4&name=clip.mp4";

    // No Content-Length: 411. Over the limit: 413, from the header alone; nothing is stored.
    let extra = format!(
        "Cookie: {}\r\nX-CSRF-Token: {}\r\n{}Transfer-Encoding: chunked\r\n",
        signed.cookie,
        signed.csrf,
        web.origin()
    );
    let head = format!("POST {upload} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}\r\n", web.host);
    let chunked = exchange(&web.host, &head, b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(chunked.status, 411, "{}", chunked.text());
    let extra = format!("Cookie: {}\r\nX-CSRF-Token: {}\r\n{}", signed.cookie, signed.csrf, web.origin());
    let head = format!(
        "POST {upload} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        web.host,
        3 << 20
    );
    let over = exchange(&web.host, &head, b"");
    assert_eq!(over.status, 413, "{}", over.text());
    assert!(files_in(&jobs_dir).is_empty(), "{:?}", files_in(&jobs_dir));
    assert_eq!(web.get("/api/history", &signed).json()["jobs"].as_array().unwrap().len(), 0);

    // Cut off half-way: no files stay, and the record says why.
    {
        let head = format!(
            "POST {upload} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
            web.host,
            video.len()
        );
        let mut s = TcpStream::connect(&web.host).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&video[..video.len() / 2]).unwrap();
        let listed = wait_for(Duration::from_secs(10), || {
            web.get("/api/history", &signed).json()["jobs"].as_array().is_some_and(|j| !j.is_empty())
        });
        assert!(listed, "the upload has its record while it comes");
    }
    let mut cut = Value::Null;
    let failed = wait_for(Duration::from_secs(30), || {
        cut = web.get("/api/history", &signed).json()["jobs"][0].clone();
        cut["state"] == "failed"
    });
    assert!(failed, "a cut-off upload fails its job: {cut}");
    assert!(cut["error"].as_str().unwrap().contains("upload"), "{cut}");
    assert!(wait_for(Duration::from_secs(10), || files_in(&jobs_dir).is_empty()), "{:?}", files_in(&jobs_dir));

    // A whole one: the result in ranges, each the exact bytes of the whole.
    let made = web.change(upload, &signed, &video);
    assert_eq!(made.status, 201, "{}", made.text());
    let job = made.json()["job"].as_str().unwrap().to_string();
    let detail = wait_state(&web, &signed, &job, "done");
    assert_eq!(detail["result"], true, "{detail}");
    assert!(detail["charts"]["throughput"].is_array(), "{detail}");
    let path = format!("/api/jobs/{job}/result");
    let whole = web.get(&path, &signed);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.header("content-type"), Some("video/mp4"));
    let len = whole.body.len();
    assert_eq!(whole.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(ffprobe_bytes(dir.path(), &whole.body), 12, "the result holds every frame");
    let ranged =
        |range: &str| web.request("GET", &path, &format!("Cookie: {}\r\nRange: {range}\r\n", signed.cookie), b"");
    let part = ranged("bytes=100-199");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole.body[100..200]);
    assert_eq!(part.header("content-range"), Some(format!("bytes 100-199/{len}").as_str()));
    let tail = ranged("bytes=-50");
    assert_eq!(tail.body, whole.body[len - 50..]);
    let open = ranged(&format!("bytes={}-", len - 10));
    assert_eq!(open.body, whole.body[len - 10..]);
    let past = ranged(&format!("bytes={len}-"));
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some(format!("bytes */{len}").as_str()));
    let head = web.request("HEAD", &path, &format!("Cookie: {}\r\n", signed.cookie), b"");
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some(len.to_string().as_str()));
    let download = web.get(&format!("{path}?download=1"), &signed);
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"clip-vpd.mp4\"; filename*=UTF-8''clip-vpd.mp4")
    );
    assert_eq!(whole.header("content-security-policy"), Some("default-src 'self'; frame-ancestors 'none'"));
    let source = web.get(&format!("/api/jobs/{job}/source"), &signed);
    assert_eq!(source.body, video, "the original, as uploaded");
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Frames in a video held in memory, as ffprobe counts them.
fn ffprobe_bytes(dir: &Path, bytes: &[u8]) -> u64 {
    let path = dir.join("probe.mp4");
    std::fs::write(&path, bytes).unwrap();
    ffprobe(&path).frames
}

/// A video's duration as ffprobe reads it, and one frame's, in seconds.
fn duration_and_frame(path: &Path) -> (f64, f64) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .unwrap();
    let duration: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let rate = ffprobe(path).rate;
    let (n, d) = rate.split_once('/').unwrap();
    (duration, d.parse::<f64>().unwrap() / n.parse::<f64>().unwrap())
}
