//! Prometheus metrics: requests by route and status, request latency, model batches.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const BUCKETS_MS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// Cumulative bucket counts, sum of seconds, count.
type Histogram = (Vec<u64>, f64, u64);

/// Counters kept by the server.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub documents_written: AtomicU64,
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, route: &str, status: u16, ms: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((route.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let e = l
                .entry(route.to_string())
                .or_insert_with(|| (vec![0; BUCKETS_MS.len()], 0.0, 0));
            for (i, b) in BUCKETS_MS.iter().enumerate() {
                if ms <= *b {
                    e.0[i] += 1;
                }
            }
            e.1 += ms / 1000.0;
            e.2 += 1;
        }
    }

    /// The text exposition format; `extra` lines are appended (gauges computed by the caller).
    pub fn render(&self, extra: &[(String, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP gclip_http_requests_total HTTP requests by route and status.\n# TYPE gclip_http_requests_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((route, status), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "gclip_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str("# HELP gclip_http_request_duration_seconds Request latency.\n# TYPE gclip_http_request_duration_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (route, (buckets, sum, count)) in l.iter() {
                let route = escape(route);
                for (b, n) in BUCKETS_MS.iter().zip(buckets) {
                    let _ = writeln!(
                        out,
                        "gclip_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{}\"}} {n}",
                        b / 1000.0
                    );
                }
                let _ = writeln!(out, "gclip_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}");
                let _ = writeln!(
                    out,
                    "gclip_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
                );
                let _ = writeln!(
                    out,
                    "gclip_http_request_duration_seconds_count{{route=\"{route}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# TYPE gclip_documents_written_total counter\ngclip_documents_written_total {}",
            self.documents_written.load(Ordering::Relaxed)
        );
        for (line, v) in extra {
            let _ = writeln!(out, "{line} {v}");
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
