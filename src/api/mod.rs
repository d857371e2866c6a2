//! The gRPC API (`processstate.v1.ProcessService`): request validation, store calls, and
//! conversion to protobuf. Health and reflection are assembled with it in `app`.

mod convert;
pub mod deadline;
mod error;
mod filter;
mod page_token;
pub mod pb;
pub mod watch;

pub use error::{ApiError, ERROR_DOMAIN, oversize_is_resource_exhausted};

use crate::domain::{ProcessStatus, TaskStatus, TaskType, WatchFilter};
use crate::feed::ProcessCache;
use crate::store::{PageRequest, ProcessFilter, ReadLimit, Store, TaskFilter};
use pb::process_service_server::{ProcessService, ProcessServiceServer};
use pb::{
    GetProcessRequest, GetProcessResponse, ListProcessesRequest, ListProcessesResponse,
    ListTasksRequest, ListTasksResponse, WatchProcessRequest, WatchProcessResponse,
    WatchProcessesRequest, WatchProcessesResponse,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use watch::{WatchRequest, Watchers};

/// Largest request message accepted.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page; larger requests are served this many (AIP-158 coerces, it does not reject).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The `ProcessService` implementation.
#[derive(Debug, Clone)]
pub struct ProcessApi {
    store: Arc<dyn Store>,
    watchers: Watchers,
    cache: ProcessCache,
    /// Every store read of a call runs under it.
    reads: ReadLimit,
}

/// A server stream of one of the Watch RPCs.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl ProcessApi {
    pub fn new(
        store: Arc<dyn Store>,
        watchers: Watchers,
        cache: ProcessCache,
        reads: ReadLimit,
    ) -> Self {
        Self {
            store,
            watchers,
            cache,
            reads,
        }
    }

    /// The tonic service. It accepts gzip and zstd requests and compresses its answers with
    /// the first of them the client accepts (`grpc-accept-encoding`), as gRPC negotiates: a
    /// page of 1,000 tasks is about 218 KB uncompressed.
    pub fn into_service(self) -> ProcessServiceServer<Self> {
        use tonic::codec::CompressionEncoding::{Gzip, Zstd};
        ProcessServiceServer::new(self)
            // Requests are small; 1 MiB is room to spare (over it: RESOURCE_EXHAUSTED).
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .accept_compressed(Gzip)
            .accept_compressed(Zstd)
            .send_compressed(Gzip)
            .send_compressed(Zstd)
    }

    /// Opens a watch stream and wraps its events in the RPC's response type.
    async fn watch<T: Send + 'static>(
        &self,
        request: WatchRequest,
        wrap: fn(pb::WatchEvent) -> T,
    ) -> Result<Response<ResponseStream<T>>, Status> {
        let events = self.watchers.open(request).await?;
        Ok(Response::new(Box::pin(
            events.map(move |event| event.map(wrap)),
        )))
    }
}

#[tonic::async_trait]
impl ProcessService for ProcessApi {
    type WatchProcessStream = ResponseStream<WatchProcessResponse>;
    type WatchProcessesStream = ResponseStream<WatchProcessesResponse>;

    async fn watch_process(
        &self,
        request: Request<WatchProcessRequest>,
    ) -> Result<Response<Self::WatchProcessStream>, Status> {
        let req = request.into_inner();
        validate_id("process_id", &req.process_id)?;
        let filter = WatchFilter {
            process_id: Some(req.process_id),
            ..Default::default()
        };
        let request = WatchRequest {
            filter,
            start_revision: req.start_revision,
            fail_if_compacted: req.fail_if_compacted,
        };
        self.watch(request, |event| WatchProcessResponse { event: Some(event) })
            .await
    }

    async fn watch_processes(
        &self,
        request: Request<WatchProcessesRequest>,
    ) -> Result<Response<Self::WatchProcessesStream>, Status> {
        let mut req = request.into_inner();
        filter::processes(&mut req.statuses, &req.biz_type, &req.flow_definition_id)?;
        let filter = WatchFilter {
            process_id: None,
            statuses: req.statuses.iter().map(|&s| ProcessStatus(s)).collect(),
            biz_type: non_empty(req.biz_type),
            flow_definition_id: non_empty(req.flow_definition_id),
        };
        let request = WatchRequest {
            filter,
            start_revision: req.start_revision,
            fail_if_compacted: req.fail_if_compacted,
        };
        self.watch(request, |event| WatchProcessesResponse {
            event: Some(event),
        })
        .await
    }

    async fn get_process(
        &self,
        request: Request<GetProcessRequest>,
    ) -> Result<Response<GetProcessResponse>, Status> {
        let left = deadline::parse_timeout(request.metadata().as_ref())
            .unwrap_or(std::time::Duration::MAX);
        let GetProcessRequest {
            process_id,
            min_revision,
        } = request.into_inner();
        validate_id("process_id", &process_id)?;
        if min_revision < 0 {
            return Err(ApiError::invalid("min_revision", "must not be negative").into());
        }
        let read = || {
            self.cache.get_or_read(&process_id, min_revision, || {
                self.reads.run(self.store.get_process(&process_id))
            })
        };
        let (mut process, mut revision) = read().await.map_err(ApiError::from)?;
        if revision < min_revision {
            // Not committed yet anywhere: wait for it, within the call's deadline and
            // MIN_REVISION_WAIT, then read again; still not there, it is in the future.
            // Leave a fifth of the deadline to answer in.
            let wait = (left - left / 5).min(MIN_REVISION_WAIT);
            if self.watchers.reached(min_revision, wait).await {
                (process, revision) = read().await.map_err(ApiError::from)?;
            }
            if revision < min_revision {
                let msg = format!("is in the future: the latest revision is {revision}");
                return Err(ApiError::invalid("min_revision", msg).into());
            }
        }
        let process = process.ok_or(ApiError::ProcessNotFound(process_id))?;
        Ok(Response::new(GetProcessResponse {
            process: Some(pb::Process::from(Arc::unwrap_or_clone(process))),
            revision,
        }))
    }

    async fn list_processes(
        &self,
        request: Request<ListProcessesRequest>,
    ) -> Result<Response<ListProcessesResponse>, Status> {
        let mut req = request.into_inner();
        filter::processes(&mut req.statuses, &req.biz_type, &req.flow_definition_id)?;
        filter::text("initiator_id", &req.initiator_id, filter::MAX_ID)?;
        let (page, fingerprint) = start_page(&mut req)?;
        let filter = ProcessFilter {
            statuses: req.statuses.iter().map(|&s| ProcessStatus(s)).collect(),
            biz_type: non_empty(req.biz_type),
            flow_definition_id: non_empty(req.flow_definition_id),
            changed_since: changed_since(req.changed_since.as_ref())?,
            initiator_id: non_empty(req.initiator_id),
        };
        let page = self
            .reads
            .run(self.store.list_processes(&filter, &page))
            .await
            .map_err(ApiError::from)?;
        let next_page_token = next_token(
            page.more,
            page.items.last().map(|p| p.process_id.as_str()),
            &fingerprint,
        );
        Ok(Response::new(ListProcessesResponse {
            processes: page.items.into_iter().map(Into::into).collect(),
            next_page_token,
            revision: page.revision,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let mut req = request.into_inner();
        filter::enums::<pb::TaskStatus>("statuses", &mut req.statuses)?;
        filter::enums::<pb::TaskType>("types", &mut req.types)?;
        filter::text("biz_type", &req.biz_type, filter::MAX_BIZ_TYPE)?;
        filter::text(
            "flow_definition_id",
            &req.flow_definition_id,
            filter::MAX_ID,
        )?;
        filter::text(
            "node_definition_id",
            &req.node_definition_id,
            filter::MAX_ID,
        )?;
        filter::text("assignee_id", &req.assignee_id, filter::MAX_ID)?;
        let (page, fingerprint) = start_page(&mut req)?;
        if !req.process_id.is_empty() {
            validate_id("process_id", &req.process_id)?;
        }
        let filter = TaskFilter {
            process_id: non_empty(req.process_id),
            statuses: req.statuses.iter().map(|&s| TaskStatus(s)).collect(),
            types: req.types.iter().map(|&s| TaskType(s)).collect(),
            biz_type: non_empty(req.biz_type),
            flow_definition_id: non_empty(req.flow_definition_id),
            node_definition_id: non_empty(req.node_definition_id),
            changed_since: changed_since(req.changed_since.as_ref())?,
            assignee_id: non_empty(req.assignee_id),
        };
        let page = self
            .reads
            .run(self.store.list_tasks(&filter, &page))
            .await
            .map_err(ApiError::from)?;
        let next_page_token = next_token(
            page.more,
            page.items.last().map(|t| t.approver_id.as_str()),
            &fingerprint,
        );
        Ok(Response::new(ListTasksResponse {
            tasks: page.items.into_iter().map(Into::into).collect(),
            next_page_token,
            revision: page.revision,
        }))
    }

    async fn list_process_changes(
        &self,
        request: Request<pb::ListProcessChangesRequest>,
    ) -> Result<Response<pb::ListProcessChangesResponse>, Status> {
        let mut req = request.into_inner();
        validate_id("process_id", &req.process_id)?;
        let (page, fingerprint) = start_page(&mut req)?;
        let after = match page.after {
            None => 0,
            Some(after) => after
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("page_token", "is not a token of this RPC"))?,
        };
        let (log, origins) = self
            .reads
            .run(async {
                let log = self
                    .store
                    .changes_after(after, Some(&req.process_id), page.limit)
                    .await?;
                let ids: Vec<String> = log.sets.iter().map(|s| s.event_id.clone()).collect();
                let origins = self.store.event_origins(&ids).await?;
                Ok((log, origins))
            })
            .await
            .map_err(ApiError::from)?;
        // A full page may have a successor; a short one is the end of the retained log.
        let more = log.sets.len() == page.limit as usize;
        let last = log.sets.last().map(|s| s.revision.to_string());
        let next_page_token = next_token(more, last.as_deref(), &fingerprint);
        let changes = log
            .sets
            .iter()
            .map(|set| {
                let (event_type, source) = origins.get(&set.event_id).cloned().unwrap_or_default();
                pb::ProcessChange {
                    revision: set.revision,
                    change: Some(set.into()),
                    event_type,
                    source: convert::event_source(&source) as i32,
                }
            })
            .collect();
        Ok(Response::new(pb::ListProcessChangesResponse {
            changes,
            next_page_token,
            revision: log.through,
            pruned_through: log.pruned_through,
        }))
    }
}

impl Paged for pb::ListProcessChangesRequest {
    const RPC: &'static str = "ListProcessChanges";

    fn take_paging(&mut self) -> (i32, String) {
        (
            std::mem::take(&mut self.page_size),
            std::mem::take(&mut self.page_token),
        )
    }
}

/// Longest GetProcess waits for a `min_revision` that is not committed yet.
const MIN_REVISION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Feishu ids are decimal strings today; accept what an id could plausibly become, refuse what
/// cannot be one (empty, huge, spaces, punctuation).
fn validate_id(field: &'static str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if id.len() > 64 {
        return Err(ApiError::invalid(field, "must be at most 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::invalid(
            field,
            "must contain only letters, digits, '_' or '-'",
        ));
    }
    Ok(())
}

/// A list request: its paging fields, taken out so the rest is the filter.
trait Paged: prost::Message + Sized {
    /// The RPC's name: a page token is bound to it as well as to the filter.
    const RPC: &'static str;
    fn take_paging(&mut self) -> (i32, String);
}

impl Paged for ListProcessesRequest {
    const RPC: &'static str = "ListProcesses";

    fn take_paging(&mut self) -> (i32, String) {
        (
            std::mem::take(&mut self.page_size),
            std::mem::take(&mut self.page_token),
        )
    }
}

impl Paged for ListTasksRequest {
    const RPC: &'static str = "ListTasks";

    fn take_paging(&mut self) -> (i32, String) {
        (
            std::mem::take(&mut self.page_size),
            std::mem::take(&mut self.page_token),
        )
    }
}

/// Validates the paging fields and returns where to start and the filter's fingerprint (the
/// request with paging cleared), which binds the page tokens to the filter.
fn start_page<R: Paged>(req: &mut R) -> Result<(PageRequest, String), ApiError> {
    let (size, token) = req.take_paging();
    let limit = page_size(size)?;
    let fingerprint = page_token::fingerprint(R::RPC, req);
    Ok((
        PageRequest {
            after: resume_after(&token, &fingerprint)?,
            limit,
        },
        fingerprint,
    ))
}

fn page_size(requested: i32) -> Result<u32, ApiError> {
    match requested {
        n if n < 0 => Err(ApiError::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as u32).min(MAX_PAGE_SIZE)),
    }
}

fn resume_after(token: &str, fingerprint: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    page_token::decode(token, fingerprint)
        .map(Some)
        .map_err(|e| ApiError::invalid("page_token", e))
}

fn next_token(more: bool, last_id: Option<&str>, fingerprint: &str) -> String {
    match (more, last_id) {
        (true, Some(last)) => page_token::encode(last, fingerprint),
        _ => String::new(),
    }
}

fn changed_since(
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    t.map(|t| {
        convert::from_timestamp(t)
            .ok_or_else(|| ApiError::invalid("changed_since", "is not a valid timestamp"))
    })
    .transpose()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("process_id", "7384728360900888108").is_ok());
        assert!(validate_id("process_id", "people_1-a").is_ok());
        for bad in ["", "a b", "1;drop", &"9".repeat(65), "过程"] {
            assert!(validate_id("process_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert!(page_size(-1).is_err());
    }
}
