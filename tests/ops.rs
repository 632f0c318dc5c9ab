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
