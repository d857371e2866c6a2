//! Deadlines (`grpc-timeout`) answered the way gRPC clients expect: a call whose deadline
//! passes before its answer ends `DEADLINE_EXCEEDED`, and a stream still open at its deadline
//! ends with `DEADLINE_EXCEEDED` trailers.
//!
//! tonic's own timeout sits outside every layer of ours: it answers `CANCELLED "Timeout
//! expired"`, without the CORS headers a browser needs, and it does not end streams. This
//! layer runs inside gRPC-web (so its answers are translated like any other) and fires a
//! little before tonic's timer, so tonic's never does.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;

/// The deadline a `grpc-timeout` header sets (`<up to 8 digits><unit>`).
pub fn parse_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Fires ahead of tonic's own timer by a fiftieth of the timeout (at least 2 ms).
fn ours(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 50).max(Duration::from_millis(2)))
}

/// What a call or stream cut at its deadline is told (no `%`: it goes into `grpc-message`).
const EXCEEDED: &str = "the call's deadline (grpc-timeout) passed";

fn exceeded() -> tonic::Status {
    tonic::Status::deadline_exceeded(EXCEEDED)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<tower::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(timeout) = parse_timeout(request.headers()) else {
            let call = self.inner.call(request);
            return Box::pin(async move { Ok(call.await?.map(Body::new)) });
        };
        let deadline = Instant::now() + ours(timeout);
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(response)) => Ok(response.map(|body| {
                    Body::new(DeadlineBody {
                        inner: Box::pin(body),
                        deadline: Box::pin(tokio::time::sleep_until(deadline)),
                        ended: false,
                    })
                })),
                Ok(Err(err)) => Err(err),
                Err(_) => Ok(exceeded().into_http()),
            }
        })
    }
}

/// A response body that ends with `DEADLINE_EXCEEDED` trailers if it is still open at the
/// deadline.
struct DeadlineBody<B> {
    inner: Pin<Box<B>>,
    deadline: Pin<Box<Sleep>>,
    ended: bool,
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<tower::BoxError>,
{
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            if frame.is_none() {
                this.ended = true;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.ended = true;
            let mut trailers = HeaderMap::new();
            let code = (tonic::Code::DeadlineExceeded as i32).to_string();
            trailers.insert("grpc-status", code.parse().expect("digits"));
            trailers.insert("grpc-message", http::HeaderValue::from_static(EXCEEDED));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_grpc_defines_them() {
        let mut h = HeaderMap::new();
        for (value, want) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
        ] {
            h.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(parse_timeout(&h), want, "{value}");
        }
        assert_eq!(ours(Duration::from_secs(1)), Duration::from_millis(980));
        assert_eq!(ours(Duration::from_millis(10)), Duration::from_millis(8));
    }
}
