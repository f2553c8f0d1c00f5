//! OpenTelemetry export: OTLP over HTTP when an endpoint is configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), off
//! otherwise.
//!
//! Spans never wait for the exporter: a finished span goes into a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2,048) with `try_send`; when it is full the span
//! is dropped and counted (`herald_trace_spans_dropped_total`). One thread of its own
//! drains the queue in batches (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512) at least
//! every `OTEL_BSP_SCHEDULE_DELAY` ms (default 5,000) and sends them with a blocking
//! HTTP client, so no request or commit ever waits for a collector. Shutdown flushes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::config::TracingSettings;

/// The exporter of a running hub; [`Tracing::shutdown`] flushes what is queued.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "Flushing the trace exporter failed.");
        }
        herald_hub::trace::set_enabled(false);
    }
}

/// The tracer provider for `settings`, or `None` when no endpoint is configured.
pub fn provider(settings: &TracingSettings) -> anyhow::Result<Option<SdkTracerProvider>> {
    let traces_endpoint = env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let endpoint = settings
        .otel_exporter_otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    if endpoint.is_none() && traces_endpoint.is_none() {
        return Ok(None);
    }
    if env_nonempty("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env_nonempty("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let protocol = match settings.otel_exporter_otlp_protocol.as_str() {
        "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        "grpc" => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not built in; use http/protobuf (port 4318 \
             on most collectors) or http/json"
        ),
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not one of http/protobuf, http/json"
        ),
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol);
    // The signal's own variable is a full URL the exporter reads as is; the general one
    // is a base URL under which traces go to `/v1/traces`.
    if let (None, Some(base)) = (&traces_endpoint, endpoint) {
        builder = builder.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    // OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT and _COMPRESSION are read by the exporter.
    let mut exporter = builder.build().context("setting up the OTLP exporter")?;
    let resource = Resource::builder()
        .with_service_name(settings.otel_service_name.clone())
        .build();
    exporter.set_resource(&resource);
    let processor = QueueProcessor::start(exporter, QueueConfig::from_env())?;
    let sampler = sampler(
        &settings.otel_traces_sampler,
        settings.otel_traces_sampler_arg.as_deref(),
    )?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build(),
    ))
}

/// Starts tracing with `provider`: the layer to add to the subscriber, and the handle
/// that flushes at shutdown.
pub fn start<S>(provider: SdkTracerProvider) -> (impl tracing_subscriber::Layer<S>, Tracing)
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let tracer = provider.tracer("herald");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false);
    herald_hub::trace::set_enabled(true);
    (layer, Tracing { provider })
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, as the OpenTelemetry
/// specification names them.
pub fn sampler(name: &str, arg: Option<&str>) -> anyhow::Result<Sampler> {
    let ratio = || -> anyhow::Result<f64> {
        match arg.map(str::trim).filter(|a| !a.is_empty()) {
            None => Ok(1.0),
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .with_context(|| {
                    format!("OTEL_TRACES_SAMPLER_ARG `{text}` is not a ratio from 0 to 1")
                }),
        }
    };
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => anyhow::bail!(
            "OTEL_TRACES_SAMPLER `{other}` is not one of always_on, always_off, traceidratio, \
             parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
        ),
    })
}

/// The queue's sizes, from the standard `OTEL_BSP_*` variables.
struct QueueConfig {
    max_queue: usize,
    max_batch: usize,
    delay: Duration,
}

impl QueueConfig {
    fn from_env() -> Self {
        let number = |name: &str, default: u64| {
            env_nonempty(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(default)
        };
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048) as usize;
        QueueConfig {
            max_queue,
            max_batch: (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) as usize).min(max_queue),
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)),
        }
    }
}

enum Message {
    Span(Box<SpanData>),
    Flush(SyncSender<OTelSdkResult>),
    Shutdown(SyncSender<OTelSdkResult>),
}

/// A span processor that never blocks the span's thread: see the module's comment.
#[derive(Debug)]
struct QueueProcessor {
    queue: SyncSender<Message>,
    dropped: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueueProcessor {
    fn start<E: SpanExporter + 'static>(exporter: E, config: QueueConfig) -> anyhow::Result<Self> {
        let (queue, spans) = mpsc::sync_channel(config.max_queue);
        let thread = std::thread::Builder::new()
            .name("herald-otel-export".into())
            .spawn(move || export_loop(exporter, spans, &config))
            .context("starting the trace export thread")?;
        Ok(QueueProcessor {
            queue,
            dropped: AtomicU64::new(0),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn call(&self, make: impl FnOnce(SyncSender<OTelSdkResult>) -> Message) -> OTelSdkResult {
        let (done, wait) = mpsc::sync_channel(1);
        self.queue
            .send(make(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        wait.recv().map_err(|_| OTelSdkError::AlreadyShutdown)?
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(Message::Span(Box::new(span))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("herald_trace_spans_dropped_total").increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.call(Message::Flush)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        let result = self.call(Message::Shutdown);
        if let Some(thread) = self.thread.lock().expect("not poisoned").take() {
            let _ = thread.join();
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "Spans were dropped while the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)."
            );
        }
        result
    }
}

/// Sends a batch (a no-op when empty); a failure is logged (throttled) and the batch lost.
fn export<E: SpanExporter>(exporter: &mut E, batch: &mut Vec<SpanData>) -> OTelSdkResult {
    if batch.is_empty() {
        return Ok(());
    }
    let result = futures_executor::block_on(exporter.export(std::mem::take(batch)));
    if let Err(error) = &result {
        static THROTTLE: herald_hub::log_throttle::LogThrottle =
            herald_hub::log_throttle::LogThrottle::new(Duration::from_secs(30));
        if let Some(suppressed) = THROTTLE.admit() {
            tracing::warn!(%error, suppressed, "Exporting spans failed; they are dropped.");
        }
    }
    result
}

fn export_loop<E: SpanExporter>(mut exporter: E, spans: Receiver<Message>, config: &QueueConfig) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(config.max_batch);
    let mut next = Instant::now() + config.delay;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match spans.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                if batch.len() >= config.max_batch {
                    let _ = export(&mut exporter, &mut batch);
                }
            }
            Ok(Message::Flush(done)) => {
                let _ = done.send(export(&mut exporter, &mut batch));
            }
            Ok(Message::Shutdown(done)) => {
                let result = export(&mut exporter, &mut batch);
                let _ = exporter.shutdown();
                let _ = done.send(result);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = export(&mut exporter, &mut batch);
                next = Instant::now() + config.delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = export(&mut exporter, &mut batch);
                let _ = exporter.shutdown();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_by_their_standard_names() {
        assert!(matches!(
            sampler("parentbased_always_on", None).unwrap(),
            Sampler::ParentBased(_)
        ));
        assert!(matches!(
            sampler("traceidratio", Some("0.25")).unwrap(),
            Sampler::TraceIdRatioBased(r) if r == 0.25
        ));
        assert!(sampler("traceidratio", Some("2")).is_err());
        assert!(sampler("sometimes", None).is_err());
    }
}
