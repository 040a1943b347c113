//! OpenTelemetry traces (`[traces]`): spans for requests (`request`) and
//! storage calls (`storage.*`), exported over OTLP/HTTP (JSON) to a
//! collector when `otlp_endpoint` is set. Off by default: then no exporter
//! exists and no connection is ever attempted, and the spans, which are
//! `debug` level, are not even created (the log filter is `info`).
//!
//! A request carrying W3C `traceparent` continues the caller's trace.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::Deserialize;

/// The `[traces]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// Where spans are sent: an OTLP/HTTP traces URL
    /// (`http://collector:4318/v1/traces`); absent: no traces.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// The share of traces kept (0 to 1), for requests that do not come
    /// with a sampling decision of their own.
    pub sample_ratio: f64,
}

impl Default for TracesConfig {
    fn default() -> TracesConfig {
        TracesConfig {
            otlp_endpoint: None,
            service_name: "berth".to_owned(),
            sample_ratio: 1.0,
        }
    }
}

impl TracesConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err("traces.sample_ratio must be between 0 and 1".to_owned());
        }
        match &self.otlp_endpoint {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => Err(
                format!("traces.otlp_endpoint {url:?} is not an http(s) URL"),
            ),
            _ => Ok(()),
        }
    }
}

/// The tracer provider while traces are on; dropping it sends what is
/// still batched.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("berth: sending the last spans failed: {e}");
        }
    }
}

impl Traces {
    /// The exporter and the `tracing` layer that feeds it; `None` when
    /// traces are off.
    #[allow(clippy::type_complexity)]
    pub fn start<S>(
        config: &TracesConfig,
    ) -> Result<
        Option<(
            Traces,
            tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        )>,
        String,
    >
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("traces: the OTLP exporter: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let tracer = provider.tracer("berth");
        let layer = tracing_opentelemetry::layer().with_tracer(tracer);
        Ok(Some((Traces { provider }, layer)))
    }
}

/// Continues the trace a request's `traceparent` names, if any, in `span`.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}
