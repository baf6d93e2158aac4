//! An OTLP logs receiver built from the official OTLP protobuf definitions
//! (`opentelemetry-proto`'s prost/tonic types): gRPC (`LogsService/Export`, HTTP/2) and
//! http/protobuf (`POST /v1/logs`) on one port, listening on 127.0.0.1 inside a lab namespace
//! (a node-local collector). It keeps every record it received; `kill` makes it vanish as a
//! crashed collector does.
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use prost::Message;
use xtask::netns;

/// One log record as received, attributes flattened to text.
#[derive(Clone, Debug)]
pub struct Received {
    pub protocol: &'static str,
    pub event_name: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub resource: std::collections::BTreeMap<String, String>,
    pub body: String,
}

impl Received {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attributes.get(k).map(String::as_str)
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::ArrayValue(a)) => {
            a.values.iter().map(|v| text(&Some(v.clone()))).collect::<Vec<_>>().join(",")
        }
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn flat(kvs: &[KeyValue]) -> std::collections::BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<Received>>>);

impl Store {
    fn take(&self, req: ExportLogsServiceRequest, protocol: &'static str) {
        let mut out = self.0.lock().unwrap();
        for rl in req.resource_logs {
            let resource = flat(&rl.resource.map(|r| r.attributes).unwrap_or_default());
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    out.push(Received {
                        protocol,
                        event_name: r.event_name.clone(),
                        attributes: flat(&r.attributes),
                        resource: resource.clone(),
                        body: text(&r.body),
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl LogsService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.take(request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

async fn http_logs(State(store): State<Store>, body: Bytes) -> impl IntoResponse {
    match ExportLogsServiceRequest::decode(body) {
        Ok(req) => {
            store.take(req, "http/protobuf");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportLogsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(e) => {
            (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain")], e.to_string().into_bytes())
        }
    }
}

pub struct OtlpReceiver {
    pub port: u16,
    store: Store,
    rt: Option<tokio::runtime::Runtime>,
}

impl OtlpReceiver {
    /// Listens on 127.0.0.1:`port` (0: any) in namespace `ns`.
    pub fn start(ns: &str, port: u16) -> Result<OtlpReceiver> {
        let listener = netns::run_in(ns, || Ok(std::net::TcpListener::bind(("127.0.0.1", port))?))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let store = Store::default();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let grpc = tonic::service::Routes::new(LogsServiceServer::new(store.clone())).into_axum_router();
        let app = Router::new().route("/v1/logs", post(http_logs)).with_state(store.clone()).merge(grpc);
        let listener = {
            let _g = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OtlpReceiver { port, store, rt: Some(rt) })
    }

    pub fn records(&self) -> Vec<Received> {
        self.store.0.lock().unwrap().clone()
    }

    /// Stops answering at once, listener and connections closed (a crashed collector).
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
