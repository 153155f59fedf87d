//! Webhook authentication (SPEC §1, §3): the HMAC-SHA256 signature in
//! `X-Hub-Signature` over the raw body, and the optional `Authorization` header.
//!
//! Pure functions over bytes, so the rules are unit-tested without HTTP. Only a
//! [`VerifiedBody`] can be parsed into an event, which keeps unverified input out
//! of the journal by construction.

use crate::config::Secret;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a request was refused with `401`. The text never contains a secret or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No `X-Hub-Signature` although a secret is configured.
    #[error("missing X-Hub-Signature")]
    MissingSignature,
    /// More than one `X-Hub-Signature` header: ambiguous, refused.
    #[error("more than one X-Hub-Signature header")]
    DuplicateSignature,
    /// The header is not `sha256=<hex>`, hex or base64 of 32 bytes.
    #[error("X-Hub-Signature is not a SHA-256 digest in hex or base64")]
    BadSignatureEncoding,
    /// Well-formed, but no configured secret produces it.
    #[error("signature does not match")]
    SignatureMismatch,
    /// `Authorization` missing or different from the configured value.
    #[error("Authorization header does not match")]
    AuthorizationMismatch,
}

/// A request body whose signature and Authorization passed every configured check.
#[derive(Debug)]
pub struct VerifiedBody<'a>(&'a [u8]);

impl<'a> VerifiedBody<'a> {
    /// The raw bytes, exactly as signed.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// The configured checks. Cheap to clone; rebuilt on reload.
#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    /// SHA-256 of the expected Authorization value: comparing digests keeps the
    /// comparison constant-time even when the lengths differ.
    authorization: Option<[u8; 32]>,
}

impl Verifier {
    /// Builds the checks. With no secret and no Authorization every request
    /// passes; `config` refuses that unless `webhook.allow_unsigned = true`.
    pub fn new(secrets: Vec<Secret>, authorization: Option<&Secret>) -> Verifier {
        Verifier { secrets, authorization: authorization.map(|a| Sha256::digest(a.expose().as_bytes()).into()) }
    }

    /// Whether an `Authorization` value is configured.
    pub fn checks_authorization(&self) -> bool {
        self.authorization.is_some()
    }

    /// Whether any check is configured.
    pub fn is_enforcing(&self) -> bool {
        !self.secrets.is_empty() || self.authorization.is_some()
    }

    /// Runs every configured check; all must pass.
    ///
    /// `signatures` holds every `X-Hub-Signature` header value received.
    ///
    /// # Errors
    /// The first failing check, as a [`VerifyError`].
    pub fn verify<'a>(
        &self,
        signatures: &[&[u8]],
        authorization: Option<&[u8]>,
        body: &'a [u8],
    ) -> Result<VerifiedBody<'a>, VerifyError> {
        if let Some(expected) = &self.authorization {
            let got: [u8; 32] = Sha256::digest(authorization.unwrap_or_default()).into();
            if authorization.is_none() || !bool::from(got.ct_eq(expected)) {
                return Err(VerifyError::AuthorizationMismatch);
            }
        }
        if !self.secrets.is_empty() {
            let header = match signatures {
                [] => return Err(VerifyError::MissingSignature),
                [one] => *one,
                _ => return Err(VerifyError::DuplicateSignature),
            };
            let digest = parse_signature(header)?;
            let matched = self.secrets.iter().any(|s| {
                let mut mac = HmacSha256::new_from_slice(s.expose().as_bytes()).expect("HMAC takes keys of any length");
                mac.update(body);
                mac.verify_slice(&digest).is_ok()
            });
            if !matched {
                return Err(VerifyError::SignatureMismatch);
            }
        }
        Ok(VerifiedBody(body))
    }
}

/// Decodes an `X-Hub-Signature` value to the 32 digest bytes. Accepts
/// `sha256=<hex>` (SFTP To Go's current format), bare hex, and standard base64
/// (its older sample), with surrounding whitespace.
///
/// # Errors
/// [`VerifyError::BadSignatureEncoding`] for anything else.
pub fn parse_signature(header: &[u8]) -> Result<[u8; 32], VerifyError> {
    let s = std::str::from_utf8(header).map_err(|_| VerifyError::BadSignatureEncoding)?.trim();
    let s = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256=") => &s[7..],
        _ => s,
    };
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).map_err(|_| VerifyError::BadSignatureEncoding)?
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| VerifyError::BadSignatureEncoding)?
    };
    bytes.try_into().map_err(|_| VerifyError::BadSignatureEncoding)
}

/// The `X-Hub-Signature` value SFTP To Go would send for `body`: `sha256=<hex>`.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Very Secret Secret";
    const BODY: &[u8] = b"Hello! This is a test payload.";
    const HEX: &str = "sha256=8ba4c47558de1872150c3ec82211c34bf0cbd6d60fc4f9875b97853af06de917";
    const B64: &str = "i6TEdVjeGHIVDD7IIhHDS/DL1tYPxPmHW5eFOvBt6Rc=";

    fn v(secrets: &[&str], auth: Option<&str>) -> Verifier {
        let auth = auth.map(Secret::new);
        Verifier::new(secrets.iter().map(|s| Secret::new(*s)).collect(), auth.as_ref())
    }

    #[test]
    fn spec_test_vector() {
        assert_eq!(sign(&Secret::new(SECRET), BODY), HEX);
    }

    #[test]
    fn accepts_every_documented_encoding() {
        let v = v(&[SECRET], None);
        for sig in [
            HEX,
            &HEX[7..],
            B64,
            &HEX.to_uppercase().replace("SHA256=", "sha256="),
            " sha256=8ba4c47558de1872150c3ec82211c34bf0cbd6d60fc4f9875b97853af06de917 ",
        ] {
            assert!(v.verify(&[sig.as_bytes()], None, BODY).is_ok(), "{sig}");
        }
        assert!(v
            .verify(&[b"SHA256=8BA4C47558DE1872150C3EC82211C34BF0CBD6D60FC4F9875B97853AF06DE917"], None, BODY)
            .is_ok());
    }

    #[test]
    fn refuses_wrong_missing_truncated_and_repeated_signatures() {
        let v = v(&[SECRET], None);
        assert_eq!(v.verify(&[], None, BODY).unwrap_err(), VerifyError::MissingSignature);
        assert_eq!(
            v.verify(&[HEX.as_bytes()], None, b"Hello! This is a test payload!").unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(v.verify(&[&HEX.as_bytes()[..70]], None, BODY).unwrap_err(), VerifyError::BadSignatureEncoding);
        assert_eq!(v.verify(&[b"sha1=abcd"], None, BODY).unwrap_err(), VerifyError::BadSignatureEncoding);
        assert_eq!(v.verify(&[b"\xff\xfe"], None, BODY).unwrap_err(), VerifyError::BadSignatureEncoding);
        assert_eq!(
            v.verify(&[HEX.as_bytes(), HEX.as_bytes()], None, BODY).unwrap_err(),
            VerifyError::DuplicateSignature
        );
    }

    #[test]
    fn any_configured_secret_may_match_during_rotation() {
        let v = v(&["new secret", SECRET], None);
        assert!(v.verify(&[HEX.as_bytes()], None, BODY).is_ok());
        let only_new = super::tests::v(&["new secret"], None);
        assert!(only_new.verify(&[HEX.as_bytes()], None, BODY).is_err());
    }

    #[test]
    fn authorization_must_match_exactly_and_combines_with_hmac() {
        let v = v(&[SECRET], Some("Bearer abc"));
        assert!(v.verify(&[HEX.as_bytes()], Some(b"Bearer abc"), BODY).is_ok());
        for wrong in [None, Some(&b"Bearer abd"[..]), Some(b"Bearer abc "), Some(b"")] {
            assert_eq!(v.verify(&[HEX.as_bytes()], wrong, BODY).unwrap_err(), VerifyError::AuthorizationMismatch);
        }
        // Authorization alone (no HMAC secret) is a valid configuration.
        let a = super::tests::v(&[], Some("Bearer abc"));
        assert!(a.verify(&[], Some(b"Bearer abc"), BODY).is_ok());
        assert!(a.verify(&[], None, BODY).is_err());
    }

    #[test]
    fn errors_never_echo_secrets_or_signatures() {
        let v = v(&[SECRET], Some("Bearer abc"));
        for e in [
            v.verify(&[HEX.as_bytes()], Some(b"x"), BODY).unwrap_err(),
            v.verify(&[b"sha256=00"], Some(b"Bearer abc"), BODY).unwrap_err(),
        ] {
            let s = e.to_string();
            assert!(!s.contains("Bearer") && !s.contains("8ba4") && !s.contains(SECRET), "{s}");
        }
    }
}
