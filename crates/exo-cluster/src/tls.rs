//! `PeerTls`: how peer connections are made and accepted. Without a cluster key, plain TCP (an open cluster).
//! With one, TLS 1.3 through rustls, mutually authenticated with raw public keys (RFC 7250): every node derives
//! the same Ed25519 key pair from the cluster key (HKDF-SHA256), presents its public key, and accepts only a peer
//! that presents that same key and proves it holds the private half. A node with another key or none, or any
//! other TCP client, fails the handshake before a byte of the peer protocol is exchanged. Why this and not
//! certificates or Noise: `docs/security.md`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::cluster_key::ClusterKey;
use crate::error::{ClusterError, Result};

/// How long a peer may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The name clients ask for: nodes are known by their key, not by a host name.
const SERVER_NAME: &str = "exo-peer";
/// HKDF labels: changing them makes every key a new one.
const KEY_SALT: &[u8] = b"exo cluster key v1";
const KEY_INFO: &[u8] = b"peer tls ed25519 seed";

/// How this node's peer connections are secured. Cheap to clone.
#[derive(Clone, Default)]
pub struct PeerTls {
    keyed: Option<Arc<Keyed>>,
    refused: Arc<Mutex<HashSet<IpAddr>>>,
}

struct Keyed {
    server: tokio_rustls::TlsAcceptor,
    client: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.keyed.is_some() { "PeerTls(keyed)" } else { "PeerTls(open)" })
    }
}

impl PeerTls {
    /// An open cluster: plain TCP.
    pub fn open() -> Self {
        Self::default()
    }

    /// TLS with credentials derived from `key`.
    pub fn keyed(key: &ClusterKey) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pkcs8 = ed25519_pkcs8(&derive_seed(key)?);
        let signing = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)))
            .map_err(|e| ClusterError::Key(format!("cannot make the TLS key: {e}")))?;
        let spki = signing
            .public_key()
            .ok_or_else(|| ClusterError::Key("the TLS key has no public half".into()))?
            .as_ref()
            .to_vec();
        let certified = Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki.clone())], signing));
        let verifier = Arc::new(SameKey { spki, algorithms: provider.signature_verification_algorithms });
        let tls13 = |e: rustls::Error| ClusterError::Key(format!("TLS set-up: {e}"));

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls13)?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified.clone())));
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls13)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified)));
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            keyed: Some(Arc::new(Keyed {
                server: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
                client: tokio_rustls::TlsConnector::from(Arc::new(client)),
            })),
            refused: Arc::default(),
        })
    }

    pub fn is_keyed(&self) -> bool {
        self.keyed.is_some()
    }

    /// The server side of a new connection: the stream to serve, or why it was refused (logged once per address).
    pub async fn accept(&self, tcp: TcpStream) -> Option<PeerStream> {
        let _ = tcp.set_nodelay(true);
        let remote = tcp.peer_addr().ok();
        let local = tcp.local_addr().ok();
        let Some(keyed) = &self.keyed else { return Some(PeerStream { io: Io::Plain(tcp), local, remote }) };
        let refusal = match tokio::time::timeout(HANDSHAKE_TIMEOUT, keyed.server.accept(tcp)).await {
            Ok(Ok(tls)) => return Some(PeerStream { io: Io::Tls(Box::new(tls.into())), local, remote }),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
        };
        self.log_refusal(remote, &refusal);
        None
    }

    fn log_refusal(&self, remote: Option<SocketAddr>, why: &str) {
        let Some(ip) = remote.map(|r| r.ip()) else { return };
        let first = self.refused.lock().is_ok_and(|mut r| r.insert(ip));
        if first {
            tracing::warn!(
                "refused a peer connection from {ip}: {why} (a node with another cluster key or none, or not an \
                 exo node); later refusals from {ip} are logged at debug level"
            );
        } else {
            tracing::debug!(
                "refused a peer connection from {}: {why}",
                remote.map(|r| r.to_string()).unwrap_or_default()
            );
        }
    }

    /// The client side: a connection to `address` (host:port), with the handshake done.
    pub async fn connect(&self, address: &str) -> std::io::Result<PeerStream> {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let (local, remote) = (tcp.local_addr().ok(), tcp.peer_addr().ok());
        let Some(keyed) = &self.keyed else { return Ok(PeerStream { io: Io::Plain(tcp), local, remote }) };
        let name = ServerName::try_from(SERVER_NAME).map_err(std::io::Error::other)?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, keyed.client.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake in time"))?
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake with {address} failed: {e}")))?;
        Ok(PeerStream { io: Io::Tls(Box::new(tls.into())), local, remote })
    }
}

/// The 32-byte Ed25519 seed every holder of `key` derives.
fn derive_seed(key: &ClusterKey) -> Result<[u8; 32]> {
    struct Len;
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, KEY_SALT).extract(key.secret());
    let mut seed = [0u8; 32];
    prk.expand(&[KEY_INFO], Len)
        .and_then(|okm| okm.fill(&mut seed))
        .map_err(|_| ClusterError::Key("cannot derive the TLS key".into()))?;
    Ok(seed)
}

/// An Ed25519 private key as PKCS#8 v1 (RFC 8410): a fixed DER prefix, then the seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// Accepts exactly one raw public key, on both sides of the handshake.
#[derive(Debug)]
struct SameKey {
    spki: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SameKey {
    fn check(&self, presented: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        if presented.as_ref() == self.spki.as_slice() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn signature(
        &self,
        message: &[u8],
        key: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.check(key)?;
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(key.as_ref()),
            dss,
            &self.algorithms,
        )
    }
}

impl ServerCertVerifier for SameKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for SameKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// A peer connection, plain or TLS, with its addresses (the peer service reads the caller's).
pub struct PeerStream {
    io: Io,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Connected for PeerStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo { local_addr: self.local, remote_addr: self.remote }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 that echoes one message per accepted connection.
    async fn echo_server(tls: PeerTls) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Some(mut s) = tls.accept(tcp).await {
                        let mut buf = [0u8; 5];
                        if s.read_exact(&mut buf).await.is_ok() {
                            let _ = s.write_all(&buf).await;
                            let _ = s.flush().await;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(client: &PeerTls, address: &str) -> std::io::Result<[u8; 5]> {
        let mut s = client.connect(address).await?;
        s.write_all(b"hello").await?;
        s.flush().await?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn only_holders_of_the_same_key_connect() {
        let key = ClusterKey::generate().unwrap();
        let server = PeerTls::keyed(&key).unwrap();
        let address = echo_server(server.clone()).await;
        // The same key, derived afresh: the handshake completes and bytes flow.
        assert_eq!(&round_trip(&PeerTls::keyed(&key).unwrap(), &address).await.unwrap(), b"hello");
        // Another key: the handshake fails. None: nothing comes back but a TLS alert (content type 21).
        let other = PeerTls::keyed(&ClusterKey::generate().unwrap()).unwrap();
        assert!(round_trip(&other, &address).await.is_err());
        let plain = round_trip(&PeerTls::open(), &address).await;
        assert!(plain.as_ref().map_or(true, |b| b[0] == 0x15), "{plain:?}");
        // Refusals are remembered per address (logged once).
        assert_eq!(server.refused.lock().unwrap().len(), 1);
        // A keyed client does not talk to an open server either.
        let open = echo_server(PeerTls::open()).await;
        assert!(PeerTls::keyed(&key).unwrap().connect(&open).await.is_err());
    }

    #[test]
    fn every_holder_derives_the_same_credentials_and_other_keys_others() {
        let key = ClusterKey::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(derive_seed(&key).unwrap(), derive_seed(&key.clone()).unwrap());
        assert_ne!(derive_seed(&key).unwrap(), derive_seed(&ClusterKey::parse(&"ac".repeat(32)).unwrap()).unwrap());
        assert_ne!(&derive_seed(&key).unwrap(), key.secret());
    }
}
