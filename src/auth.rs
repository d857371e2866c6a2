//! Caller authentication for the gRPC listener: named bearer tokens read from a file, checked
//! in constant time, and the tower layer that refuses calls without a known token
//! (`UNAUTHENTICATED`) and tags the others with the caller's name for logs and metrics.

use crate::caller::Caller;
use crate::metrics::Metrics;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// Tokens shorter than this are refused when the file is read: a guessable token is not a
/// credential.
pub const MIN_TOKEN_LEN: usize = 16;

/// Known callers, by the SHA-256 of their token (tokens themselves are not kept).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenSet {
    entries: Vec<(Arc<str>, [u8; 32])>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TokenSet {
    /// Parses `name token` lines; `#` starts a comment. Errors give the line, never a token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut set = TokenSet::default();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = |reason: &str| format!("line {}: {reason}", index + 1);
            let mut fields = line.split_whitespace();
            let (Some(name), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(at("expected `name token`"));
            };
            let name_ok = name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !name_ok {
                return Err(at("a caller name is up to 64 of A-Z a-z 0-9 . _ -"));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(at(&format!(
                    "the token of {name} is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            let hash = digest(token.as_bytes());
            if set.entries.iter().any(|(n, _)| &**n == name) {
                return Err(at(&format!("caller {name} is listed twice")));
            }
            if set.entries.iter().any(|(_, h)| *h == hash) {
                return Err(at(&format!("the token of {name} is also another caller's")));
            }
            set.entries.push((Arc::from(name), hash));
        }
        if set.entries.is_empty() {
            return Err("no tokens in it; every call would be refused".into());
        }
        Ok(set)
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The caller whose token this is. Every entry is compared, without early exit, so the
    /// time taken does not depend on which entry (if any) matched.
    pub fn caller(&self, token: &[u8]) -> Option<Caller> {
        let presented = digest(token);
        let mut found = None;
        for (name, hash) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(name.clone());
            }
        }
        found.map(Caller)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The token set in use, replaced whole on reload.
#[derive(Debug, Clone)]
pub struct Tokens {
    path: PathBuf,
    current: Arc<RwLock<Arc<TokenSet>>>,
}

impl Tokens {
    pub fn load(path: PathBuf) -> Result<Self, String> {
        let set = TokenSet::read(&path)?;
        Ok(Self {
            path,
            current: Arc::new(RwLock::new(Arc::new(set))),
        })
    }

    /// Rereads the file; on error the tokens in use stay.
    pub fn reload(&self) -> Result<usize, String> {
        let set = TokenSet::read(&self.path)?;
        let count = set.len();
        *self.current.write().expect("tokens lock") = Arc::new(set);
        Ok(count)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn caller(&self, token: &[u8]) -> Option<Caller> {
        let set = self.current.read().expect("tokens lock").clone();
        set.caller(token)
    }
}

/// The layer's policy: no tokens means every call is let through as `anonymous`.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    pub tokens: Option<Tokens>,
    pub open_health: bool,
    pub open_reflection: bool,
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    policy: AuthLayer,
}

/// `Bearer <token>` from the `authorization` header (the scheme is case-insensitive).
fn bearer(headers: &http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then_some(token)
        .filter(|t| !t.is_empty())
}

impl AuthLayer {
    fn is_open(&self, path: &str) -> bool {
        (self.open_health && path.starts_with("/grpc.health.v1.Health/"))
            || (self.open_reflection && path.starts_with("/grpc.reflection."))
    }

    /// Whether the request may go on, and as whom. The router dispatches on the path alone,
    /// so the method is checked here: the dashboard's assets (GET/HEAD) are the only requests
    /// that are not POST, and every gRPC call is a POST; anything else is refused before it
    /// can reach a service, whatever its path, framing or token.
    fn judge(&self, request: &http::Request<impl Sized>) -> Verdict {
        let (method, path) = (request.method(), request.uri().path());
        if crate::dashboard::is_asset(method, path) {
            return Verdict::Pass(Caller::anonymous());
        }
        if method != http::Method::POST {
            return Verdict::MethodNotAllowed;
        }
        let Some(tokens) = &self.tokens else {
            return Verdict::Pass(Caller::anonymous());
        };
        let caller = bearer(request.headers()).map(|t| tokens.caller(t));
        match caller {
            Some(Some(caller)) => Verdict::Pass(caller),
            _ if self.is_open(path) => Verdict::Pass(Caller::anonymous()),
            Some(None) => Verdict::Unauthenticated("invalid bearer token"),
            None => Verdict::Unauthenticated("missing bearer token"),
        }
    }
}

/// What the layer does with a request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass(Caller),
    /// Not POST and not a dashboard asset: not a gRPC call, so no service sees it.
    MethodNotAllowed,
    Unauthenticated(&'static str),
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.policy.judge(&request) {
            Verdict::Pass(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Verdict::MethodNotAllowed => {
                self.policy.metrics.rpc_method_not_allowed.inc();
                let mut response = http::Response::new(R::default());
                *response.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
                response
                    .headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
                Box::pin(std::future::ready(Ok(response)))
            }
            Verdict::Unauthenticated(reason) => {
                self.policy
                    .metrics
                    .rpc_unauthenticated
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: reason.replace(' ', "_"),
                    })
                    .inc();
                let mut response = tonic::Status::unauthenticated(reason).into_http::<R>();
                // Answer in the request's own framing (application/grpc-web for browsers).
                if let Some(kind) = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .filter(|v| v.as_bytes().starts_with(b"application/grpc"))
                {
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, kind.clone());
                }
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let set = TokenSet::parse(
            "# callers\nbilling  0123456789abcdef0123\n\nhr-portal fedcba9876543210fedc # web\n",
        )
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.caller(b"fedcba9876543210fedc").map(|c| c.0.to_string()),
            Some("hr-portal".into())
        );
        assert_eq!(set.caller(b"fedcba9876543210fedd"), None);
        assert_eq!(set.caller(b""), None);
    }

    #[test]
    fn bad_files_say_which_line_and_never_the_token() {
        for (text, expect) in [
            ("a 0123456789abcdef0123 extra", "line 1"),
            ("a short", "shorter than 16"),
            ("a 0123456789abcdef0123\na 0123456789abcdef9999", "twice"),
            (
                "a 0123456789abcdef0123\nb 0123456789abcdef0123",
                "another caller",
            ),
            ("bad/name 0123456789abcdef0123", "caller name"),
            ("# nothing\n", "no tokens"),
        ] {
            let err = TokenSet::parse(text).unwrap_err();
            assert!(err.contains(expect), "{text:?}: {err}");
            assert!(!err.contains("0123456789abcdef"), "{err}");
        }
    }

    #[test]
    fn bearer_header_forms() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
