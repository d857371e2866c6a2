//! `bench query`: GetProcess flat out and at half that rate against a replica holding
//! realistic processes, compared with a minimal tonic server answering GetProcess with a fixed
//! message of the same size: a process of its own like the service, under the same load
//! generator.

use super::percentile;
use super::replica::{BenchDb, Replica};
use crate::api::ResponseStream;
use crate::api::pb::process_service_client::ProcessServiceClient;
use crate::api::pb::process_service_server::{ProcessService, ProcessServiceServer};
use crate::api::pb::{
    GetProcessRequest, GetProcessResponse, ListProcessesRequest, ListProcessesResponse,
    ListTasksRequest, ListTasksResponse, WatchProcessRequest, WatchProcessResponse,
    WatchProcessesRequest, WatchProcessesResponse,
};
use crate::feishu::crypto::EncryptKey;
use crate::simulate::feishu_delivery;
use crate::simulate::scenario::{Tenant, process_events};
use clap::Args;
use rand::{SeedableRng, rngs::StdRng};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

const KEY: &str = "bench-encrypt-key";

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    pub callers: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Processes ingested before the runs.
    #[arg(long, default_value_t = 300)]
    pub processes: usize,
    /// Approval tasks loaded (directly, in SQL) for the ListTasks run; 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Concurrent ListTasks(page_size 1000) of the overload run; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    pub overload_calls: usize,
}

pub async fn run(admin: &str, args: QueryArgs) -> anyhow::Result<()> {
    let db = BenchDb::create(admin).await?;
    let result = run_in(&db, &args).await;
    db.drop_now().await?;
    result
}

async fn run_in(db: &BenchDb, args: &QueryArgs) -> anyhow::Result<()> {
    let replica = Replica::start(&db.url, &[("FEISHU_ENCRYPT_KEY", KEY)]).await?;
    let ids = ingest(&replica, args.processes).await?;
    let channel = Endpoint::from_shared(replica.grpc_url())?.connect().await?;
    let sample = ProcessServiceClient::new(channel.clone())
        .get_process(GetProcessRequest {
            process_id: ids[0].clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let size = prost::Message::encoded_len(&sample);

    let (ours, ours_lat) = load(&channel, &ids, args, None).await?;
    let (_, half_lat) = load(&channel, &ids, args, Some(ours / 2.0)).await?;
    if args.tasks > 0 {
        list_tasks(db, &channel, args).await?;
    }
    if args.overload_calls > 0 {
        super::overload::run(&replica, KEY, args.overload_calls).await?;
    }
    replica.stop().await;

    let (baseline, server) = start_minimal(&sample).await?;
    let (minimal, minimal_lat) = load(&baseline, &ids, args, None).await?;
    drop(server);

    println!(
        "GetProcess ({size}-byte answers, {} processes, {} callers, {} s per run):",
        args.processes, args.callers, args.seconds
    );
    println!(
        "  process-state flat out: {ours:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        ours_lat.0, ours_lat.1
    );
    println!(
        "  process-state at {:.0}/s (half): p50 {:.2} ms, p99 {:.2} ms",
        ours / 2.0,
        half_lat.0,
        half_lat.1
    );
    println!(
        "  minimal tonic server flat out: {minimal:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        minimal_lat.0, minimal_lat.1
    );
    println!(
        "ratio: process-state ÷ minimal tonic server = {:.2}",
        ours / minimal
    );
    Ok(())
}

/// Loads `args.tasks` approval tasks in SQL (statuses and types spread like real ones), then
/// pages through the TODO tasks of one business type, 100 per page, from several callers.
async fn list_tasks(db: &BenchDb, channel: &Channel, args: &QueryArgs) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await?;
    let loaded = Instant::now();
    sqlx::query(
        "insert into tasks (approver_id, process_id, task_type, status, biz_type, flow_definition_id,
                            node_definition_id, process_node_id, tenant_key, app_id, event_time, event_id,
                            change_time, revision)
         select (8000000000000000000 + n)::text, (7000000000000000000 + n / 4)::text,
                case when n % 10 = 0 then 5 else 1 end, (array[1, 2, 3, 3, 3, 4, 18])[n % 7 + 1],
                (array['leave', 'onboarding', 'corehr_probation_default_flow', 'renewal_record'])[n % 4 + 1],
                'people_1_2', 'approval_' || (n % 3), (n / 2)::text, 'bench', 'cli_bench', n, 'e' || n, now(), 1
         from generate_series(1, $1) n",
    )
    .bind(args.tasks as i64)
    .execute(&mut conn)
    .await?;
    sqlx::query("analyze tasks").execute(&mut conn).await?;
    println!(
        "ListTasks: {} tasks loaded in {:.1} s",
        args.tasks,
        loaded.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..args.callers.min(8) {
        let mut api = ProcessServiceClient::new(channel.clone());
        callers.spawn(async move {
            let (mut latencies, mut token) = (Vec::new(), String::new());
            while Instant::now() < deadline {
                let request = ListTasksRequest {
                    page_size: 100,
                    page_token: std::mem::take(&mut token),
                    statuses: vec![1],
                    biz_type: "leave".into(),
                    ..Default::default()
                };
                let sent = Instant::now();
                let page = api.list_tasks(request).await?.into_inner();
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                anyhow::ensure!(
                    page.tasks.len() == 100 || page.next_page_token.is_empty(),
                    "short page"
                );
                token = page.next_page_token;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = callers.join_next().await {
        latencies.extend(joined??);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "  pages of 100 (status TODO, biz_type leave), {} callers: {} pages, p50 {:.2} ms, p99 {:.2} ms",
        args.callers.min(8),
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0)
    );
    Ok(())
}

/// Sends `n` realistic processes through the webhook; returns their ids.
async fn ingest(replica: &Replica, n: usize) -> anyhow::Result<Vec<String>> {
    let key = EncryptKey::new(SecretString::from(KEY));
    let tenant = Tenant {
        app_id: "cli_bench".into(),
        tenant_key: "bench".into(),
        verification_token: None,
    };
    let mut rng = StdRng::seed_from_u64(7);
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (events, _) = process_events(&mut rng, &tenant, 1_719_391_068_000);
        ids.push(
            events[0]["event"]["process_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        for event in &events {
            let (body, headers) = feishu_delivery(Some(&key), event);
            let mut request = client.post(replica.webhook_url());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            anyhow::ensure!(
                request.body(body).send().await?.status().is_success(),
                "webhook refused an event"
            );
        }
    }
    Ok(ids)
}

/// Calls GetProcess from `callers` tasks for `seconds`, flat out or at `rate` calls per second
/// in total; returns calls per second and (p50, p99) latency in ms.
async fn load(
    channel: &Channel,
    ids: &[String],
    args: &QueryArgs,
    rate: Option<f64>,
) -> anyhow::Result<(f64, (f64, f64))> {
    let ids = Arc::new(ids.to_vec());
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..args.callers {
        let (mut api, ids) = (ProcessServiceClient::new(channel.clone()), ids.clone());
        let pause = rate.map(|r| Duration::from_secs_f64(args.callers as f64 / r));
        callers.spawn(async move {
            let mut latencies = Vec::new();
            let mut next = Instant::now();
            let mut i = c;
            while Instant::now() < deadline {
                if let Some(pause) = pause {
                    tokio::time::sleep_until(next.into()).await;
                    next += pause;
                }
                let sent = Instant::now();
                api.get_process(GetProcessRequest {
                    process_id: ids[i % ids.len()].clone(),
                    ..Default::default()
                })
                .await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                i += STRIDE;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = callers.join_next().await {
        latencies.extend(joined??);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((
        latencies.len() as f64 / secs,
        (percentile(&latencies, 50.0), percentile(&latencies, 99.0)),
    ))
}

/// Callers walk the ids with a prime stride so they do not all ask for the same process.
const STRIDE: usize = 7;

/// The ceiling: a tonic server that answers GetProcess with a fixed, already built message.
struct Minimal(GetProcessResponse);

#[tonic::async_trait]
impl ProcessService for Minimal {
    type WatchProcessStream = ResponseStream<WatchProcessResponse>;
    type WatchProcessesStream = ResponseStream<WatchProcessesResponse>;

    async fn get_process(
        &self,
        _: Request<GetProcessRequest>,
    ) -> Result<Response<GetProcessResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
    async fn list_processes(
        &self,
        _: Request<ListProcessesRequest>,
    ) -> Result<Response<ListProcessesResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn list_tasks(
        &self,
        _: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn watch_process(
        &self,
        _: Request<WatchProcessRequest>,
    ) -> Result<Response<Self::WatchProcessStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn watch_processes(
        &self,
        _: Request<WatchProcessesRequest>,
    ) -> Result<Response<Self::WatchProcessesStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// Arguments of the hidden `bench minimal-server`.
#[derive(Debug, Args)]
pub struct MinimalArgs {
    /// Address to listen on.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// The GetProcessResponse to answer every call with, protobuf-encoded, in hex.
    #[arg(long)]
    answer: String,
}

/// Starts the ceiling in a child process, as the service runs (same binary, same runtime), so
/// the two share the machine with the load generator alike; returns a connected channel.
async fn start_minimal(
    answer: &GetProcessResponse,
) -> anyhow::Result<(Channel, tokio::process::Child)> {
    let addr = format!("127.0.0.1:{}", super::replica::free_port()?);
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "minimal-server", "--addr", &addr, "--answer"])
        .arg(hex::encode(prost::Message::encode_to_vec(answer)))
        .kill_on_drop(true)
        .spawn()?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?;
    let started = Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok((channel, child)),
            Err(e) if started.elapsed() > Duration::from_secs(10) => {
                anyhow::bail!("minimal server on {addr} did not start: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Runs the minimal server until killed.
pub async fn serve_minimal(args: MinimalArgs) -> anyhow::Result<()> {
    let answer: GetProcessResponse = prost::Message::decode(&*hex::decode(&args.answer)?)?;
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tonic::transport::Server::builder()
        .add_service(ProcessServiceServer::new(Minimal(answer)))
        .serve_with_incoming(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |accepted| accepted.inspect(|tcp| drop(tcp.set_nodelay(true))),
        ))
        .await?;
    Ok(())
}
