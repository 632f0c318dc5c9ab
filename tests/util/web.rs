//! HTTP, Server-Sent Events and a real headless Chromium, for the dashboard tests.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::ChildGuard;

/// `GET url`: status, content type and body, whatever the status.
pub fn get(url: &str) -> (u16, String, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = response.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap();
    (status, content_type, body)
}

/// `GET url` as JSON, asserting a 200.
pub fn get_json(url: &str) -> Value {
    let (status, content_type, body) = get(url);
    assert_eq!(status, 200, "GET {url}: {}", String::from_utf8_lossy(&body));
    assert!(content_type.starts_with("application/json"), "GET {url}: {content_type}");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `event:` name.
    pub name: String,
    /// Its `data:`, parsed.
    pub data: Value,
}

/// An open `/events` stream read on its own thread.
pub struct EventStream {
    rx: crossbeam_channel::Receiver<SseEvent>,
}

impl EventStream {
    /// Opens `url` (a `/events` URL) and checks it is an event stream.
    pub fn open(url: &str) -> EventStream {
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(content_type, "text/event-stream");
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let reader = BufReader::new(response.into_body().into_reader());
        std::thread::spawn(move || {
            let (mut name, mut data) = (String::new(), String::new());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !data.is_empty() {
                        let event = SseEvent {
                            name: std::mem::take(&mut name),
                            data: serde_json::from_str(&data).expect("event data is JSON"),
                        };
                        data.clear();
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                } else if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            // The stream ended: the sender drops and the receiver sees it.
        });
        EventStream { rx }
    }

    /// The next event, or `None` when the stream ended; panics after `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<SseEvent> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Some(e),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => panic!("no event within {timeout:?}"),
        }
    }
}

/// `promtool check metrics` on `text`: Prometheus's own linter of the exposition format.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `make test` installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejects /metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the unlabelled or labelled sample `series` (`name` or `name{label="v"}`).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// Headless Debian Chromium driven over the DevTools protocol, killed when dropped.
pub struct Browser {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _child: ChildGuard,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on a blank page and connects to that page.
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1400,860",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (Debian package chromium; `make test` installs it)");
        // Chromium prints where its DevTools listen on stderr; keep draining it after that.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let child = ChildGuard(child);
        let browser_ws = rx.recv_timeout(Duration::from_secs(60)).expect("chromium did not start its DevTools");
        let port = browser_ws.trim_start_matches("ws://").split(['/', ':']).nth(1).unwrap().to_string();
        let pages = get_json(&format!("http://127.0.0.1:{port}/json/list"));
        let page_ws = pages
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let (ws, _) = tungstenite::connect(page_ws.as_str()).expect("connecting to the page's DevTools");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        }
        Browser { ws, next_id: 0, _child: child, _profile: profile }
    }

    /// Calls a DevTools method and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(tungstenite::Message::text(request)).unwrap();
        loop {
            let message = self.ws.read().unwrap_or_else(|e| panic!("{method}: {e}"));
            let tungstenite::Message::Text(text) = message else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {}", reply["error"]);
                return reply["result"].clone();
            }
        }
    }

    /// Opens `url` in the page.
    pub fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({ "url": url }));
        assert!(result.get("errorText").is_none(), "navigating to {url}: {result}");
    }

    /// Evaluates `expression` in the page and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Evaluates `expression`, awaiting it if it is a promise, and returns its value.
    pub fn eval_async(&mut self, expression: &str) -> Value {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params);
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Puts `files` in the file input `selector`, as a user picking them would.
    pub fn set_files(&mut self, selector: &str, files: &[&Path]) {
        let found =
            self.call("Runtime.evaluate", json!({ "expression": format!("document.querySelector('{selector}')") }));
        let object = found["result"]["objectId"].as_str().unwrap_or_else(|| panic!("no {selector}")).to_string();
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        self.call("DOM.setFileInputFiles", json!({ "files": files, "objectId": object }));
    }

    /// Types `text` into the focused element, then presses Enter if `enter`: the keyboard's way.
    pub fn type_text(&mut self, text: &str, enter: bool) {
        self.call("Input.insertText", json!({ "text": text }));
        if enter {
            for kind in ["keyDown", "keyUp"] {
                let key =
                    json!({ "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r" });
                self.call("Input.dispatchKeyEvent", key);
            }
        }
    }

    /// Lays the page out at `width` × `height` CSS pixels (a phone's when `mobile`).
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile });
        self.call("Emulation.setDeviceMetricsOverride", metrics);
    }

    /// Evaluates `expression` until it is `true`; returns whether it became so within `timeout`.
    pub fn wait_until(&mut self, timeout: Duration, expression: &str) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.eval(expression) == Value::Bool(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Saves a PNG screenshot of the page.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}
