//! The admin pages served over TLS by sealgate itself, with the development certificate:
//! HSTS, and a sign-in cookie that is `Secure` with the `__Host-` prefix.

mod https;

use std::sync::Arc;

use sealgate::admin::web::{AdminContext, serve_admin};
use sealgate::config::Config;
use sealgate::keys;
use sealgate::policy::NoCertificates;
use tokio::net::TcpListener;

#[tokio::test]
async fn admin_serves_https_with_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    keys::create_development_keys(dir.path(), "localhost").expect("development keys");
    let certificate = dir.path().join("tls.crt");
    let tls = keys::load_server_tls(&certificate, &dir.path().join("tls.key")).expect("TLS");
    let mut config = Config::development();
    config.server.data_dir = dir.path().join("data");
    config.server.keys_dir = dir.path().to_path_buf();
    sealgate::store::ensure_master_key(dir.path()).expect("master key");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let context = AdminContext::new(
        Arc::new(config),
        Arc::new(NoCertificates),
        None,
        Some(acceptor),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_admin(listener, Arc::new(context)));

    let text = https::get_lowercase(address, &certificate, "/login").await;

    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("strict-transport-security: max-age=31536000"),
        "{text}"
    );
    let cookie = text
        .lines()
        .find(|line| line.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie in {text}"));
    assert!(cookie.contains("__host-sealgate-admin-login="), "{cookie}");
    assert!(cookie.contains("; secure"), "{cookie}");
    assert!(cookie.contains("httponly"), "{cookie}");
    assert!(cookie.contains("samesite=strict"), "{cookie}");
    server.abort();
}
