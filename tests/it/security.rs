//! TLS, mTLS, certificate reload and caller tokens, against the real service: real TLS
//! clients (tonic, reqwest), certificates made per test with rcgen.

use crate::common::{TestApp, TestDb, config, header_refs, signed_vector};
use process_state::api::pb::GetProcessRequest;
use process_state::api::pb::process_service_client::ProcessServiceClient;
use process_state::config::AuthConfig;
use process_state::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

const PROCESS_ID: &str = "7384728360900888108";

/// A certificate authority that issues server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// PEM certificate and key.
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str]) -> Pair {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ps-tls-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the server's pair (and optional client CA) and returns the file settings.
fn write_tls(dir: &std::path::Path, server: &Pair, client_ca: Option<&Ca>) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: client_ca.map(|_| dir.join("client-ca.pem")),
    };
    std::fs::write(&files.cert, &server.cert).unwrap();
    std::fs::write(&files.key, &server.key).unwrap();
    if let (Some(ca), Some(path)) = (client_ca, &files.client_ca) {
        std::fs::write(path, ca.pem()).unwrap();
    }
    files
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &Ca,
    identity: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn get(channel: Channel) -> Result<String, Status> {
    let response = ProcessServiceClient::new(channel)
        .get_process(GetProcessRequest {
            process_id: PROCESS_ID.into(),
            ..Default::default()
        })
        .await?;
    Ok(response.into_inner().process.unwrap().process_id)
}

pub async fn store_vector(app: &TestApp) {
    let (body, headers) = signed_vector();
    assert_eq!(app.post(body, &header_refs(&headers)).await.0, 200);
}

crate::on_both_stores! {
    #[tokio::test]
    async fn tls_serves_grpc_and_refuses_plaintext(backend) {
        let db = TestDb::on(backend).await;
        let ca = Ca::new("test CA");
        let dir = temp_dir();
        let mut config = config(&db);
        config.tls = Some(write_tls(
            &dir,
            &ca.issue(&["localhost", "127.0.0.1"]),
            None,
        ));
        let app = TestApp::spawn(config).await;
        store_vector(&app).await;

        let channel = tls_channel(app.grpc, &ca, None)
            .await
            .expect("TLS connects");
        assert_eq!(get(channel).await.unwrap(), PROCESS_ID);

        // A plaintext HTTP/2 client gets no gRPC answer from a TLS listener.
        let plain = Channel::from_shared(format!("http://{}", app.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect()
            .await;
        if let Ok(plain) = plain {
            let err = get(plain).await.expect_err("plaintext must not be served");
            assert_ne!(err.code(), Code::Ok);
        }
        // A client that does not trust the server's CA refuses it.
        let stranger = Ca::new("other CA");
        match tls_channel(app.grpc, &stranger, None).await {
            Err(_) => {}
            Ok(channel) => assert!(get(channel).await.is_err()),
        }
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn mtls_requires_a_client_certificate_from_the_ca(backend) {
        let db = TestDb::on(backend).await;
        let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
        let dir = temp_dir();
        let mut config = config(&db);
        config.tls = Some(write_tls(
            &dir,
            &server_ca.issue(&["localhost"]),
            Some(&client_ca),
        ));
        let app = TestApp::spawn(config).await;
        store_vector(&app).await;

        let client = client_ca.issue(&["billing"]);
        let channel = tls_channel(app.grpc, &server_ca, Some(&client))
            .await
            .expect("mTLS connects");
        assert_eq!(get(channel).await.unwrap(), PROCESS_ID);

        for identity in [None, Some(server_ca.issue(&["forged"]))] {
            let refused = match tls_channel(app.grpc, &server_ca, identity.as_ref()).await {
                Err(_) => true,
                Ok(channel) => get(channel).await.is_err(),
            };
            assert!(refused, "a client without a certificate from the CA got in");
        }
        app.stop().await;
    }
}

crate::on_both_stores! {
    #[tokio::test]
    async fn certificate_is_reloaded_when_its_files_change_and_http_tls_works(backend) {
        let db = TestDb::on(backend).await;
        let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
        let dir = temp_dir();
        let mut config = config(&db);
        config.tls = Some(write_tls(&dir, &old_ca.issue(&["localhost"]), None));
        config.http_tls = true;
        config.reload_poll = Duration::from_millis(100);
        let app = TestApp::spawn(config).await;

        // The HTTP listener speaks TLS with the same certificate.
        let https = |ca: &Ca| {
            reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
                .resolve("localhost", app.http)
                .build()
                .unwrap()
        };
        let url = format!("https://localhost:{}/healthz", app.http.port());
        let ok = https(&old_ca).get(&url).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert!(
            app.client
                .get(format!("http://{}/healthz", app.http))
                .send()
                .await
                .is_err(),
            "plaintext HTTP must not be served"
        );

        // Replace the certificate with one from another CA: new connections get it.
        write_tls(&dir, &new_ca.issue(&["localhost"]), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(channel) = tls_channel(app.grpc, &new_ca, None).await
                && get(channel).await.map_err(|s| s.code()) == Err(Code::NotFound)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new certificate was not served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reloaded = https(&new_ca).get(&url).send().await.unwrap();
        assert_eq!(reloaded.status(), 200);
        app.stop().await;
    }
}

const BILLING: &str = "billing-token-0123456789abcdef";
const ROTATED: &str = "billing-token-rotated-9876543210";

type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Api = ProcessServiceClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>;

fn with_token(channel: Channel, token: Option<&str>) -> Api {
    let header: Option<tonic::metadata::MetadataValue<_>> =
        token.map(|t| format!("Bearer {t}").parse().unwrap());
    let interceptor: AddToken = Box::new(move |mut request: Request<()>| {
        if let Some(h) = &header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    });
    ProcessServiceClient::with_interceptor(channel, interceptor)
}

async fn call(channel: &Channel, token: Option<&str>) -> Result<String, Code> {
    let response = with_token(channel.clone(), token)
        .get_process(GetProcessRequest {
            process_id: PROCESS_ID.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| s.code())?;
    Ok(response.into_inner().process.unwrap().process_id)
}

/// `grpc-status` of an empty POST to `path`, over HTTP/2 without TLS.
async fn raw_status(app: &TestApp, path: &str) -> String {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(format!("http://{}{path}", app.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    let status = response.headers().get("grpc-status").cloned();
    status.map_or_else(|| "in trailers".into(), |s| s.to_str().unwrap().to_owned())
}

crate::on_both_stores! {
    #[tokio::test]
    async fn bearer_tokens_authenticate_callers_and_rotate(backend) {
        let db = TestDb::on(backend).await;
        let dir = temp_dir();
        let tokens_file = dir.join("tokens");
        std::fs::write(
            &tokens_file,
            format!("# name token\nbilling {BILLING}\nhr-portal hr-portal-token-abcdefghijkl\n"),
        )
        .unwrap();
        let mut config = config(&db);
        config.auth = Some(AuthConfig {
            tokens_file: tokens_file.clone(),
            open_health: true,
            open_reflection: false,
        });
        config.reload_poll = Duration::from_millis(100);
        let app = TestApp::spawn(config).await;
        store_vector(&app).await;
        let channel = app.grpc_channel().await;

        assert_eq!(call(&channel, None).await, Err(Code::Unauthenticated));
        assert_eq!(
            call(&channel, Some("billing-token-0123456789abcdeX")).await,
            Err(Code::Unauthenticated)
        );
        assert_eq!(call(&channel, Some(BILLING)).await.unwrap(), PROCESS_ID);

        // Health is open by configuration; reflection is not.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let serving = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health needs no token");
        assert_eq!(serving.into_inner().status, 1);
        assert_eq!(
            raw_status(
                &app,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            )
            .await,
            "16"
        );

        // The caller's name labels its calls; refusals are counted by reason.
        let scrape = crate::metrics::scrape(&app).await;
        let billing = [
            ("method", "/processstate.v1.ProcessService/GetProcess"),
            ("caller", "billing"),
            ("code", "0"),
        ];
        assert_eq!(
            crate::metrics::value(&scrape, "process_state_rpc_seconds", &billing),
            1.0
        );
        let missing = [("reason", "missing_bearer_token")];
        let invalid = [("reason", "invalid_bearer_token")];
        assert!(
            crate::metrics::value(&scrape, "process_state_rpc_unauthenticated_total", &missing) >= 1.0
        );
        assert_eq!(
            crate::metrics::value(&scrape, "process_state_rpc_unauthenticated_total", &invalid),
            1.0
        );

        // Rotation: the file changes, the old token stops working and the new one starts.
        std::fs::write(
            &tokens_file,
            format!("billing {ROTATED}\nhr-portal hr-portal-token-abcdefghijkl\n"),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while call(&channel, Some(ROTATED)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the rotated token was not loaded"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            call(&channel, Some(BILLING)).await,
            Err(Code::Unauthenticated)
        );

        // A broken file is refused and the tokens in use stay.
        std::fs::write(&tokens_file, "billing short\n").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(call(&channel, Some(ROTATED)).await.unwrap(), PROCESS_ID);
        let scrape = crate::metrics::scrape(&app).await;
        let failed = [("what", "tokens"), ("outcome", "failed")];
        assert!(crate::metrics::value(&scrape, "process_state_reloads_total", &failed) >= 1.0);
        app.stop().await;
    }
}

/// Issue 16, safe defaults: a gRPC listener open to the network without caller
/// authentication is warned about at start; on loopback it is not.
#[tokio::test]
async fn an_open_grpc_listener_without_authentication_is_warned_about() {
    let logs = crate::common::logs::capture(tracing::level_filters::LevelFilter::INFO);
    let db = crate::common::TestDb::on(crate::common::Backend::Sqlite).await;
    let mut open = crate::common::config(&db);
    open.grpc_addr = "0.0.0.0:0".parse().unwrap();
    let app = crate::common::TestApp::spawn(open).await;
    app.stop().await;
    assert!(
        logs.text()
            .contains("open to the network without caller authentication"),
        "{}",
        logs.text()
    );
    let quiet = crate::common::logs::capture(tracing::level_filters::LevelFilter::INFO);
    let app = crate::common::TestApp::spawn(crate::common::config(&db)).await;
    app.stop().await;
    assert!(
        !quiet.text().contains("without caller authentication"),
        "{}",
        quiet.text()
    );
}
