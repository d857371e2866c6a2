//! The live dashboard (built from `dashboard/` with `npm run build`, embedded here), served on
//! the gRPC listener at `/` so its gRPC-web calls go to its own origin: internal users reach
//! it where they reach the API, and no CORS grant is needed.
//!
//! It is a tower layer in front of gRPC-web rather than a route behind it, because tonic-web
//! refuses every HTTP/1.1 request that is not gRPC-web, and browsers load pages over HTTP/1.1.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

const INDEX: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/dist/dashboard.js");

/// The dashboard's assets: the only requests on the gRPC listener that need no caller token
/// and are not POST (the auth layer refuses every other method).
fn asset(method: &Method, path: &str) -> Option<(&'static str, &'static str)> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path {
        "/" => Some((INDEX, "text/html; charset=utf-8")),
        "/dashboard.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        _ => None,
    }
}

/// Whether a request is for one of the dashboard's assets.
pub fn is_asset(method: &Method, path: &str) -> bool {
    asset(method, path).is_some()
}

/// Answers `GET`/`HEAD` of `/` and `/dashboard.js`; everything else goes to the inner service.
#[derive(Debug, Clone, Copy, Default)]
pub struct DashboardLayer;

impl<S> tower::Layer<S> for DashboardLayer {
    type Service = Dashboard<S>;

    fn layer(&self, inner: S) -> Dashboard<S> {
        Dashboard { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Dashboard<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<Request<B>> for Dashboard<S>
where
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match asset(request.method(), request.uri().path()) {
            Some((body, content_type)) => {
                let body = if request.method() == Method::HEAD {
                    ""
                } else {
                    body
                };
                Box::pin(std::future::ready(Ok(asset_response(body, content_type))))
            }
            None => Box::pin(self.inner.call(request)),
        }
    }
}

fn asset_response(body: &'static str, content_type: &'static str) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from_static(body.as_bytes()),
    )));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Scripts only from this origin; the page's styles are inline. No other site may frame
    // the page (clickjacking: it acts with the operator's token), sniff its types or learn
    // its address from a referrer.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
