//! TLS for the authenticated TCP listener: bearer tokens never cross the node network in clear.
//! Handshakes run in their own tasks (bounded, with a deadline), so a slow client holds up no
//! one; finished connections are served within the same caps as every listener's.
use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject},
    },
    server::TlsStream,
};

/// Handshakes under way at once, and how long one may take.
const HANDSHAKES: usize = 64;
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// From PEM files, or a self-signed certificate made now: kube-apiserver's pod proxy does not
/// verify the certificates of pods (it dials them by IP), so what TLS gives here is privacy.
pub fn server_config(files: Option<(&Path, &Path)>) -> Result<ServerConfig> {
    let (certs, key) = match files {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading the TLS private key {}", key.display()))?;
            (certs, key)
        }
        None => {
            let made = rcgen::generate_simple_self_signed(vec!["podtrace-agent".to_string()])
                .context("making a self-signed TLS certificate")?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
            (vec![made.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")
}

/// Accepted TLS connections, served like any other listener's (see `listener`).
pub struct TlsListener {
    ready: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<TlsStream<TcpStream>>>,
}

/// Handshakes on the connections `tcp` accepts (bound beforehand, before anything is attached).
pub fn accepting(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
    let (tx, ready) = tokio::sync::mpsc::channel(HANDSHAKES);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of fds and the like: wait instead of spinning.
                    log::warn!("accepting TLS connections: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err(e)) => log::debug!("TLS handshake with {peer}: {e}"),
                    Err(_) => log::debug!("TLS handshake with {peer}: timed out"),
                }
            });
        }
    });
    TlsListener { ready: tokio::sync::Mutex::new(ready) }
}

impl super::listener::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;

    async fn accept(&self) -> std::io::Result<Self::Io> {
        match self.ready.lock().await.recv().await {
            Some(conn) => Ok(conn),
            // The accept loop only ends with the runtime.
            None => std::future::pending().await,
        }
    }
}
