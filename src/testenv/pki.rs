//! Certificates for the local control plane, generated in Rust: one CA that signs the
//! apiserver's serving certificate and every user's client certificate (CN = user name,
//! one O per group: how the apiserver's x509 authenticator reads identities).
//!
//! rcgen makes the CA and serving certificates. Client certificates are built with x509-cert,
//! because a user in several groups needs several `O=` attributes, which rcgen's
//! distinguished name (one value per attribute type) cannot express.

use std::{str::FromStr, time::Duration};

use p256::{ecdsa::DerSignature, pkcs8::DecodePrivateKey};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use x509_cert::{
    builder::{Builder, CertificateBuilder, profile::BuilderProfile},
    der::oid::db::rfc5280::ID_KP_CLIENT_AUTH,
    der::{DecodePem, EncodePem, pem::LineEnding},
    ext::{
        Extension,
        pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages},
    },
    name::Name,
    serial_number::SerialNumber,
    spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef},
    time::Validity,
};

use crate::{Error, Result};

const CA_COMMON_NAME: &str = "kube-pim-testenv-ca";

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, Debug)]
pub struct CertAndKey {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// The test CA: generated once per control plane, written to `DIR/pki/`, and reloaded by
/// test processes to mint client certificates for any user they need.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

fn ca_params() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn other(msg: impl std::fmt::Display) -> Error {
    Error::TestEnv(format!("certificate: {msg}"))
}

impl Ca {
    /// A new CA with a fresh P-256 key.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA written earlier by [`Ca::cert_pem`] and [`Ca::key_pem`].
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key: KeyPair::from_pem(key_pem)?,
        })
    }

    /// The CA certificate (the apiserver's `--client-ca-file`, and clients' trust root).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A serving certificate for loopback (SANs 127.0.0.1, ::1 and localhost, plus `extra_dns`).
    pub fn issue_server(&self, common_name: &str, extra_dns: &[&str]) -> Result<CertAndKey> {
        let mut names = vec!["localhost".to_string()];
        names.extend(extra_dns.iter().map(|s| s.to_string()));
        let mut p = CertificateParams::new(names)?;
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.use_authority_key_identifier_extension = true;
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let issuer = rcgen::Issuer::new(ca_params()?, &self.key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `user` in `groups` (CN = user, one O per group), valid for
    /// `validity`.
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[String],
        validity: Duration,
    ) -> Result<CertAndKey> {
        if user.is_empty() {
            return Err(other("a user needs a name"));
        }
        let mut dn = format!("CN={}", escape_rdn(user));
        for g in groups {
            dn.push_str(&format!(",O={}", escape_rdn(g)));
        }
        let subject = Name::from_str(&dn).map_err(other)?;
        let ca_cert = x509_cert::Certificate::from_pem(self.cert_pem.as_bytes()).map_err(other)?;
        let issuer = ca_cert.tbs_certificate().subject().clone();

        let key = KeyPair::generate()?;
        let spki = SubjectPublicKeyInfoOwned::try_from(key.subject_public_key_info().as_slice())
            .map_err(other)?;
        let signer =
            p256::ecdsa::SigningKey::from_pkcs8_der(self.key.serialized_der()).map_err(other)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let serial = SerialNumber::new(&nanos.to_be_bytes()[..]).map_err(other)?;
        let validity = Validity::from_now(validity).map_err(other)?;
        let mut builder =
            CertificateBuilder::new(ClientProfile { subject, issuer }, serial, validity, spki)
                .map_err(other)?;
        // rustls (the kube client's TLS) accepts only v3 certificates, which need extensions;
        // these two are also what a client certificate should say about itself.
        builder
            .add_extension(&KeyUsage(KeyUsages::DigitalSignature.into()))
            .map_err(other)?;
        builder
            .add_extension(&ExtendedKeyUsage(vec![ID_KP_CLIENT_AUTH]))
            .map_err(other)?;
        let cert = builder.build::<_, DerSignature>(&signer).map_err(other)?;
        Ok(CertAndKey {
            cert_pem: cert.to_pem(LineEnding::LF).map_err(other)?,
            key_pem: key.serialize_pem(),
        })
    }
}

/// RFC 4514 escaping for a value inside a distinguished name string.
fn escape_rdn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let leading = i == 0 && (c == ' ' || c == '#');
        let trailing = i + 1 == v.chars().count() && c == ' ';
        if leading || trailing || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A leaf client certificate: the subject and the issuer; extensions are added by the caller.
struct ClientProfile {
    subject: Name,
    issuer: Name,
}

impl BuilderProfile for ClientProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(Vec::new())
    }
}

/// A P-256 key pair for signing ServiceAccount tokens: (private PKCS#8 PEM, public SPKI PEM).
pub fn service_account_keys() -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_every_group() {
        let ca = Ca::generate().unwrap();
        let ck = ca
            .issue_client(
                "alice",
                &["team-payments".into(), "sre,leads".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let cert = x509_cert::Certificate::from_pem(ck.cert_pem.as_bytes()).unwrap();
        let subject = cert.tbs_certificate().subject().to_string();
        assert!(subject.contains("CN=alice"), "{subject}");
        assert!(subject.contains("O=team-payments"), "{subject}");
        assert!(subject.contains("O=sre\\,leads"), "{subject}");
        // The CA reloaded from PEM issues the same issuer name.
        let again = Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let ck2 = again
            .issue_client("bob", &[], Duration::from_secs(60))
            .unwrap();
        let cert2 = x509_cert::Certificate::from_pem(ck2.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            cert2.tbs_certificate().issuer().to_string(),
            format!("CN={CA_COMMON_NAME}")
        );
    }

    #[test]
    fn escapes_special_characters() {
        assert_eq!(escape_rdn("a,b"), "a\\,b");
        assert_eq!(escape_rdn("#x "), "\\#x\\ ");
        assert_eq!(escape_rdn("system:masters"), "system:masters");
    }
}
