//! `GET /node[?format=table]`: `podtrace node`'s report of this node (JSON, or its table), read
//! when asked, pods named from the agent's pod cache. For `kubectl podtrace node <node>`.
use axum::{
    extract::{RawQuery, State as AxState},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::api::ApiState;
use crate::{
    cmd::node::{NodeArgs, gather},
    node::pod_source::PodCache,
    report::{
        node::render_table,
        table::{Format, Style},
    },
};

/// What `/node` needs from the agent.
#[derive(Clone)]
pub struct NodeSource {
    pub enis: Vec<String>,
    pub cache: PodCache,
}

impl NodeSource {
    fn answer(&self, format: Format) -> anyhow::Result<String> {
        let args = NodeArgs {
            output: format,
            max_ips_per_eni: None,
            instance_type: None,
            pods_file: None,
            enis: self.enis.clone(),
            watch: None,
        };
        let r = gather(&args, |_| Ok(self.cache.all()))?;
        Ok(match format {
            Format::Json => serde_json::to_string(&r)? + "\n",
            Format::Table => render_table(&r, Style::plain()),
        })
    }
}

pub async fn node(AxState(api): AxState<ApiState>, RawQuery(q): RawQuery) -> Response {
    let format = match q.as_deref().unwrap_or("") {
        "" | "format=json" => Format::Json,
        "format=table" => Format::Table,
        other => {
            return (StatusCode::BAD_REQUEST, format!("unknown query {other:?} (format=json|table)\n"))
                .into_response();
        }
    };
    let source = api.node.clone();
    // Netlink dumps, rule reads and IMDS: blocking work, off the API's threads.
    match tokio::task::spawn_blocking(move || source.answer(format)).await {
        Ok(Ok(body)) => {
            let kind = if format == Format::Json { "application/json" } else { "text/plain; charset=utf-8" };
            ([(header::CONTENT_TYPE, kind)], body).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
