//! The binary's life: connect (failing fast with a clear message when no cluster answers),
//! serve metrics and probes, keep the caches warm, reconcile while holding the leader
//! Lease, and on SIGTERM/SIGINT stop reconciling and release the Lease. Client required.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::Client;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::cli::Cli;
use crate::controller::{self, Settings};
use crate::error::StartupError;
use crate::leader::{self, LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::server::{self, Endpoints};

/// How long the start-up version call may take before the operator gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long releasing the Lease may take at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the cluster and proves it answers, so a wrong kubeconfig fails at once
/// instead of as endless watch retries.
pub async fn connect() -> Result<Client, StartupError> {
    let config = kube::Config::infer()
        .await
        .map_err(StartupError::NoKubeconfig)?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| StartupError::Client {
        server: server.clone(),
        source,
    })?;
    let version = tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version())
        .await
        .map_err(|_| StartupError::ClusterTimeout {
            server: server.clone(),
            seconds: CONNECT_TIMEOUT.as_secs(),
        })?
        .map_err(|source| StartupError::ClusterUnreachable {
            server: server.clone(),
            source,
        })?;
    tracing::info!(%server, version = %version.git_version, "connected to Kubernetes");
    Ok(client)
}

/// Runs the operator until a signal (clean exit) or the loss of the Lease (error exit, so
/// the pod restarts as a candidate).
pub async fn run(cli: Cli) -> Result<(), StartupError> {
    crate::install_crypto_provider();
    let mut terminate = signal(SignalKind::terminate()).map_err(StartupError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartupError::Signal)?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    };
    tokio::pin!(shutdown);

    // A signal while the API server is still being reached ends the process at once.
    let client = tokio::select! {
        client = connect() => client?,
        () = &mut shutdown => return Ok(()),
    };
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(cli.metrics_addr)
        .await
        .map_err(|source| StartupError::MetricsBind {
            addr: cli.metrics_addr,
            source,
        })?;
    let app = server::router(Endpoints {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let http = tokio::spawn(axum::serve(listener, app).into_future());
    tracing::info!(addr = %cli.metrics_addr, "serving /metrics, /healthz and /readyz");

    let identity = leader::default_identity();
    let (leading_tx, leading_rx) = watch::channel(!cli.leader_elect);
    metrics.set_leader(!cli.leader_elect);
    let mut controller = tokio::spawn(controller::run(
        client.clone(),
        metrics.clone(),
        Settings {
            identity: identity.clone(),
            ready,
            leading: leading_rx,
            namespace: cli.lease_namespace.clone(),
        },
    ));

    let outcome = if cli.leader_elect {
        let lease = LeaseConfig::new(
            cli.lease_name.clone(),
            cli.lease_namespace.clone(),
            identity,
        );
        let mut elector = LeaderElector::new(client, lease);
        let releaser = elector.releaser();
        tracing::info!(lease = %cli.lease_name, namespace = %cli.lease_namespace, "waiting for the leader lease");
        let outcome = tokio::select! {
            () = &mut shutdown => Ok(()),
            outcome = lead(&mut elector, &leading_tx, &metrics, &cli) => outcome,
        };
        // Stop reconciling before giving the Lease up, so two leaders never overlap.
        controller.abort();
        metrics.set_leader(false);
        // A shutdown must not hang on an API server that stopped answering.
        match tokio::time::timeout(RELEASE_TIMEOUT, releaser.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                %error,
                "releasing the leader lease failed; another replica takes over when it expires"
            ),
            Err(_) => tracing::warn!(
                "releasing the leader lease timed out; another replica takes over when it expires"
            ),
        }
        outcome
    } else {
        tokio::select! {
            () = &mut shutdown => Ok(()),
            result = &mut controller => Err(StartupError::Controller(match result {
                Ok(()) => "the watches ended".to_string(),
                Err(error) => error.to_string(),
            })),
        }
    };
    controller.abort();
    http.abort();
    outcome
}

/// Acquires the Lease, lets reconciles run, and returns when the Lease is lost.
async fn lead(
    elector: &mut LeaderElector,
    leading: &watch::Sender<bool>,
    metrics: &Metrics,
    cli: &Cli,
) -> Result<(), StartupError> {
    elector
        .acquire()
        .await
        .map_err(|source| StartupError::LeaseForbidden {
            namespace: cli.lease_namespace.clone(),
            name: cli.lease_name.clone(),
            source,
        })?;
    metrics.set_leader(true);
    let _ = leading.send(true);
    elector.hold().await;
    let _ = leading.send(false);
    metrics.set_leader(false);
    Err(StartupError::LeaseLost {
        namespace: cli.lease_namespace.clone(),
        name: cli.lease_name.clone(),
    })
}
