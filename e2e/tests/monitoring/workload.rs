//! A workload's own exporter, which the test controls: its `/metrics` serves the error
//! count the test sets, so a gate query over real scraped series crosses its threshold
//! exactly when the test says.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The series the gate watches.
pub const ERRORS: &str = "kpersist_test_workload_errors";

/// A running exporter.
pub struct Workload {
    addr: String,
    errors: Arc<AtomicU64>,
}

impl Workload {
    /// Serves `/metrics` on a free loopback port, with no errors yet.
    pub async fn start() -> Workload {
        let errors = Arc::new(AtomicU64::new(0));
        let served = errors.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let errors = served.load(Ordering::SeqCst);
                async move {
                    format!(
                        "# HELP {ERRORS} Errors the workload saw.\n# TYPE {ERRORS} gauge\n\
                         {ERRORS} {errors}\n"
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the workload exporter");
        let addr = listener.local_addr().expect("bound address").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Workload { addr, errors }
    }

    /// `host:port` to scrape.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sets the errors the next scrape reports.
    pub fn set_errors(&self, errors: u64) {
        self.errors.store(errors, Ordering::SeqCst);
    }
}
