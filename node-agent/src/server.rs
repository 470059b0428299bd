//! `/metrics` (Prometheus text format) and `/healthz` on the metrics address. `/healthz`
//! answers 200 `ok` while the agent is live (see [`crate::liveness`]) and 503 with the
//! reason otherwise, so the kubelet restarts an agent whose kernel reads or watch are stuck.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use crate::error::AgentError;
use crate::liveness::Liveness;
use crate::metrics::Metrics;

/// The routes of the metrics server.
pub fn router(metrics: Metrics, liveness: Liveness) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let verdict = liveness.check(std::time::Instant::now());
                async move {
                    match verdict {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(e) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{}: {}\n", e.reason, e.message),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
}

/// Binds `addr` and serves the routes until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    liveness: Liveness,
) -> Result<(), AgentError> {
    let server_error = |source| AgentError::Server {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(server_error)?;
    axum::serve(listener, router(metrics, liveness))
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

    async fn serving(liveness: Liveness) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new().unwrap();
        metrics.set_applied(
            Some(&crate::metrics::tests::applied("kpersist_v1", "k/v1")),
            "k",
        );
        tokio::spawn(async move { axum::serve(listener, router(metrics, liveness)).await });
        addr
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let liveness = Liveness::new(std::time::Instant::now());
        liveness.observed(std::time::Instant::now(), None);
        let addr = serving(liveness).await;
        let health = get_path(addr, "/healthz").await;
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
            "{health}"
        );
        let text = get_path(addr, "/metrics").await;
        assert!(text.contains("kpersist_agent_applied_info"), "{text}");
    }

    #[tokio::test]
    async fn health_is_503_with_the_reason_when_not_live() {
        let now = std::time::Instant::now();
        let liveness = Liveness::new(now);
        liveness.observed(now, Some("EIO reading /sys/kernel/livepatch".into()));
        let addr = serving(liveness.clone()).await;
        let health = get_path(addr, "/healthz").await;
        assert!(
            health.starts_with("HTTP/1.1 503")
                && health.contains("KernelUnreadable: ")
                && health.contains("EIO"),
            "{health}"
        );
        liveness.observed(std::time::Instant::now(), None);
        let health = get_path(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    }
}
