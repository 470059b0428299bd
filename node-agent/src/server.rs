//! `/metrics` (Prometheus text format) and `/healthz` on the metrics address.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;

use crate::error::AgentError;
use crate::metrics::Metrics;

/// The routes of the metrics server.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
}

/// Binds `addr` and serves the routes until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<(), AgentError> {
    let server_error = |source| AgentError::Server {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(server_error)?;
    axum::serve(listener, router(metrics))
        .await
        .map_err(server_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_path(addr: SocketAddr, path: &str) -> String {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        sock.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        sock.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new().unwrap();
        metrics.set_applied(Some(("kpersist_v1", "k/v1")), "k");
        tokio::spawn(async move { axum::serve(listener, router(metrics)).await });
        let health = get_path(addr, "/healthz").await;
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
            "{health}"
        );
        let text = get_path(addr, "/metrics").await;
        assert!(text.contains("kpersist_agent_applied_info"), "{text}");
    }
}
