//! OTLP export of flows, as log records (see `otlp_record` for why logs). The poll loop hands
//! records to a bounded queue and never waits: a full queue drops the record and counts it. A
//! delivery task takes batches off the queue and sends them with the OTLP exporter (gRPC or
//! http/protobuf) under a deadline; a batch the collector did not take is dropped and counted.
//! So at any time: records = exported + dropped + pending, exactly.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Args;
use opentelemetry::{InstrumentationScope, KeyValue, logs::LoggerProvider as _};
use opentelemetry_otlp::{LogExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider},
};

use super::super::options::parse_duration;

#[derive(Args, Clone, Debug)]
pub struct OtlpArgs {
    /// Export flows as OTLP log records to this collector (base URL: http://collector:4317 for
    /// grpc, http://collector:4318 for http/protobuf, which gets /v1/logs appended). Off
    /// without it.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// OTLP transport.
    #[arg(
        long = "otlp-protocol",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf",
        value_parser = ["grpc", "http/protobuf"]
    )]
    pub protocol: String,
    /// Every INTERVAL, each flow with packets since the previous round is exported once (its
    /// counters are cumulative: a flow's last record holds its totals).
    #[arg(long = "otlp-interval", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Records waiting for the collector at most; beyond, new records are dropped (counted).
    #[arg(long = "otlp-queue-size", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_size: u32,
    /// Records per export request.
    #[arg(long = "otlp-batch-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// An export request not answered within this is abandoned and its records counted as
    /// dropped.
    #[arg(long = "otlp-timeout", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// What became of the records, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Records made (offered to the queue).
    pub records: AtomicU64,
    /// Records the collector accepted.
    pub exported: AtomicU64,
    /// Records refused because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Records of export requests that failed or timed out.
    pub dropped_export_failed: AtomicU64,
    /// Records queued or in an export request under way.
    pub pending: AtomicU64,
}

/// How long the delivery task waits for a batch to fill once it has a first record.
const BATCH_DELAY: Duration = Duration::from_millis(200);

/// The agent's side of the export: make records, offer them.
pub struct OtlpExport {
    pub args: OtlpArgs,
    pub node: Option<String>,
    pub counters: Arc<ExportCounters>,
    logger: SdkLogger,
    // Kept alive for the logger (it has no processor: records go to our own queue).
    _provider: SdkLoggerProvider,
    queue: tokio::sync::mpsc::Sender<SdkLogRecord>,
}

impl OtlpExport {
    /// `None` when no endpoint is configured. Starts the delivery task (needs the runtime).
    pub fn start(args: &OtlpArgs, node: Option<String>) -> Result<Option<OtlpExport>> {
        let Some(endpoint) = args.endpoint.clone().filter(|e| !e.is_empty()) else { return Ok(None) };
        let mut exporter = match args.protocol.as_str() {
            "grpc" => LogExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(args.timeout)
                .build(),
            "http/protobuf" => LogExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/logs", endpoint.trim_end_matches('/')))
                .with_timeout(args.timeout)
                .build(),
            other => bail!("unknown OTLP protocol {other:?} (grpc, http/protobuf)"),
        }
        .with_context(|| format!("OTLP exporter for {endpoint}"))?;
        let mut resource = Resource::builder().with_service_name("podtrace");
        if let Some(n) = &node {
            resource = resource.with_attribute(KeyValue::new("k8s.node.name", n.clone()));
        }
        exporter.set_resource(&resource.build());
        let provider = SdkLoggerProvider::builder().build();
        let scope = InstrumentationScope::builder("podtrace").with_version(env!("CARGO_PKG_VERSION")).build();
        let logger = provider.logger_with_scope(scope.clone());
        let (queue, rx) = tokio::sync::mpsc::channel(args.queue_size as usize);
        let counters = Arc::new(ExportCounters::default());
        tokio::spawn(deliver(exporter, rx, counters.clone(), scope, args.batch_size as usize, args.timeout));
        log::info!("exporting flows as OTLP logs to {endpoint} ({})", args.protocol);
        Ok(Some(OtlpExport { args: args.clone(), node, counters, logger, _provider: provider, queue }))
    }

    pub fn logger(&self) -> &SdkLogger {
        &self.logger
    }

    /// Queues a record, or drops and counts it when the queue is full. Never waits.
    pub fn offer(&self, record: SdkLogRecord) {
        self.counters.records.fetch_add(1, Relaxed);
        self.counters.pending.fetch_add(1, Relaxed);
        if self.queue.try_send(record).is_err() {
            self.counters.pending.fetch_sub(1, Relaxed);
            self.counters.dropped_queue_full.fetch_add(1, Relaxed);
        }
    }
}

async fn deliver(
    exporter: LogExporter,
    mut queue: tokio::sync::mpsc::Receiver<SdkLogRecord>,
    counters: Arc<ExportCounters>,
    scope: InstrumentationScope,
    batch_size: usize,
    timeout: Duration,
) {
    let mut batch: Vec<SdkLogRecord> = Vec::with_capacity(batch_size);
    let mut failing = false;
    loop {
        let Some(first) = queue.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> = batch.iter().map(|r| (r, &scope)).collect();
        let n = batch.len() as u64;
        let result = tokio::time::timeout(timeout, exporter.export(LogBatch::new(&refs))).await;
        drop(refs);
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        };
        match error {
            None => {
                counters.exported.fetch_add(n, Relaxed);
                if failing {
                    log::warn!("OTLP export works again");
                    failing = false;
                }
            }
            Some(e) => {
                counters.dropped_export_failed.fetch_add(n, Relaxed);
                // Once per outage, not once per batch.
                if !failing {
                    log::warn!("OTLP export failed, dropping records until it works again: {e}");
                    failing = true;
                }
            }
        }
        counters.pending.fetch_sub(n, Relaxed);
        batch.clear();
    }
}
