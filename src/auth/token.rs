//! Bearer tokens of the Docker registry token specification: JWTs whose
//! `access` claim lists what the bearer may do.
//!
//! **Issuing** ([`TokenIssuer`]). Claims: `iss` (the configured issuer), `sub`
//! (user name, `robot$NAME`, or empty for anonymous), `aud` (the service),
//! `iat` = `nbf` = now, `exp` = now + TTL (default 5 minutes), `jti` (random)
//! and `access: [{type, name, actions}]`. Signed with ES256 (EC P-256 key) or
//! RS256 (RSA key) from a PEM file (PKCS#8, SEC1 or PKCS#1), or with an
//! ephemeral P-256 key made at start-up when none is configured; tokens signed
//! with an ephemeral key die with the process (clients then simply fetch a
//! new one).
//!
//! **`kid`.** The header's `kid` is the key's libtrust fingerprint, the Docker
//! convention (distribution, docker_auth): SHA-256 of the DER
//! SubjectPublicKeyInfo, first 240 bits, base32, in twelve groups of four
//! joined by `:`. It is stable for a configured key.
//!
//! **Verifying** ([`TokenVerifier`]). A token is routed by its `iss` to the
//! keys trusted for that issuer (ours, and optionally an external issuer's
//! PEM public keys/certificates or JWKS); its signature must verify with one
//! of them, using only the algorithms that key's type allows (no `none`, no
//! HMAC with a public key); `aud` must be the service; `exp` and `nbf` are
//! checked with [`LEEWAY_SECS`] of clock skew. The `access` claim is returned
//! as [`Scope`]s: entries of unknown types, invalid names and unknown actions
//! are dropped.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::config::{AuthConfig, ExternalIssuerConfig};
use super::scope::{Actions, Scope};
use super::{from_unix_secs, rfc3339, unix_secs, AuthError, Secret};
use crate::oci::RepositoryName;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Longer tokens are refused unread.
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// The DER SubjectPublicKeyInfo prefix of an uncompressed P-256 point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0x04 ...) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// A public key and the algorithms tokens signed with it may use.
#[derive(Debug, Clone)]
struct VerificationKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl VerificationKey {
    /// From an uncompressed P-256 point (`04 || x || y`).
    fn ec_p256(point: &[u8]) -> Result<VerificationKey, String> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err("not an uncompressed P-256 public key".to_owned());
        }
        let spki = [&P256_SPKI_PREFIX[..], point].concat();
        Ok(VerificationKey {
            kid: Some(libtrust_kid(&spki)),
            key: DecodingKey::from_ec_der(point),
            algorithms: vec![Algorithm::ES256],
        })
    }

    /// From an RSA public key in PKCS#1 or SubjectPublicKeyInfo DER.
    fn rsa(der: &[u8]) -> Result<VerificationKey, String> {
        let public = aws_lc_rs::rsa::PublicKey::from_der(der)
            .map_err(|e| format!("not an RSA public key: {e}"))?;
        let spki = public
            .as_der()
            .map_err(|_| "cannot encode the RSA public key".to_owned())?;
        Ok(VerificationKey {
            kid: Some(libtrust_kid(spki.as_ref())),
            key: DecodingKey::from_rsa_der(public.as_ref()),
            algorithms: RSA_ALGORITHMS.to_vec(),
        })
    }

    /// From a DER SubjectPublicKeyInfo (EC P-256 or RSA).
    fn from_spki(spki: &[u8]) -> Result<VerificationKey, String> {
        match spki.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) => VerificationKey::ec_p256(point),
            None => VerificationKey::rsa(spki)
                .map_err(|_| "unsupported public key (use EC P-256 or RSA)".to_owned()),
        }
    }
}

/// The libtrust key ID of a DER SubjectPublicKeyInfo (see the module doc).
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    // 30 bytes = 240 bits = 48 base32 characters exactly: no padding.
    let mut chars = Vec::with_capacity(48);
    for chunk in hash[..30].chunks(5) {
        let n = chunk.iter().fold(0u64, |n, &b| n << 8 | u64::from(b));
        for i in (0..8).rev() {
            chars.push(ALPHABET[(n >> (i * 5) & 31) as usize]);
        }
    }
    chars
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One entry of the `access` claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessEntry {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

impl AccessEntry {
    fn from_scope(scope: &Scope) -> AccessEntry {
        AccessEntry {
            kind: scope.resource_type().to_owned(),
            name: scope.resource_name().to_owned(),
            actions: scope
                .action_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }

    fn to_scope(&self) -> Option<Scope> {
        let base = self.kind.split('(').next().unwrap_or_default();
        match base {
            "repository" => {
                let name = RepositoryName::parse(&self.name)?;
                let actions = Actions::parse_lenient(&self.actions.join(","));
                (!actions.is_empty()).then(|| Scope::repository(name, actions))
            }
            "registry" if self.name == "catalog" && self.actions.iter().any(|a| a == "*") => {
                Some(Scope::Catalog)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
struct IssuedClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<AccessEntry>,
}

/// The claims we read from a verified token (`aud`, `nbf` are checked by
/// jsonwebtoken from the raw claims).
#[derive(Debug, Deserialize)]
struct ReceivedClaims {
    iss: String,
    #[serde(default)]
    sub: String,
    exp: f64,
    /// Ours always carry it; an external issuer's may not.
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    access: Vec<AccessEntry>,
}

/// A signing key with its public half.
#[derive(Debug)]
struct SigningKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    public: VerificationKey,
    /// The public key as a JWK.
    jwk: serde_json::Value,
}

impl SigningKey {
    fn from_pem(pem_bytes: &[u8]) -> Result<SigningKey, String> {
        let blocks = pem::parse_many(pem_bytes).map_err(|e| format!("not PEM: {e}"))?;
        for block in &blocks {
            match block.tag() {
                "EC PRIVATE KEY" => return SigningKey::ec(block.contents()),
                "RSA PRIVATE KEY" => {
                    let pair = RsaKeyPair::from_der(block.contents())
                        .map_err(|e| format!("bad RSA key: {e}"))?;
                    return SigningKey::rsa(&pair, block.contents());
                }
                "PRIVATE KEY" => {
                    if let Ok(key) = SigningKey::ec(block.contents()) {
                        return Ok(key);
                    }
                    let pair = RsaKeyPair::from_pkcs8(block.contents())
                        .map_err(|_| "unsupported private key (use EC P-256 or RSA)".to_owned())?;
                    // jsonwebtoken signs with PKCS#1; it extracts it from PKCS#8.
                    let single = pem::encode(block);
                    let encoding = EncodingKey::from_rsa_pem(single.as_bytes())
                        .map_err(|e| format!("bad RSA key: {e}"))?;
                    return SigningKey::rsa_with(&pair, encoding);
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err("encrypted private keys are not supported".to_owned())
                }
                _ => {} // EC PARAMETERS, certificates: skip
            }
        }
        Err("no private key in the PEM file".to_owned())
    }

    /// A P-256 key in PKCS#8 or SEC1 DER.
    fn ec(der: &[u8]) -> Result<SigningKey, String> {
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| "not an EC P-256 private key".to_owned())?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| "cannot encode the EC key".to_owned())?;
        let point = pair.public_key().as_ref();
        let public = VerificationKey::ec_p256(point)?;
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            "kid": public.kid,
            "alg": "ES256",
            "use": "sig",
        });
        Ok(SigningKey {
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public,
            jwk,
        })
    }

    fn rsa(pair: &RsaKeyPair, pkcs1: &[u8]) -> Result<SigningKey, String> {
        SigningKey::rsa_with(pair, EncodingKey::from_rsa_der(pkcs1))
    }

    fn rsa_with(pair: &RsaKeyPair, encoding: EncodingKey) -> Result<SigningKey, String> {
        let public_key = pair.public_key();
        let public = VerificationKey::rsa(public_key.as_ref())?;
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(public_key.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public_key.exponent().big_endian_without_leading_zero()),
            "kid": public.kid,
            "alg": "RS256",
            "use": "sig",
        });
        Ok(SigningKey {
            algorithm: Algorithm::RS256,
            encoding,
            public,
            jwk,
        })
    }
}

/// A signed token and what the token endpoint answers about it. Serializes
/// as the token endpoint's JSON body: `{"token", "access_token",
/// "expires_in", "issued_at"}`. `Debug` hides the token.
pub struct IssuedToken {
    pub token: Secret,
    /// Seconds until it expires.
    pub expires_in: u64,
    pub issued_at: SystemTime,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &self.token)
            .field("expires_in", &self.expires_in)
            .field("issued_at", &rfc3339(self.issued_at))
            .finish()
    }
}

impl Serialize for IssuedToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("IssuedToken", 4)?;
        s.serialize_field("token", self.token.expose())?;
        // OAuth2 clients (containerd's POST flow) read access_token.
        s.serialize_field("access_token", self.token.expose())?;
        s.serialize_field("expires_in", &self.expires_in)?;
        s.serialize_field("issued_at", &rfc3339(self.issued_at))?;
        s.end()
    }
}

/// Signs tokens for the built-in token endpoint.
#[derive(Debug)]
pub struct TokenIssuer {
    issuer: String,
    service: String,
    ttl: Duration,
    key: SigningKey,
}

impl TokenIssuer {
    /// Signs with the private key in `pem` (EC P-256 → ES256, RSA → RS256).
    pub fn from_pem(
        pem: &[u8],
        issuer: &str,
        service: &str,
        ttl: Duration,
    ) -> Result<TokenIssuer, AuthError> {
        let key = SigningKey::from_pem(pem).map_err(AuthError::Key)?;
        Ok(TokenIssuer::with_key(key, issuer, service, ttl))
    }

    /// Signs with a new P-256 key that lives as long as this value.
    pub fn ephemeral(issuer: &str, service: &str, ttl: Duration) -> Result<TokenIssuer, AuthError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| AuthError::Key("cannot generate a key".to_owned()))?;
        let key = SigningKey::ec(pkcs8.as_ref()).map_err(AuthError::Key)?;
        Ok(TokenIssuer::with_key(key, issuer, service, ttl))
    }

    /// From `signing_key` (or ephemeral), `issuer`, `service` and
    /// `token_ttl_secs`.
    pub fn from_config(config: &AuthConfig) -> Result<TokenIssuer, AuthError> {
        let ttl = Duration::from_secs(config.token_ttl_secs);
        match &config.signing_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| AuthError::io(path, e))?;
                let key = SigningKey::from_pem(&pem).map_err(|reason| AuthError::BadFile {
                    path: path.clone(),
                    reason,
                })?;
                Ok(TokenIssuer::with_key(
                    key,
                    config.issuer(),
                    &config.service,
                    ttl,
                ))
            }
            None => {
                tracing::info!("no auth.signing_key: signing tokens with an ephemeral key (tokens end with the process)");
                TokenIssuer::ephemeral(config.issuer(), &config.service, ttl)
            }
        }
    }

    fn with_key(key: SigningKey, issuer: &str, service: &str, ttl: Duration) -> TokenIssuer {
        TokenIssuer {
            issuer: issuer.to_owned(),
            service: service.to_owned(),
            ttl,
            key,
        }
    }

    /// A token for `subject` carrying `access` (already granted: see
    /// [`super::Policy::grant`]).
    pub fn issue(&self, subject: &str, access: &[Scope]) -> Result<IssuedToken, AuthError> {
        self.issue_at(subject, access, SystemTime::now())
    }

    /// A web UI session's token for `subject`, valid for `ttl`: it grants
    /// nothing itself (as a bearer token it is worth no more than
    /// anonymous), and only a token marked so is taken as a session
    /// ([`VerifiedToken::session`]); the policy then decides for its
    /// subject on each request.
    pub fn issue_session(&self, subject: &str, ttl: Duration) -> Result<IssuedToken, AuthError> {
        let iat = unix_secs(SystemTime::now());
        let claims = IssuedClaims {
            iss: &self.issuer,
            sub: subject,
            aud: &self.service,
            exp: iat + ttl.as_secs(),
            nbf: iat,
            iat,
            jti: hex::encode(super::random_bytes::<16>()),
            access: vec![AccessEntry {
                kind: SESSION_TYPE.to_owned(),
                name: SESSION_NAME.to_owned(),
                actions: Vec::new(),
            }],
        };
        self.sign(&claims, ttl.as_secs())
    }

    fn issue_at(
        &self,
        subject: &str,
        access: &[Scope],
        now: SystemTime,
    ) -> Result<IssuedToken, AuthError> {
        let iat = unix_secs(now);
        let ttl = self.ttl.as_secs();
        let claims = IssuedClaims {
            iss: &self.issuer,
            sub: subject,
            aud: &self.service,
            exp: iat + ttl,
            nbf: iat,
            iat,
            jti: hex::encode(super::random_bytes::<16>()),
            access: access.iter().map(AccessEntry::from_scope).collect(),
        };
        self.sign(&claims, ttl)
    }

    fn sign(&self, claims: &IssuedClaims<'_>, expires_in: u64) -> Result<IssuedToken, AuthError> {
        let mut header = Header::new(self.key.algorithm);
        header.kid = self.key.public.kid.clone();
        let token = jsonwebtoken::encode(&header, claims, &self.key.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(IssuedToken {
            token: Secret::new(token),
            expires_in,
            issued_at: from_unix_secs(claims.iat),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The header `kid` of our tokens.
    pub fn kid(&self) -> &str {
        self.key.public.kid.as_deref().unwrap_or_default()
    }

    /// `"ES256"` or `"RS256"`.
    pub fn algorithm(&self) -> &'static str {
        match self.key.algorithm {
            Algorithm::RS256 => "RS256",
            _ => "ES256",
        }
    }

    /// Our public key as a JSON Web Key Set, for other services that want to
    /// verify our tokens.
    pub fn jwks_json(&self) -> String {
        serde_json::json!({ "keys": [self.key.jwk] }).to_string()
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    /// The user it was issued to (`robot$NAME` for robots; empty for
    /// anonymous).
    pub subject: String,
    /// The granted access.
    pub access: Vec<Scope>,
    pub expires_at: SystemTime,
    /// When it was issued (`iat`), when it says.
    pub issued_at: Option<SystemTime>,
    /// Whether it is a web UI session's token ([`TokenIssuer::issue_session`]).
    pub session: bool,
}

impl VerifiedToken {
    /// Everything the token allows on `name`.
    pub fn actions(&self, name: &RepositoryName) -> Actions {
        self.access
            .iter()
            .filter_map(|scope| match scope {
                Scope::Repository { name: n, actions } if n == name => Some(*actions),
                _ => None,
            })
            .fold(Actions::NONE, Actions::union)
    }

    pub fn allows(&self, name: &RepositoryName, action: super::Action) -> bool {
        self.actions(name).contains(action)
    }

    pub fn allows_catalog(&self) -> bool {
        self.access.contains(&Scope::Catalog)
    }
}

/// Why a bearer token was refused. All mean 401 with `error="invalid_token"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token from an untrusted issuer")]
    UnknownIssuer,
    #[error("token algorithm not allowed for the issuer's keys")]
    UnsupportedAlgorithm,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is for another service")]
    WrongAudience,
}

#[derive(Debug, Clone)]
struct TrustedIssuer {
    issuer: String,
    audience: String,
    keys: Vec<VerificationKey>,
}

/// Verifies bearer tokens from the issuers it trusts.
#[derive(Debug, Clone, Default)]
pub struct TokenVerifier {
    issuers: Vec<TrustedIssuer>,
}

impl TokenVerifier {
    pub fn new() -> TokenVerifier {
        TokenVerifier::default()
    }

    /// Trusts the tokens `issuer` signs.
    pub fn trust(&mut self, issuer: &TokenIssuer) {
        self.add(
            &issuer.issuer,
            &issuer.service,
            vec![issuer.key.public.clone()],
        );
    }

    /// Trusts tokens from `issuer` for `audience` signed by any key in `pem`:
    /// `PUBLIC KEY` (EC P-256 or RSA), `RSA PUBLIC KEY` or `CERTIFICATE`
    /// blocks (a certificate's key is used; its chain is not checked).
    /// Returns how many keys were added.
    pub fn trust_pem(
        &mut self,
        issuer: &str,
        audience: &str,
        pem: &[u8],
    ) -> Result<usize, AuthError> {
        let blocks = pem::parse_many(pem).map_err(|e| AuthError::Key(format!("not PEM: {e}")))?;
        let mut keys = Vec::new();
        for block in &blocks {
            let key = match block.tag() {
                "PUBLIC KEY" => VerificationKey::from_spki(block.contents()),
                "RSA PUBLIC KEY" => VerificationKey::rsa(block.contents()),
                "CERTIFICATE" => certificate_spki(block.contents())
                    .ok_or_else(|| "malformed certificate".to_owned())
                    .and_then(|spki| VerificationKey::from_spki(&spki)),
                other => Err(format!("unexpected PEM block {other:?}")),
            };
            keys.push(key.map_err(AuthError::Key)?);
        }
        if keys.is_empty() {
            return Err(AuthError::Key("no public key in the PEM data".to_owned()));
        }
        let count = keys.len();
        self.add(issuer, audience, keys);
        Ok(count)
    }

    /// Trusts tokens from `issuer` for `audience` signed by a key of the JSON
    /// Web Key Set `jwks`. Keys for encryption (`use: enc`) and of other types
    /// or curves than RSA and EC P-256 are skipped; a set with no usable key
    /// is an error. Returns how many keys were added.
    pub fn trust_jwks(
        &mut self,
        issuer: &str,
        audience: &str,
        jwks: &[u8],
    ) -> Result<usize, AuthError> {
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<serde_json::Map<String, serde_json::Value>>,
        }
        let set: Set = serde_json::from_slice(jwks)
            .map_err(|e| AuthError::Key(format!("not a JWK set: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            match jwk_key(jwk) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(reason) => {
                    let kid = jwk.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                    tracing::warn!(kid, reason, "skipping a key of the JWK set");
                }
            }
        }
        if keys.is_empty() {
            return Err(AuthError::Key("no usable key in the JWK set".to_owned()));
        }
        let count = keys.len();
        self.add(issuer, audience, keys);
        Ok(count)
    }

    /// Trusts the external issuer of the config, reading its key file.
    pub fn trust_external(
        &mut self,
        external: &ExternalIssuerConfig,
        audience: &str,
    ) -> Result<usize, AuthError> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| AuthError::io(path, e));
        let with_path = |path: &Path, e: AuthError| AuthError::BadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        match (&external.public_key, &external.jwks) {
            (Some(path), None) => self
                .trust_pem(&external.issuer, audience, &read(path)?)
                .map_err(|e| with_path(path, e)),
            (None, Some(path)) => self
                .trust_jwks(&external.issuer, audience, &read(path)?)
                .map_err(|e| with_path(path, e)),
            _ => Err(AuthError::Config(
                "external needs exactly one of public_key and jwks".to_owned(),
            )),
        }
    }

    fn add(&mut self, issuer: &str, audience: &str, keys: Vec<VerificationKey>) {
        match self
            .issuers
            .iter_mut()
            .find(|t| t.issuer == issuer && t.audience == audience)
        {
            Some(trusted) => trusted.keys.extend(keys),
            None => self.issuers.push(TrustedIssuer {
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                keys,
            }),
        }
    }

    /// Checks a bearer token and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let issuer = unverified_issuer(token).ok_or(TokenError::Malformed)?;
        let mut trusted = self
            .issuers
            .iter()
            .filter(|t| t.issuer == issuer)
            .peekable();
        if trusted.peek().is_none() {
            return Err(TokenError::UnknownIssuer);
        }
        let mut outcome = Err(TokenError::UnsupportedAlgorithm);
        for trusted in trusted {
            let mut keys: Vec<&VerificationKey> = trusted
                .keys
                .iter()
                .filter(|k| k.algorithms.contains(&header.alg))
                .collect();
            // The key the header names first; the others are still tried, as
            // issuers differ in how they compute a kid.
            keys.sort_by_key(|k| header.kid.is_none() || k.kid != header.kid);
            let mut validation = Validation::new(header.alg);
            validation.set_issuer(&[&trusted.issuer]);
            validation.set_audience(&[&trusted.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validation.validate_nbf = true;
            validation.leeway = LEEWAY_SECS;
            for key in keys {
                match jsonwebtoken::decode::<ReceivedClaims>(token, &key.key, &validation) {
                    Ok(data) => return Ok(verified(data.claims)),
                    Err(e) => match e.kind() {
                        ErrorKind::InvalidSignature
                        | ErrorKind::InvalidEcdsaKey
                        | ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidKeyFormat => outcome = Err(TokenError::BadSignature),
                        // The signature verified: the claims are what is wrong.
                        kind => return Err(claim_error(kind)),
                    },
                }
            }
        }
        outcome
    }
}

fn verified(claims: ReceivedClaims) -> VerifiedToken {
    let access = claims
        .access
        .iter()
        .filter_map(AccessEntry::to_scope)
        .collect();
    let session = claims
        .access
        .iter()
        .any(|entry| entry.kind == SESSION_TYPE && entry.name == SESSION_NAME);
    VerifiedToken {
        issuer: claims.iss,
        subject: claims.sub,
        access,
        expires_at: from_unix_secs(claims.exp.max(0.0) as u64),
        issued_at: claims.iat.map(|iat| from_unix_secs(iat.max(0.0) as u64)),
        session,
    }
}

/// The access entry that marks a web UI session's token (a resource type
/// no registry client asks for, so no token endpoint grants it).
const SESSION_TYPE: &str = "berth-ui";
const SESSION_NAME: &str = "session";

fn claim_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
        ErrorKind::InvalidAlgorithm => TokenError::UnsupportedAlgorithm,
        _ => TokenError::Malformed,
    }
}

/// The `iss` claim, read without verifying anything: only to pick the keys.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Peek>(&bytes).ok().map(|p| p.iss)
}

/// A key of a JWK set: `Ok(None)` for keys not meant for signatures.
fn jwk_key(
    jwk: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<VerificationKey>, String> {
    let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    if field("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let decode = |name: &str| {
        field(name)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok())
            .ok_or_else(|| format!("missing or bad {name:?}"))
    };
    let mut key = match field("kty") {
        Some("EC") => {
            if field("crv") != Some("P-256") {
                return Err("only the P-256 curve is supported".to_owned());
            }
            let (x, y) = (decode("x")?, decode("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("bad P-256 coordinates".to_owned());
            }
            VerificationKey::ec_p256(&[&[0x04][..], &x, &y].concat())?
        }
        Some("RSA") => {
            let (n, e) = (decode("n")?, decode("e")?);
            if n.len() < 256 {
                return Err("RSA keys under 2048 bits are not accepted".to_owned());
            }
            VerificationKey {
                kid: None,
                key: DecodingKey::from_rsa_raw_components(&n, &e),
                algorithms: RSA_ALGORITHMS.to_vec(),
            }
        }
        other => return Err(format!("unsupported key type {other:?}")),
    };
    key.kid = field("kid").map(str::to_owned);
    if let Some(alg) = field("alg") {
        let alg: Algorithm = alg.parse().map_err(|_| format!("unknown alg {alg:?}"))?;
        if !key.algorithms.contains(&alg) {
            return Err(format!("alg {alg:?} does not fit the key type"));
        }
        key.algorithms = vec![alg];
    }
    Ok(Some(key))
}

/// The DER SubjectPublicKeyInfo (outer `SEQUENCE` included) of a DER X.509
/// certificate. Parsed by rustls-webpki, the parser rustls's certificate
/// checks use (already compiled in for TLS): strict DER, X.509 v3 only, and
/// nothing of the certificate but its key is used (its chain and dates are
/// not checked: the operator configured the certificate as a key).
fn certificate_spki(der: &[u8]) -> Option<Vec<u8>> {
    let der = rustls::pki_types::CertificateDer::from(der);
    let certificate = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(certificate.subject_public_key_info().as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::{parse_scopes, Action};

    const EC_SEC1: &str = include_str!("testdata/ec-p256-sec1.pem");
    const EC_PKCS8: &str = include_str!("testdata/ec-p256-pkcs8.pem");
    const EC_PUBLIC: &str = include_str!("testdata/ec-p256-public.pem");
    const EC_CERT: &str = include_str!("testdata/ec-p256-cert.pem");
    const EC_P384: &str = include_str!("testdata/ec-p384.pem");
    const RSA_PKCS1: &str = include_str!("testdata/rsa-2048-pkcs1.pem");
    const RSA_PKCS8: &str = include_str!("testdata/rsa-2048-pkcs8.pem");
    const RSA_PUBLIC: &str = include_str!("testdata/rsa-2048-public.pem");
    /// `openssl pkey -pubin -outform DER | sha256`, first 30 bytes, base32
    /// (computed with Python's base64.b32encode, independently of this code).
    const EC_KID: &str = "UXCO:PFVW:E57E:MCYD:U5VO:VC3R:CN5U:NTSI:NGOU:BWOC:NLB5:XHGX";
    const RSA_KID: &str = "7MNT:PTNI:IYNU:7DCK:J6MT:RJGO:H5WS:J7PP:ACPO:EWEX:B43Y:6OHK";

    const TTL: Duration = Duration::from_secs(300);

    fn issuer(pem: &str) -> TokenIssuer {
        TokenIssuer::from_pem(pem.as_bytes(), "berth-test", "registry.test", TTL).unwrap()
    }

    fn verifier_for(issuer: &TokenIssuer) -> TokenVerifier {
        let mut v = TokenVerifier::new();
        v.trust(issuer);
        v
    }

    fn scopes(list: &[&str]) -> Vec<Scope> {
        parse_scopes(list.iter().copied()).unwrap()
    }

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    /// Decodes a token's payload without verifying it.
    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn header_json(token: &str) -> serde_json::Value {
        let part = token.split('.').next().unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// Re-signs arbitrary claims with a key, to build tokens our issuer
    /// would never make.
    fn sign_raw(pem: &str, alg: Algorithm, claims: &serde_json::Value) -> String {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
    }

    fn now_secs() -> u64 {
        unix_secs(SystemTime::now())
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_granted_access() {
        let issuer = issuer(EC_SEC1);
        let granted = scopes(&["repository:team-a/app:pull,push", "registry:catalog:*"]);
        let issued = issuer.issue("alice", &granted).unwrap();
        let verified = verifier_for(&issuer).verify(issued.token.expose()).unwrap();
        assert_eq!(verified.subject, "alice");
        assert_eq!(verified.issuer, "berth-test");
        assert_eq!(verified.access, granted);
        assert!(verified.allows(&name("team-a/app"), Action::Push));
        assert!(!verified.allows(&name("team-a/app"), Action::Delete));
        assert!(!verified.allows(&name("team-a/other"), Action::Pull));
        assert!(verified.allows_catalog());
        let ttl = unix_secs(verified.expires_at) - unix_secs(issued.issued_at);
        assert_eq!(ttl, 300);
    }

    #[test]
    fn tokens_have_the_docker_claims_and_header() {
        let issuer = issuer(EC_SEC1);
        let issued = issuer
            .issue("bob", &scopes(&["repository:a/b:pull"]))
            .unwrap();
        let claims = payload(issued.token.expose());
        assert_eq!(claims["iss"], "berth-test");
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["aud"], "registry.test");
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_eq!(claims["exp"].as_u64(), Some(iat + 300));
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        assert_eq!(
            claims["access"],
            serde_json::json!([{"type": "repository", "name": "a/b", "actions": ["pull"]}])
        );
        let header = header_json(issued.token.expose());
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], EC_KID);
        let other = issuer.issue("bob", &[]).unwrap();
        assert_ne!(payload(other.token.expose())["jti"], claims["jti"]);
    }

    #[test]
    fn the_token_response_has_the_spec_fields_and_debug_hides_the_token() {
        let issued = issuer(EC_SEC1).issue("", &[]).unwrap();
        let body = serde_json::to_value(&issued).unwrap();
        assert_eq!(body["token"], issued.token.expose());
        assert_eq!(body["access_token"], issued.token.expose());
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["issued_at"], rfc3339(issued.issued_at));
        assert!(!format!("{issued:?}").contains(issued.token.expose()));
    }

    #[test]
    fn kid_is_the_libtrust_fingerprint() {
        assert_eq!(issuer(EC_SEC1).kid(), EC_KID);
        assert_eq!(issuer(EC_PKCS8).kid(), EC_KID);
        assert_eq!(issuer(RSA_PKCS1).kid(), RSA_KID);
        assert_eq!(issuer(RSA_PKCS8).kid(), RSA_KID);
        let spki = pem::parse(EC_PUBLIC).unwrap();
        assert_eq!(libtrust_kid(spki.contents()), EC_KID);
    }

    #[test]
    fn rsa_keys_sign_rs256() {
        for pem in [RSA_PKCS1, RSA_PKCS8] {
            let issuer = issuer(pem);
            assert_eq!(issuer.algorithm(), "RS256");
            let issued = issuer
                .issue("carol", &scopes(&["repository:x:pull"]))
                .unwrap();
            assert_eq!(header_json(issued.token.expose())["alg"], "RS256");
            let verified = verifier_for(&issuer).verify(issued.token.expose()).unwrap();
            assert!(verified.allows(&name("x"), Action::Pull));
        }
    }

    #[test]
    fn unsupported_keys_are_refused() {
        for bad in [EC_P384, EC_PUBLIC, EC_CERT, "not pem at all", ""] {
            assert!(
                TokenIssuer::from_pem(bad.as_bytes(), "i", "s", TTL).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn ephemeral_keys_differ_and_verify_their_own_tokens_only() {
        let a = TokenIssuer::ephemeral("berth", "svc", TTL).unwrap();
        let b = TokenIssuer::ephemeral("berth", "svc", TTL).unwrap();
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.algorithm(), "ES256");
        let token = a.issue("alice", &[]).unwrap();
        assert!(verifier_for(&a).verify(token.token.expose()).is_ok());
        assert_eq!(
            verifier_for(&b).verify(token.token.expose()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let issuer = issuer(EC_SEC1);
        let verifier = verifier_for(&issuer);
        let token = issuer
            .issue("alice", &scopes(&["repository:a:pull"]))
            .unwrap()
            .token
            .expose()
            .to_owned();
        let parts: Vec<&str> = token.split('.').collect();
        // Claims widened to push, signature kept.
        let mut claims = payload(&token);
        claims["access"][0]["actions"] = serde_json::json!(["pull", "push"]);
        let forged_claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(verifier.verify(&forged), Err(TokenError::BadSignature));
        // A flipped signature byte.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(verifier.verify(&flipped), Err(TokenError::BadSignature));
        // The signature removed, or alg none.
        assert!(verifier
            .verify(&format!("{}.{}.", parts[0], parts[1]))
            .is_err());
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            verifier.verify(&format!("{none}.{}.", parts[1])),
            Err(TokenError::Malformed)
        );
        for junk in ["", "a.b", "a.b.c", "....", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert_eq!(
                verifier.verify(junk),
                Err(TokenError::Malformed),
                "{junk:.10}"
            );
        }
        assert!(verifier.verify(&token).is_ok());
    }

    #[test]
    fn an_hmac_token_keyed_with_the_public_key_is_refused() {
        // The classic algorithm confusion: HS256 with the public key as secret.
        let issuer = issuer(EC_SEC1);
        let claims = payload(issuer.issue("alice", &[]).unwrap().token.expose());
        let secret = pem::parse(EC_PUBLIC).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.contents()),
        )
        .unwrap();
        assert_eq!(
            verifier_for(&issuer).verify(&token),
            Err(TokenError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn a_token_for_another_audience_is_refused() {
        let ours = issuer(EC_SEC1);
        let elsewhere =
            TokenIssuer::from_pem(EC_SEC1.as_bytes(), "berth-test", "other.registry", TTL).unwrap();
        let token = elsewhere.issue("alice", &[]).unwrap();
        assert_eq!(
            verifier_for(&ours).verify(token.token.expose()),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn a_token_from_an_unknown_issuer_is_refused() {
        let ours = issuer(EC_SEC1);
        let stranger =
            TokenIssuer::from_pem(EC_SEC1.as_bytes(), "stranger", "registry.test", TTL).unwrap();
        let token = stranger.issue("alice", &[]).unwrap();
        assert_eq!(
            verifier_for(&ours).verify(token.token.expose()),
            Err(TokenError::UnknownIssuer)
        );
    }

    #[test]
    fn expired_and_future_tokens_are_refused_beyond_the_leeway() {
        let issuer = issuer(EC_SEC1);
        let verifier = verifier_for(&issuer);
        let now = SystemTime::now();
        let old = issuer
            .issue_at("a", &[], now - Duration::from_secs(301 + LEEWAY_SECS + 5))
            .unwrap();
        assert_eq!(
            verifier.verify(old.token.expose()),
            Err(TokenError::Expired)
        );
        let future = issuer
            .issue_at("a", &[], now + Duration::from_secs(LEEWAY_SECS + 60))
            .unwrap();
        assert_eq!(
            verifier.verify(future.token.expose()),
            Err(TokenError::NotYetValid)
        );
        // Within the leeway both ways: accepted.
        let just_expired = issuer
            .issue_at("a", &[], now - Duration::from_secs(305))
            .unwrap();
        assert!(verifier.verify(just_expired.token.expose()).is_ok());
        let slightly_ahead = issuer
            .issue_at("a", &[], now + Duration::from_secs(5))
            .unwrap();
        assert!(verifier.verify(slightly_ahead.token.expose()).is_ok());
    }

    #[test]
    fn a_token_grants_only_its_own_repositories() {
        let issuer = issuer(EC_SEC1);
        let token = issuer
            .issue("alice", &scopes(&["repository:team-a/app:pull"]))
            .unwrap();
        let verified = verifier_for(&issuer).verify(token.token.expose()).unwrap();
        assert!(verified.allows(&name("team-a/app"), Action::Pull));
        assert_eq!(verified.actions(&name("team-a/app2")), Actions::NONE);
        assert_eq!(verified.actions(&name("team-a")), Actions::NONE);
        assert!(!verified.allows_catalog());
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let ours = issuer(EC_SEC1);
        let token = ours.issue("alice", &[]).unwrap();
        // The issuer's name is trusted, but with an RSA key: ES256 cannot be.
        let mut rsa_trust = TokenVerifier::new();
        rsa_trust
            .trust_pem("berth-test", "registry.test", RSA_PUBLIC.as_bytes())
            .unwrap();
        assert_eq!(
            rsa_trust.verify(token.token.expose()),
            Err(TokenError::UnsupportedAlgorithm)
        );
        // Another EC key under the same issuer name.
        let other_ec = TokenIssuer::ephemeral("berth-test", "registry.test", TTL).unwrap();
        assert_eq!(
            verifier_for(&other_ec).verify(token.token.expose()),
            Err(TokenError::BadSignature)
        );
        // Another RSA key.
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
        let other_rsa = issuer(&pem);
        assert_ne!(other_rsa.kid(), RSA_KID);
        let rsa_token = other_rsa.issue("alice", &[]).unwrap();
        assert_eq!(
            rsa_trust.verify(rsa_token.token.expose()),
            Err(TokenError::BadSignature)
        );
        assert!(verifier_for(&other_rsa)
            .verify(rsa_token.token.expose())
            .is_ok());
    }

    #[test]
    fn external_tokens_verify_with_pem_public_keys_and_certificates() {
        let claims = serde_json::json!({
            "iss": "https://auth.example.com",
            "sub": "ci",
            "aud": ["registry.test", "other"],
            "exp": now_secs() + 60,
            "access": [
                {"type": "repository", "name": "ext/app", "actions": ["pull", "frobnicate"]},
                {"type": "repository", "name": "Bad Name", "actions": ["pull"]},
                {"type": "repository", "name": "ext/all", "actions": ["*"]},
                {"type": "plugin", "name": "x", "actions": ["pull"]},
                {"type": "registry", "name": "catalog", "actions": ["*"]}
            ]
        });
        for (public, private, alg) in [
            (EC_PUBLIC, EC_PKCS8, Algorithm::ES256),
            (EC_CERT, EC_PKCS8, Algorithm::ES256),
            (RSA_PUBLIC, RSA_PKCS1, Algorithm::RS256),
            (RSA_PUBLIC, RSA_PKCS1, Algorithm::PS256),
        ] {
            let mut v = TokenVerifier::new();
            assert_eq!(
                v.trust_pem(
                    "https://auth.example.com",
                    "registry.test",
                    public.as_bytes()
                )
                .unwrap(),
                1
            );
            let token = sign_raw(private, alg, &claims);
            let verified = v.verify(&token).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(verified.subject, "ci");
            assert_eq!(
                verified.access,
                scopes(&[
                    "repository:ext/app:pull",
                    "repository:ext/all:*",
                    "registry:catalog:*"
                ])
            );
        }
    }

    #[test]
    fn the_certificate_parser_finds_the_public_key() {
        let cert = pem::parse(EC_CERT).unwrap();
        let spki = certificate_spki(cert.contents()).unwrap();
        assert_eq!(spki, pem::parse(EC_PUBLIC).unwrap().contents());
        assert!(certificate_spki(&cert.contents()[..100]).is_none());
        assert!(certificate_spki(&[]).is_none());
    }

    #[test]
    fn jwks_loads_ec_and_rsa_keys() {
        let ec = issuer(EC_SEC1);
        let rsa = issuer(RSA_PKCS1);
        let ec_jwk: serde_json::Value = serde_json::from_str(&ec.jwks_json()).unwrap();
        let rsa_jwk: serde_json::Value = serde_json::from_str(&rsa.jwks_json()).unwrap();
        assert_eq!(ec_jwk["keys"][0]["kid"], EC_KID);
        assert_eq!(rsa_jwk["keys"][0]["e"], "AQAB");
        let set = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            ec_jwk["keys"][0],
            rsa_jwk["keys"][0],
        ]});
        let mut v = TokenVerifier::new();
        assert_eq!(
            v.trust_jwks("berth-test", "registry.test", set.to_string().as_bytes())
                .unwrap(),
            2
        );
        for issuer in [&ec, &rsa] {
            let token = issuer.issue("u", &scopes(&["repository:j:pull"])).unwrap();
            assert!(v
                .verify(token.token.expose())
                .unwrap()
                .allows(&name("j"), Action::Pull));
        }
        let stranger = TokenIssuer::ephemeral("berth-test", "registry.test", TTL).unwrap();
        assert_eq!(
            v.verify(stranger.issue("u", &[]).unwrap().token.expose()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn jwks_without_usable_keys_or_with_a_mismatched_alg_are_refused() {
        let mut v = TokenVerifier::new();
        assert!(v.trust_jwks("i", "a", b"{\"keys\": []}").is_err());
        assert!(v.trust_jwks("i", "a", b"not json").is_err());
        let ec = issuer(EC_SEC1);
        let mut jwk: serde_json::Value = serde_json::from_str(&ec.jwks_json()).unwrap();
        jwk["keys"][0]["alg"] = "RS256".into();
        assert!(v.trust_jwks("i", "a", jwk.to_string().as_bytes()).is_err());
        // A small RSA key is refused.
        let small = serde_json::json!({"keys": [{"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"}]});
        assert!(v
            .trust_jwks("i", "a", small.to_string().as_bytes())
            .is_err());
    }

    #[test]
    fn external_config_loads_its_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, issuer(EC_SEC1).jwks_json()).unwrap();
        let external = ExternalIssuerConfig {
            issuer: "berth-test".into(),
            service: None,
            public_key: None,
            jwks: Some(path),
            realm: None,
        };
        let mut v = TokenVerifier::new();
        assert_eq!(v.trust_external(&external, "registry.test").unwrap(), 1);
        let token = issuer(EC_PKCS8).issue("u", &[]).unwrap();
        assert!(v.verify(token.token.expose()).is_ok());
        let missing = ExternalIssuerConfig {
            jwks: Some(dir.path().join("missing.json")),
            ..external
        };
        assert!(matches!(
            v.trust_external(&missing, "registry.test"),
            Err(AuthError::Io { .. })
        ));
    }
}
