//! TLS configuration (rustls, TLS 1.2 and 1.3) and the zero-setup self-signed
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Server configs for one certificate: for STARTTLS and for direct TLS (with the
/// XEP-0368 ALPN id `xmpp-client`).
#[derive(Clone)]
pub struct TlsMaterial {
    /// For STARTTLS.
    pub starttls: Arc<ServerConfig>,
    /// For direct TLS.
    pub direct: Arc<ServerConfig>,
}

/// Loads a PEM chain and key.
pub fn load(cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Pem { path: cert.into(), what: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: cert.into(), what: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: cert.into(), what: "no certificate found".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem { path: key.into(), what: e.to_string() })?;
    build(certs, key)
}

fn build(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<TlsMaterial, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let base = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let mut direct = base.clone();
    direct.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Ok(TlsMaterial { starttls: Arc::new(base), direct: Arc::new(direct) })
}

/// The self-signed certificate under `dir` (`cert.pem`, `key.pem`), generated for
/// `hosts` on first use and reused afterwards.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<TlsMaterial, TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !cert.exists() || !key.exists() {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, hosts.first().cloned().unwrap_or_default());
        // A bounded validity (rcgen's default runs to year 4096, which some peers'
        // certificate handling cannot represent): from yesterday for ten years.
        let year = 1970
            + (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
                / 31_556_952) as i32;
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        let c = params.self_signed(&kp)?;
        write_private(&key, kp.serialize_pem().as_bytes()).map_err(io(&key))?;
        std::fs::write(&cert, c.pem()).map_err(io(&cert))?;
        tracing::info!(cert = %cert.display(), "generated a self-signed ECDSA P-256 certificate");
    }
    load(&cert, &key)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

/// RFC 9266 `tls-exporter` channel binding for a TLS 1.3 connection.
pub fn channel_binding(conn: &rustls::ServerConnection) -> meerkat_sasl::ChannelBinding {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return meerkat_sasl::ChannelBinding::Unsupported;
    }
    let mut out = vec![0u8; 32];
    match conn.export_keying_material(&mut out, b"EXPORTER-Channel-Binding", None) {
        Ok(_) => meerkat_sasl::ChannelBinding::TlsExporter(out),
        Err(_) => meerkat_sasl::ChannelBinding::Unsupported,
    }
}
