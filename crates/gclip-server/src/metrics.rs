//! Prometheus metrics: requests by route and status, request latency by route, documents
//! written, and, read at each scrape, the documents of every collection served and each model
//! worker's batches. `prometheus-client` keeps the counters and writes the OpenMetrics text
//! format, which Prometheus reads (and asks for first when it scrapes).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency buckets, seconds.
const BUCKETS_SECONDS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A label value written with the text format's escapes: prometheus-client writes label values
/// as given, and a collection's directory name or a model's path may hold a quote or a
/// backslash, which would end the value early.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Text(String);

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Text,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectionLabels {
    collection: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: Text,
}

/// A model worker's totals when the metrics are read.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTotals {
    /// The model and the precision it runs in.
    pub model: String,
    pub batches: u64,
    pub items: u64,
    pub busy_seconds: f64,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS_SECONDS)
}

/// Counters kept by the server.
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    documents_written: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            documents_written: Counter::default(),
        }
    }
}

impl Metrics {
    /// Records one finished request to `route` (the route's pattern, not the path asked for,
    /// so that the label set stays bounded).
    pub fn record(&self, route: &str, status: u16, seconds: f64) {
        let route = Text(route.to_string());
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    /// Counts documents written through the API.
    pub fn documents_written(&self, n: u64) {
        self.documents_written.inc_by(n);
    }

    /// The text exposition ([`CONTENT_TYPE`]) of the counters, with the gauges and totals that
    /// are read at scrape time: each served collection's document count and each model
    /// worker's totals.
    pub fn render(
        &self,
        collections: &[(String, usize)],
        models: &[ModelTotals],
    ) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        // Clones share their values with the originals.
        registry.register(
            "gclip_http_requests",
            "HTTP requests by route and status",
            self.requests.clone(),
        );
        registry.register(
            "gclip_http_request_duration_seconds",
            "Request latency",
            self.latency.clone(),
        );
        registry.register(
            "gclip_documents_written",
            "Documents written through the API",
            self.documents_written.clone(),
        );
        let documents = Family::<CollectionLabels, Gauge>::default();
        for (name, n) in collections {
            documents
                .get_or_create(&CollectionLabels {
                    collection: Text(name.clone()),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        registry.register(
            "gclip_collection_documents",
            "Documents in each collection served",
            documents,
        );
        let batches = Family::<ModelLabels, Counter>::default();
        let items = Family::<ModelLabels, Counter>::default();
        let busy = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        for m in models {
            let labels = ModelLabels {
                model: Text(m.model.clone()),
            };
            batches.get_or_create(&labels).inc_by(m.batches);
            items.get_or_create(&labels).inc_by(m.items);
            busy.get_or_create(&labels).inc_by(m.busy_seconds);
        }
        registry.register(
            "gclip_model_batches",
            "Batches each model worker ran",
            batches,
        );
        registry.register(
            "gclip_model_items",
            "Texts and images each model worker embedded",
            items,
        );
        registry.register(
            "gclip_model_busy_seconds",
            "Time each model worker spent running batches",
            busy,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let m = Metrics::default();
        m.record("/api/collections/{name}/search", 200, 0.003);
        m.record("/api/collections/{name}/search", 200, 2.0);
        m.record("unmatched", 404, 0.0001);
        m.documents_written(4);
        let text = m
            .render(
                &[("shop".into(), 3), ("a\"b\\c".into(), 0)],
                &[ModelTotals {
                    model: "m.safetensors [bf16]".into(),
                    batches: 2,
                    items: 5,
                    busy_seconds: 0.5,
                }],
            )
            .unwrap();
        for line in [
            "# TYPE gclip_http_requests counter",
            "gclip_http_requests_total{route=\"/api/collections/{name}/search\",status=\"200\"} 2",
            "gclip_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
            "# TYPE gclip_http_request_duration_seconds histogram",
            "gclip_http_request_duration_seconds_count{route=\"/api/collections/{name}/search\"} 2",
            "gclip_documents_written_total 4",
            "gclip_collection_documents{collection=\"shop\"} 3",
            "gclip_collection_documents{collection=\"a\\\"b\\\\c\"} 0",
            "gclip_model_batches_total{model=\"m.safetensors [bf16]\"} 2",
            "gclip_model_items_total{model=\"m.safetensors [bf16]\"} 5",
            "gclip_model_busy_seconds_total{model=\"m.safetensors [bf16]\"} 0.5",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        // 3 ms falls in the 5 ms bucket and above; 2 s only in the 5 s one.
        let bucket = |le: &str| {
            let le = format!("le=\"{le}\"");
            text.lines()
                .filter(|l| l.starts_with("gclip_http_request_duration_seconds_bucket{"))
                .filter(|l| l.contains("route=\"/api/collections/{name}/search\""))
                .find(|l| l.contains(&le))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .to_string()
        };
        assert_eq!(bucket("0.0025"), "0");
        assert_eq!(bucket("0.005"), "1");
        assert_eq!(bucket("1.0"), "1");
        assert_eq!(bucket("5.0"), "2");
        assert_eq!(bucket("+Inf"), "2");
    }
}
