//! What operators install: the systemd units (as systemd reads them), the monitoring
//! configuration (as Prometheus reads it, against what /metrics really exports).

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_units_verify_and_each_rates_ok_or_better_in_systemds_security_analysis() {
    let out = Command::new(repo("scripts/check-units.sh")).arg(env!("CARGO_BIN_EXE_vpd")).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    for unit in ["vpd-server.service", "vpd-worker@1.service", "vpd-preview.service"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("exposure level for {unit}:")))
            .unwrap_or_else(|| panic!("{unit}: {stdout}"));
        let exposure: f64 = line.split(": ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
        assert!(exposure <= 3.0, "{line}");
    }
}

/// The metric names a `/metrics` page exports.
fn exported(metrics_url: &str) -> std::collections::BTreeSet<String> {
    let (status, _, body) = crate::util::web::get(&format!("{metrics_url}metrics"));
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The `vpd_…` series an expression reads.
fn series(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("vpd_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

fn exprs_in_json(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs_in_json(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs_in_json(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_alerts_query_only_series_vpd_exports_and_prometheus_accepts_them() {
    use crate::util::cluster::{Namespace, Server, Worker};
    // What Prometheus itself says of the files.
    for args in [
        vec!["check", "config", "config/prometheus.yml"],
        vec!["check", "rules", "config/prometheus/alerts.yml"],
        vec!["test", "rules", "config/prometheus/alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(repo(""))
            .output()
            .expect("promtool (Debian package prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // What a server and a worker really export.
    let ns = Namespace::new("ops");
    let server = Server::on_broker(&ns, &["--metrics", "127.0.0.1:0"]);
    let (_worker, worker_metrics) = Worker::with_metrics(&ns, 1);
    let mut names = exported(server.metrics.as_ref().unwrap());
    names.extend(exported(&worker_metrics));

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("config/grafana/vpd.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    exprs_in_json(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let alerts = std::fs::read_to_string(repo("config/prometheus/alerts.yml")).unwrap();
    let rules: Vec<String> =
        alerts.lines().filter_map(|l| l.trim().strip_prefix("expr: ")).map(str::to_string).collect();
    assert_eq!(rules.len(), 5, "{rules:?}");
    exprs.extend(rules);
    let unknown: Vec<String> = exprs.iter().flat_map(|e| series(e)).filter(|s| !names.contains(s)).collect();
    assert!(unknown.is_empty(), "queried but not exported: {unknown:?}\nexported: {names:?}");
    // What the dashboard must show.
    for needed in [
        "vpd_frames_processed_total",
        "vpd_frame_latency_seconds_bucket",
        "vpd_tasks_queue_depth",
        "vpd_jobs_total",
        "vpd_worker_frames_processed_total",
        "vpd_broker_connected",
    ] {
        assert!(exprs.iter().any(|e| e.contains(needed)), "the dashboard shows {needed}");
    }
}

#[test]
fn the_containerfile_and_compose_file_parse_and_say_what_they_must() {
    let out = Command::new(repo("scripts/check-container.py")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
