//! The API's error type and its one mapping to `tonic::Status`, with `google.rpc` details
//! (`BadRequest`, `ErrorInfo`) where they help the caller. Store failures are logged here,
//! once, and reach the caller only as a code.

use crate::store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What `RetryInfo` suggests to a client refused for overload or store trouble.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// `google.rpc.ErrorInfo.domain` of our errors.
pub const ERROR_DOMAIN: &str = "processstate.v1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    #[error("process {0} not found")]
    ProcessNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::InvalidArgument { field, description } => {
                let message = format!("invalid {field}: {description}");
                let details = ErrorDetails::with_bad_request_violation(field, description);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::ProcessNotFound(process_id) => {
                let message = format!("process {process_id} not found");
                let details = ErrorDetails::with_error_info(
                    "PROCESS_NOT_FOUND",
                    ERROR_DOMAIN,
                    [("process_id".to_owned(), process_id)],
                );
                Status::with_error_details(Code::NotFound, message, details)
            }
            // Retryable trouble carries RetryInfo, so standard clients back off and retry;
            // INTERNAL is only for our own bugs (a statement or a row we got wrong).
            ApiError::Store(StoreError::Overloaded) => {
                let mut details = ErrorDetails::with_retry_info(Some(RETRY_AFTER));
                details.set_error_info("READS_SATURATED", ERROR_DOMAIN, []);
                let message = "this replica is serving as many reads as it can; retry shortly";
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            ApiError::Store(err @ StoreError::Unavailable(_)) => {
                tracing::warn!(error = %err, "store unavailable while serving an RPC");
                let mut details = ErrorDetails::with_retry_info(Some(RETRY_AFTER));
                details.set_error_info("STORE_UNAVAILABLE", ERROR_DOMAIN, []);
                let message = "the state store is unavailable; retry later";
                Status::with_error_details(Code::Unavailable, message, details)
            }
            ApiError::Store(err) => {
                tracing::error!(error = %err, "store error while serving an RPC");
                let details = ErrorDetails::with_error_info("STORE_ERROR", ERROR_DOMAIN, []);
                Status::with_error_details(Code::Internal, "the state store failed", details)
            }
        }
    }
}

/// tonic answers a request message over its size limit `OUT_OF_RANGE`; the gRPC spec says
/// `RESOURCE_EXHAUSTED`, which is what clients expect for it. Rewrites that one answer (its
/// status is in the headers of a trailers-only response).
pub fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    const TOO_LARGE: &[&[u8]] = &[
        b"Error, decoded message length too large",
        b"Error,%20decoded%20message%20length%20too%20large",
    ];
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .is_some_and(|m| TOO_LARGE.iter().any(|p| m.as_bytes().starts_with(p)));
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
