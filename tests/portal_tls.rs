//! The portal served over TLS by sealgate itself, with the development certificate.

mod https;

use std::sync::Arc;
use std::time::Duration;

use sealgate::keys;
use sealgate::portal::{
    MemoryHeldMessages, PortalContext, PortalSettings, SendLimits, serve_portal,
};
use sealgate::queue::Spool;
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[tokio::test]
async fn portal_serves_https_with_hsts() {
    let dir = tempfile::tempdir().unwrap();
    keys::create_development_keys(dir.path(), "localhost").expect("development keys");
    let certificate = dir.path().join("tls.crt");
    let tls = keys::load_server_tls(&certificate, &dir.path().join("tls.key")).expect("TLS");
    sealgate::store::ensure_master_key(dir.path()).unwrap();
    let keys = Arc::new(sealgate::store::MasterKeys::load(dir.path(), None).unwrap());
    let spool = Spool::start(&dir.path().join("queue.db"), keys, Arc::new(Notify::new())).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let settings = PortalSettings {
        base_url: format!("https://localhost:{}", address.port()),
        organisation: "Example Trust".into(),
        passcode_sender: "no-reply@trust.nhs.uk".into(),
        passcode_digits: 6,
        passcode_lifetime: Duration::from_secs(900),
        max_passcode_attempts: 5,
        session_lifetime: Duration::from_secs(900),
        send_limits: SendLimits::default(),
        max_reply_size: 1 << 20,
        tls: true,
    };
    let store = Arc::new(MemoryHeldMessages::default());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let context = PortalContext::new(settings, store, spool, Some(acceptor));
    let server = tokio::spawn(serve_portal(listener, Arc::new(context)));

    let text = https::get_lowercase(address, &certificate, "/m/unknown").await;

    assert!(text.starts_with("http/1.1 404"), "{text}");
    assert!(
        text.contains("strict-transport-security: max-age=31536000"),
        "{text}"
    );
    assert!(
        text.contains("content-security-policy: default-src 'none'"),
        "{text}"
    );
    assert!(text.contains("this link is not valid"), "{text}");
    server.abort();
}
