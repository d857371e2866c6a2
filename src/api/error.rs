//! The API's error type and its one mapping to `tonic::Status`, with `google.rpc` details
//! (`BadRequest`, `ErrorInfo`) where they help the caller. Store failures are logged here,
//! once, and reach the caller only as a code.

use crate::store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

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
            ApiError::Store(err) => {
                tracing::error!(error = %err, "store error while serving an RPC");
                let (code, reason) = match err {
                    StoreError::Unavailable(_) => (Code::Unavailable, "STORE_UNAVAILABLE"),
                    _ => (Code::Internal, "STORE_ERROR"),
                };
                let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, []);
                Status::with_error_details(code, "the state store failed; retry later", details)
            }
        }
    }
}
