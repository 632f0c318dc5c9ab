//! The Prometheus text exposition format (version 0.0.4), written by hand: a few counter, gauge
//! and histogram families whose values come from job events, including histograms already
//! bucketed per job and added up here, which a registry of live metrics does not model.

use std::fmt::Write;

use super::Buckets;

/// The `Content-Type` of a `/metrics` response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds one exposition, family by family.
#[derive(Default)]
pub struct Exposition(String);

/// A metric family's type.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Exposition::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, kind: Kind, name: &str, help: &str, value: f64) {
        self.labelled(kind, name, help, "", &[("", value)]);
    }

    /// A family with one sample per value of the label `label`.
    pub fn labelled(&mut self, kind: Kind, name: &str, help: &str, label: &str, samples: &[(&str, f64)]) {
        self.header(
            name,
            help,
            match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            },
        );
        for (value, sample) in samples {
            if label.is_empty() {
                let _ = writeln!(self.0, "{name} {}", number(*sample));
            } else {
                let _ = writeln!(self.0, "{name}{{{label}=\"{}\"}} {}", escape(value), number(*sample));
            }
        }
    }

    /// A histogram family: cumulative buckets per bound, `+Inf`, sum and count.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], b: &Buckets) {
        self.header(name, help, "histogram");
        for (bound, count) in bounds.iter().zip(b.counts.iter().chain(std::iter::repeat(&0))) {
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{}\"}} {count}", number(*bound));
        }
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {}", b.count);
        let _ = writeln!(self.0, "{name}_sum {}", number(b.sum));
        let _ = writeln!(self.0, "{name}_count {}", b.count);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.0
    }
}

fn number(v: f64) -> String {
    if v.is_finite() { format!("{v}") } else { "NaN".into() }
}

fn escape(label_value: &str) -> String {
    label_value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_text_format() {
        let mut e = Exposition::new();
        e.single(Kind::Counter, "vpd_frames_processed_total", "Frames processed.", 42.0);
        e.labelled(Kind::Counter, "vpd_jobs_total", "Jobs by outcome.", "outcome", &[("done", 2.0), ("fail\"ed", 1.0)]);
        e.histogram("vpd_x_seconds", "X.", &[0.5, 1.0], &Buckets { counts: vec![1, 3], sum: 2.25, count: 4 });
        assert_eq!(
            e.finish(),
            "# HELP vpd_frames_processed_total Frames processed.\n# TYPE vpd_frames_processed_total counter\n\
             vpd_frames_processed_total 42\n\
             # HELP vpd_jobs_total Jobs by outcome.\n# TYPE vpd_jobs_total counter\n\
             vpd_jobs_total{outcome=\"done\"} 2\nvpd_jobs_total{outcome=\"fail\\\"ed\"} 1\n\
             # HELP vpd_x_seconds X.\n# TYPE vpd_x_seconds histogram\n\
             vpd_x_seconds_bucket{le=\"0.5\"} 1\nvpd_x_seconds_bucket{le=\"1\"} 3\nvpd_x_seconds_bucket{le=\"+Inf\"} 4\n\
             vpd_x_seconds_sum 2.25\nvpd_x_seconds_count 4\n"
        );
    }
}
