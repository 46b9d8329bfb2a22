//! TLS keys: loading the listener certificate and creating development keys.
//!
//! Listeners use rustls with the ring provider and accept TLS 1.2 and 1.3 only. Development
//! keys are a self-signed certificate; real deployments put their own files in `keys/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// File names of the development certificate and key inside the keys folder, which are
/// also the defaults of `inbound.tls_certificate` and `inbound.tls_key`.
const DEVELOPMENT_CERTIFICATE: &str = "tls.crt";
const DEVELOPMENT_KEY: &str = "tls.key";

/// Days a development certificate stays valid.
const DEVELOPMENT_VALIDITY_DAYS: i64 = 365;

/// A TLS key or certificate file that could not be read, parsed, used or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{path}: invalid PEM: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's error message.
        detail: String,
    },
    /// The certificate file contains no `CERTIFICATE` section.
    #[error("{path}: no PEM certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file contains no private key section.
    #[error("{path}: no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls rejected the pair, for example because the key does not match the certificate
    /// or uses an unsupported algorithm.
    #[error("failed to use {certificate} with {key}: {source}")]
    Rejected {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// rcgen could not generate the development certificate.
    #[error("failed to generate a development certificate for {hostname}: {source}")]
    Generate {
        /// The host name the certificate was for.
        hostname: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A file or folder could not be written.
    #[error("failed to write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Loads a PEM certificate chain and private key into a rustls server config that uses the
/// ring provider and allows TLS 1.2 and 1.3 only.
///
/// # Errors
///
/// [`KeyError::Read`] when a file cannot be read, [`KeyError::Pem`] for broken PEM,
/// [`KeyError::NoCertificate`] or [`KeyError::NoPrivateKey`] when a file lacks the
/// expected section, and [`KeyError::Rejected`] when rustls cannot use the pair.
pub fn load_server_tls(certificate: &Path, key: &Path) -> Result<Arc<ServerConfig>, KeyError> {
    let chain = read_certificates(certificate)?;
    let private_key = read_private_key(key)?;

    let rejected = |source| KeyError::Rejected {
        certificate: certificate.to_owned(),
        key: key.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(rejected)?;
    Ok(Arc::new(config))
}

/// Writes a self-signed development certificate (`tls.crt`) and its key (`tls.key`, mode
/// 0600) into `keys_dir` when either is missing. The certificate names `hostname`,
/// `localhost` and `127.0.0.1`. Returns whether it wrote them.
///
/// # Errors
///
/// [`KeyError::Generate`] when rcgen fails (for example on an invalid host name) and
/// [`KeyError::Write`] when the folder or a file cannot be written.
pub fn create_development_keys(keys_dir: &Path, hostname: &str) -> Result<bool, KeyError> {
    let certificate_path = keys_dir.join(DEVELOPMENT_CERTIFICATE);
    let key_path = keys_dir.join(DEVELOPMENT_KEY);
    if certificate_path.exists() && key_path.exists() {
        return Ok(false);
    }

    let generate_error = |source| KeyError::Generate {
        hostname: hostname.to_owned(),
        source,
    };
    let mut names = vec![hostname.to_owned()];
    for name in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|known| known.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
        }
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(generate_error)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(DEVELOPMENT_VALIDITY_DAYS);
    let key_pair = rcgen::KeyPair::generate().map_err(generate_error)?;
    let certificate = params.self_signed(&key_pair).map_err(generate_error)?;

    std::fs::create_dir_all(keys_dir).map_err(|source| KeyError::Write {
        path: keys_dir.to_owned(),
        source,
    })?;
    // The key goes first, so a crash in between never leaves a certificate without its key.
    write_file(&key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(&certificate_path, certificate.pem().as_bytes(), 0o644)?;
    Ok(true)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| KeyError::Pem {
            path: path.to_owned(),
            detail: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(KeyError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, KeyError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => KeyError::NoPrivateKey {
            path: path.to_owned(),
        },
        error => KeyError::Pem {
            path: path.to_owned(),
            detail: error.to_string(),
        },
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to a new file created with `mode`, so a private key is never readable
/// by others, not even for a moment.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;

    let write_error = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn development_keys_load_as_server_config() {
        let folder = tempfile::tempdir().unwrap();
        let created = create_development_keys(folder.path(), "mx.example.org").unwrap();
        assert!(created);

        let config = load_server_tls(
            &folder.path().join("tls.crt"),
            &folder.path().join("tls.key"),
        );
        assert!(config.is_ok(), "{:?}", config.err());
    }

    #[test]
    fn development_key_is_private() {
        let folder = tempfile::tempdir().unwrap();
        create_development_keys(folder.path(), "mx.example.org").unwrap();

        let mode = std::fs::metadata(folder.path().join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn development_keys_are_not_replaced() {
        let folder = tempfile::tempdir().unwrap();
        assert!(create_development_keys(folder.path(), "mx.example.org").unwrap());
        let first = std::fs::read(folder.path().join("tls.crt")).unwrap();

        assert!(!create_development_keys(folder.path(), "mx.example.org").unwrap());
        let second = std::fs::read(folder.path().join("tls.crt")).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn missing_certificate_names_the_file() {
        let folder = tempfile::tempdir().unwrap();
        let missing = folder.path().join("absent.crt");
        let error = load_server_tls(&missing, &folder.path().join("absent.key")).unwrap_err();

        assert!(matches!(error, KeyError::Read { .. }), "{error}");
        assert!(error.to_string().contains("absent.crt"), "{error}");
    }

    #[test]
    fn key_file_without_key_is_rejected() {
        let folder = tempfile::tempdir().unwrap();
        create_development_keys(folder.path(), "mx.example.org").unwrap();
        let certificate = folder.path().join("tls.crt");

        // The certificate file contains no private key section.
        let error = load_server_tls(&certificate, &certificate).unwrap_err();
        assert!(matches!(error, KeyError::NoPrivateKey { .. }), "{error}");
        assert!(error.to_string().contains("tls.crt"), "{error}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        create_development_keys(first.path(), "one.example.org").unwrap();
        create_development_keys(second.path(), "two.example.org").unwrap();

        let error = load_server_tls(
            &first.path().join("tls.crt"),
            &second.path().join("tls.key"),
        )
        .unwrap_err();
        assert!(matches!(error, KeyError::Rejected { .. }), "{error}");
    }
}
