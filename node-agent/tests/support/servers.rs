//! Real loopback servers for transport tests: a certificate authority and a server
//! certificate made per test with rcgen, an HTTPS server on tokio-rustls, and plain HTTP,
//! each answering every request with one canned response.

#![allow(dead_code)]
// Test support: a failed unwrap is the test's report (clippy.toml exempts #[test]
// functions only, not the helpers beside them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA and a server certificate it signed for `127.0.0.1`.
pub struct TestPki {
    /// The CA certificate, PEM: what a `caBundle` holds.
    pub ca_pem: String,
    server: Arc<ServerConfig>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kpersist test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        TestPki {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

/// What a server answers.
#[derive(Clone)]
pub enum Answer {
    /// 200 with this body.
    Body(Vec<u8>),
    /// 302 to this URL.
    Redirect(String),
    /// 302 to `path` on the same server, then 200 with `body` there.
    Moved {
        /// Where the body is.
        path: String,
        /// The body.
        body: Vec<u8>,
    },
}

/// Serves `answer` over plain HTTP on `ip` (any 127.x address); returns the address.
pub async fn http(ip: &str, answer: Answer) -> SocketAddr {
    serve(ip, None, answer).await
}

/// Serves `answer` over HTTPS with `pki`'s server certificate on 127.0.0.1.
pub async fn https(pki: &TestPki, answer: Answer) -> SocketAddr {
    serve(
        "127.0.0.1",
        Some(TlsAcceptor::from(pki.server.clone())),
        answer,
    )
    .await
}

async fn serve(ip: &str, tls: Option<TlsAcceptor>, answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let answer = answer.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    // A client that refuses the certificate ends the handshake: nothing to do.
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(sock).await {
                            respond(stream, &answer).await;
                        }
                    }
                    None => respond(sock, &answer).await,
                }
            });
        }
    });
    addr
}

async fn respond(mut stream: impl AsyncRead + AsyncWrite + Unpin, answer: &Answer) {
    let mut buf = vec![0u8; 4096];
    let len = stream.read(&mut buf).await.unwrap_or(0);
    let request = String::from_utf8_lossy(&buf[..len]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let moved;
    let answer = match answer {
        Answer::Moved { path: to, .. } if to != path => {
            moved = Answer::Redirect(to.clone());
            &moved
        }
        Answer::Moved { body, .. } => {
            moved = Answer::Body(body.clone());
            &moved
        }
        other => other,
    };
    let (head, body): (String, &[u8]) = match answer {
        Answer::Body(body) => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body,
        ),
        Answer::Redirect(to) | Answer::Moved { path: to, .. } => (
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            &[],
        ),
    };
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}
