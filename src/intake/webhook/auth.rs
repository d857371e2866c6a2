//! The webhook's decision, with no I/O: given the configured credentials, the signature
//! headers and the raw body, either a challenge to answer, an event to store, or a rejection.
//!
//! Order (feishu-protocol.md §1.11, refined by ARCHITECTURE.md invariant 9):
//! 1. Encrypt Key configured and all three `X-Lark-*` headers present: verify the signature
//!    over the raw bytes FIRST; only then decrypt and parse, with specific 400 messages.
//! 2. Encrypt Key configured, request unsigned: it can only be a url_verification challenge,
//!    encrypted or plain (Feishu signs nothing else). Every other outcome gets [`Rejection::Unsigned`],
//!    one identical answer, so the decryption step is no padding oracle.
//! 3. No Encrypt Key: plaintext bodies only.
//!
//! The Verification Token, when configured, is compared in constant time and required: a body
//! without one fails closed.

use crate::feishu::crypto::EncryptKey;
use crate::feishu::envelope::{self, Body, Envelope, Payload};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// The values of `X-Lark-Request-Timestamp`, `X-Lark-Request-Nonce` and `X-Lark-Signature`.
#[derive(Debug, Clone, Copy)]
pub struct SignatureHeaders<'a> {
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub signature: &'a str,
}

/// What to do with an authentic request.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Answer `{"challenge": …}`.
    Challenge(String),
    /// Store the event, then answer `{"msg":"success"}`.
    Event(Envelope),
}

/// Why a request is refused. Nothing of a refused request is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the request is authentic (or no Encrypt Key is configured) but malformed.
    Malformed(String),
    /// 401: the signature or the Verification Token is wrong.
    Unauthorized(&'static str),
    /// 401: an unsigned request under an Encrypt Key that is not a valid challenge. Always the
    /// same answer, whatever went wrong.
    Unsigned,
}

/// The webhook's credentials.
#[derive(Debug, Default)]
pub struct WebhookAuth {
    encrypt_key: Option<EncryptKey>,
    verification_token: Option<SecretString>,
}

impl WebhookAuth {
    pub fn new(
        encrypt_key: Option<SecretString>,
        verification_token: Option<SecretString>,
    ) -> Self {
        Self {
            encrypt_key: encrypt_key.map(EncryptKey::new),
            verification_token,
        }
    }

    /// Decides what to do with a request.
    pub fn check(
        &self,
        headers: Option<SignatureHeaders<'_>>,
        body: &[u8],
    ) -> Result<Accepted, Rejection> {
        match (&self.encrypt_key, headers) {
            (Some(key), Some(h)) => {
                if !key.verify_signature(h.timestamp, h.nonce, body, h.signature) {
                    return Err(Rejection::Unauthorized("signature verification failed"));
                }
                let encrypted = match envelope::body(body).map_err(malformed)? {
                    Body::Encrypted(e) => e,
                    Body::Plain(_) => {
                        return Err(Rejection::Malformed(
                            "plaintext body refused: an Encrypt Key is configured, so Feishu sends {\"encrypt\": ...}".into(),
                        ));
                    }
                };
                let plain = key
                    .decrypt(&encrypted)
                    .map_err(|e| Rejection::Malformed(e.to_string()))?;
                let payload = envelope::parse(&plain)
                    .map_err(|e| Rejection::Malformed(format!("decrypted body: {e}")))?;
                self.accept(payload)
            }
            (Some(key), None) => self
                .unsigned_challenge(key, body)
                .ok_or(Rejection::Unsigned),
            (None, _) => match envelope::body(body).map_err(malformed)? {
                Body::Encrypted(_) => Err(Rejection::Malformed(
                    "encrypted body, but no Encrypt Key is configured (--encrypt-key)".into(),
                )),
                Body::Plain(json) => self.accept(envelope::payload(json).map_err(malformed)?),
            },
        }
    }

    /// The one thing an unsigned request may be under an Encrypt Key: a url_verification
    /// challenge, encrypted, or in plaintext (Feishu sends that while its console has no
    /// Encrypt Key yet; the official SDKs answer it, and nothing is decrypted). Its token must
    /// match when one is configured. `None` for anything else, with no distinction between the
    /// reasons.
    fn unsigned_challenge(&self, key: &EncryptKey, body: &[u8]) -> Option<Accepted> {
        let payload = match envelope::body(body).ok()? {
            Body::Encrypted(encrypted) => envelope::parse(&key.decrypt(&encrypted).ok()?).ok()?,
            Body::Plain(json) => envelope::payload(json).ok()?,
        };
        match payload {
            Payload::Challenge { challenge, token } if self.token_matches(token.as_deref()) => {
                Some(Accepted::Challenge(challenge))
            }
            _ => None,
        }
    }

    fn accept(&self, payload: Payload) -> Result<Accepted, Rejection> {
        let (accepted, token) = match payload {
            Payload::Challenge { challenge, token } => (Accepted::Challenge(challenge), token),
            Payload::Event(env) => {
                let token = env.token.clone();
                (Accepted::Event(env), token)
            }
        };
        if self.token_matches(token.as_deref()) {
            Ok(accepted)
        } else {
            Err(Rejection::Unauthorized("verification token mismatch"))
        }
    }

    fn token_matches(&self, given: Option<&str>) -> bool {
        match &self.verification_token {
            None => true,
            Some(expected) => given.is_some_and(|g| {
                g.as_bytes()
                    .ct_eq(expected.expose_secret().as_bytes())
                    .into()
            }),
        }
    }
}

fn malformed(e: envelope::ParseError) -> Rejection {
    Rejection::Malformed(e.to_string())
}
