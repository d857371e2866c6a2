//! `bench query`: GetProcess flat out and at half that rate against a replica holding
//! realistic processes, compared with a minimal tonic server answering GetProcess with a fixed
//! message of the same size: a process of its own like the service, under the same load
//! generator.

use super::percentile;
use super::replica::{BenchDb, Replica, Stores};
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
    /// Which stores to run the service on; with both, their ratios are printed.
    #[arg(long, value_enum, default_value_t = Stores::Both)]
    pub store: Stores,
}

pub async fn run(admin: &str, args: QueryArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for store in args.store.each() {
        let db = BenchDb::on(store, admin).await?;
        println!("on {}:", db.describe());
        let result = run_in(&db, &args).await;
        db.drop_now().await?;
        runs.push(result?);
    }
    let Some((ours, sample)) = runs.last() else {
        return Ok(());
    };
    let (baseline, server) = start_minimal(sample).await?;
    let ids = [String::new()]; // the minimal server answers every id alike
    let (minimal, minimal_lat) = load(&baseline, &ids, &args, None).await?;
    drop(server);
    println!(
        "minimal tonic server flat out: {minimal:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        minimal_lat.0, minimal_lat.1
    );
    println!(
        "ratio: process-state GetProcess ÷ minimal tonic server = {:.2}",
        ours.get.0 / minimal
    );
    if let [(sqlite, _), (postgres, _)] = &runs[..] {
        println!(
            "ratios SQLite ÷ Postgres (throughput: above 1 is faster; latency: below 1 is faster):"
        );
        println!(
            "  GetProcess flat out, calls/s: {:.2}",
            sqlite.get.0 / postgres.get.0
        );
        println!(
            "  GetProcess at half rate, p50 / p99 latency: {:.2} / {:.2}",
            sqlite.half.0 / postgres.half.0,
            sqlite.half.1 / postgres.half.1
        );
        if let (Some(s), Some(p)) = (sqlite.list, postgres.list) {
            println!(
                "  ListTasks pages, p50 / p99 latency: {:.2} / {:.2}",
                s.0 / p.0,
                s.1 / p.1
            );
        }
    }
    Ok(())
}

/// One store's numbers: GetProcess flat out (calls/s, p50, p99), at half that rate (p50,
/// p99), and ListTasks pages (p50, p99).
#[derive(Debug, Clone, Copy)]
struct Numbers {
    get: (f64, f64, f64),
    half: (f64, f64),
    list: Option<(f64, f64)>,
}

async fn run_in(db: &BenchDb, args: &QueryArgs) -> anyhow::Result<(Numbers, GetProcessResponse)> {
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
    println!(
        "GetProcess ({size}-byte answers, {} processes, {} callers, {} s per run):",
        args.processes, args.callers, args.seconds
    );
    println!(
        "  flat out: {ours:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        ours_lat.0, ours_lat.1
    );
    println!(
        "  at {:.0}/s (half): p50 {:.2} ms, p99 {:.2} ms",
        ours / 2.0,
        half_lat.0,
        half_lat.1
    );
    let list = if args.tasks > 0 {
        Some(list_tasks(db, &channel, args).await?)
    } else {
        None
    };
    if args.overload_calls > 0 {
        super::overload::run(&replica, KEY, args.overload_calls).await?;
    }
    replica.stop().await;
    let numbers = Numbers {
        get: (ours, ours_lat.0, ours_lat.1),
        half: half_lat,
        list,
    };
    Ok((numbers, sample))
}

/// `args.tasks` approval tasks (statuses and types spread like real ones), in one statement
/// both dialects run: the replica's cache and feed never see them, as no watcher needs to.
fn task_rows(n: u64, change_time: &str) -> String {
    format!(
        "insert into tasks (approver_id, process_id, task_type, status, biz_type, flow_definition_id,
                            node_definition_id, process_node_id, tenant_key, app_id, event_time, event_id,
                            change_time, revision)
         with recursive s(n) as (select 1 union all select n + 1 from s where n < {n})
         select cast(8000000000000000000 + n as text), cast(7000000000000000000 + n / 4 as text),
                case when n % 10 = 0 then 5 else 1 end,
                case n % 7 when 0 then 1 when 1 then 2 when 5 then 4 when 6 then 18 else 3 end,
                case n % 4 when 0 then 'leave' when 1 then 'onboarding'
                           when 2 then 'corehr_probation_default_flow' else 'renewal_record' end,
                'people_1_2', 'approval_' || cast(n % 3 as text), cast(n / 2 as text), 'bench', 'cli_bench',
                n, 'e' || cast(n as text), {change_time}, 1
         from s"
    )
}

/// Loads `args.tasks` approval tasks in SQL, then pages through the TODO tasks of one
/// business type, 100 per page, from several callers; returns (p50, p99) in ms.
async fn list_tasks(
    db: &BenchDb,
    channel: &Channel,
    args: &QueryArgs,
) -> anyhow::Result<(f64, f64)> {
    use sqlx::ConnectOptions;
    let loaded = Instant::now();
    // The load is one long statement by design: not worth sqlx's slow-statement warning.
    if db.is_sqlite() {
        let options: sqlx::sqlite::SqliteConnectOptions = db.url.parse()?;
        let mut conn = options.disable_statement_logging().connect().await?;
        let now = format!("'{}'", crate::store::stored_time(chrono::Utc::now()));
        sqlx::query(&task_rows(args.tasks, &now))
            .execute(&mut conn)
            .await?;
        sqlx::query("analyze tasks").execute(&mut conn).await?;
    } else {
        let options: sqlx::postgres::PgConnectOptions = db.url.parse()?;
        let mut conn = options.disable_statement_logging().connect().await?;
        sqlx::query(&task_rows(args.tasks, "now()"))
            .execute(&mut conn)
            .await?;
        sqlx::query("analyze tasks").execute(&mut conn).await?;
    }
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
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    println!(
        "  pages of 100 (status TODO, biz_type leave), {} callers: {} pages, p50 {p50:.2} ms, p99 {p99:.2} ms",
        args.callers.min(8),
        latencies.len(),
    );
    Ok((p50, p99))
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
    async fn list_process_changes(
        &self,
        _: Request<crate::api::pb::ListProcessChangesRequest>,
    ) -> Result<Response<crate::api::pb::ListProcessChangesResponse>, Status> {
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
