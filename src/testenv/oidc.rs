//! A tiny OIDC issuer for the test environment, so that users can carry `userInfo.extra` (MFA
//! proof, SPEC section 5) exactly as in production: the apiserver runs with a structured
//! authentication configuration (`--authentication-config`) whose JWT authenticator maps the
//! token's `amr` claim to the `kubepim.io/amr` extra key, the mapping kube-pim's docs show.
//!
//! Why this and not a token file or an authenticating proxy: static token files cannot set
//! `extra` at all, and a request-header proxy would test a set-up nobody uses for MFA. A JWT
//! authenticator is what an organisation with an OIDC provider configures, so the test proves
//! the documented configuration works end to end.
//!
//! The issuer serves discovery and its key set over HTTPS (a certificate from the test CA) and
//! signs ES256 tokens with a key kept in `DIR/pki/oidc.key`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Json, Router, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64URL};
use p256::{
    ecdsa::{Signature, SigningKey, signature::Signer},
    pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding},
};
use serde_json::{Value, json};

use crate::{Error, Result};

/// The audience tokens are issued for (and the apiserver accepts).
pub const AUDIENCE: &str = "kube-pim-testenv";
/// The extra key the `amr` claim is mapped to (kube-pim's default `--mfa-extra-key`).
pub const AMR_EXTRA_KEY: &str = "kubepim.io/amr";
const KID: &str = "testenv";

fn other(e: impl std::fmt::Display) -> Error {
    Error::TestEnv(format!("OIDC issuer: {e}"))
}

/// The signing side of the issuer.
pub struct Issuer {
    url: String,
    key: SigningKey,
}

impl Issuer {
    /// A new issuer at `url` with a fresh key.
    pub fn generate(url: &str) -> Self {
        let mut bytes = [0u8; 32];
        loop {
            // Rejection sampling: almost every 32-byte string is a valid scalar.
            getrandom(&mut bytes);
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return Self {
                    url: url.to_string(),
                    key,
                };
            }
        }
    }

    /// The issuer at `url` with the key in `pem` (PKCS#8).
    pub fn load(url: &str, pem: &str) -> Result<Self> {
        Ok(Self {
            url: url.to_string(),
            key: SigningKey::from_pkcs8_pem(pem).map_err(other)?,
        })
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> Result<String> {
        Ok(self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(other)?
            .to_string())
    }

    /// The issuer URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The public key set (JWKS).
    pub fn jwks(&self) -> Value {
        let point = self.key.verifying_key().to_sec1_point(false);
        let (x, y) = (
            point.x().expect("uncompressed"),
            point.y().expect("uncompressed"),
        );
        json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
            "x": B64URL.encode(x), "y": B64URL.encode(y)}]})
    }

    /// OIDC discovery.
    pub fn discovery(&self) -> Value {
        json!({"issuer": self.url, "jwks_uri": format!("{}/jwks", self.url),
            "id_token_signing_alg_values_supported": ["ES256"], "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"]})
    }

    /// A token for `user` in `groups` whose `amr` claim lists `amr` (none: no claim), valid
    /// for an hour.
    pub fn token(&self, user: &str, groups: &[&str], amr: &[&str]) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({"iss": self.url, "aud": AUDIENCE, "sub": user, "groups": groups,
            "iat": now, "nbf": now - 5, "exp": now + 3600});
        if !amr.is_empty() {
            claims["amr"] = json!(amr);
        }
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": KID});
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64URL.encode(sig.to_bytes()))
    }
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom is readable");
}

/// The apiserver's structured authentication configuration: this issuer, with `sub` as the
/// user name, `groups` as groups, and `amr` mapped into `extra[kubepim.io/amr]`.
pub fn authentication_config(url: &str, ca_pem: &str) -> String {
    let config = json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthenticationConfiguration",
        "jwt": [{
            "issuer": {"url": url, "audiences": [AUDIENCE], "certificateAuthority": ca_pem},
            "claimMappings": {
                "username": {"expression": "claims.sub"},
                "groups": {"expression": "has(claims.groups) ? claims.groups : []"},
                "extra": [{"key": AMR_EXTRA_KEY,
                           "valueExpression": "has(claims.amr) ? claims.amr : []"}]
            }
        }]
    });
    serde_yaml::to_string(&config).expect("serializes")
}

/// Serves discovery and the key set on `addr` over HTTPS until the process ends.
pub async fn serve(
    issuer: Arc<Issuer>,
    addr: SocketAddr,
    cert_pem: &str,
    key_pem: &str,
) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert_pem.as_bytes().to_vec(),
        key_pem.as_bytes().to_vec(),
    )
    .await
    .map_err(other)?;
    let (d, j) = (issuer.discovery(), issuer.jwks());
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let d = d.clone();
                async move { Json(d) }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                let j = j.clone();
                async move { Json(j) }
            }),
        );
    let listener =
        std::net::TcpListener::bind(addr).map_err(Error::io("listen on", addr.to_string()))?;
    let server = axum_server::from_tcp_rustls(listener, tls)
        .map_err(Error::io("listen on", addr.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "the test OIDC issuer stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{VerifyingKey, signature::Verifier};

    #[test]
    fn tokens_verify_against_the_published_key_and_carry_amr_only_when_asked() {
        let issuer = Issuer::generate("https://127.0.0.1:1");
        let t = issuer.token("alice", &["team"], &["mfa", "pwd"]);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["amr"], json!(["mfa", "pwd"]));
        assert_eq!(claims["aud"], AUDIENCE);
        let jwk = &issuer.jwks()["keys"][0];
        let mut point = vec![4u8];
        point.extend(B64URL.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(B64URL.decode(jwk["y"].as_str().unwrap()).unwrap());
        let vk = VerifyingKey::from_sec1_bytes(&point).unwrap();
        let sig = Signature::from_slice(&B64URL.decode(parts[2]).unwrap()).unwrap();
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        let plain = issuer.token("bob", &[], &[]);
        let claims: Value =
            serde_json::from_slice(&B64URL.decode(plain.split('.').nth(1).unwrap()).unwrap())
                .unwrap();
        assert!(claims.get("amr").is_none());
        let reloaded = Issuer::load(issuer.url(), &issuer.key_pem().unwrap()).unwrap();
        assert_eq!(reloaded.jwks(), issuer.jwks());
    }

    #[test]
    fn the_authentication_config_maps_amr_into_extra() {
        let c = authentication_config("https://127.0.0.1:9", "PEM");
        assert!(c.contains("kind: AuthenticationConfiguration"));
        assert!(c.contains("key: kubepim.io/amr"));
        assert!(c.contains("claims.amr"));
    }
}
