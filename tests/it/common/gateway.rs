//! A fake Feishu long-connection gateway: endpoint discovery (HTTP) and the WebSocket server.
//! It sends event frames whole or chunked, drops connections, refuses handshakes with
//! Feishu's diagnostic headers, can stop answering pings, and records acks.

use axum::{Json, Router, extract::State, routing::post};
use futures::{SinkExt, StreamExt};
use process_state::feishu::frame::{Frame, Header, Kind, METHOD_CONTROL, METHOD_DATA};
use prost::Message as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

pub const SERVICE_ID: i32 = 33_554_678;
pub const APP_ID: &str = "cli_a1b2c3d4e5f60718";
pub const APP_SECRET: &str = "test-app-secret";

/// Commands to the live connection: a frame to send, or `None` to drop the socket.
type Live = mpsc::Sender<Option<Vec<u8>>>;

/// A handshake refusal: HTTP status and headers.
type Refusal = (u16, Vec<(&'static str, String)>);

#[derive(Default)]
struct Shared {
    ws_addr: String,
    endpoint_code: AtomicI64,
    client_config: std::sync::Mutex<Value>,
    refuse: std::sync::Mutex<Option<Refusal>>,
    silent: AtomicBool,
    discoveries: AtomicUsize,
    connections: AtomicUsize,
    pings: AtomicUsize,
    live: Mutex<Option<Live>>,
    connected: Notify,
    acks: Mutex<Vec<Frame>>,
    acked: Notify,
}

#[derive(Clone)]
pub struct FakeGateway {
    pub base_url: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGateway")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl FakeGateway {
    /// Starts a gateway whose endpoint config makes clients ping every second and reconnect
    /// without delay.
    pub async fn start() -> Self {
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", http.local_addr().unwrap());
        let shared = Arc::new(Shared {
            ws_addr: ws.local_addr().unwrap().to_string(),
            client_config: std::sync::Mutex::new(
                json!({"PingInterval": 1, "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 0}),
            ),
            ..Default::default()
        });
        let app = Router::new()
            .route("/callback/ws/endpoint", post(discover))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(http, app).await });
        tokio::spawn(accept(ws, shared.clone()));
        Self { base_url, shared }
    }

    /// The `ClientConfig` endpoint discovery hands out from now on.
    pub fn set_client_config(&self, config: Value) {
        *self.shared.client_config.lock().unwrap() = config;
    }

    /// Endpoint discovery answers this code (0 = OK).
    pub fn set_endpoint_code(&self, code: i64) {
        self.shared.endpoint_code.store(code, Ordering::SeqCst);
    }

    /// Handshakes are refused with this HTTP status and headers (`None`: accepted).
    pub fn refuse_handshakes(&self, refusal: Option<Refusal>) {
        *self.shared.refuse.lock().unwrap() = refusal;
    }

    /// Stop answering pings and sending anything: a half-open connection.
    pub fn go_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::SeqCst);
    }

    pub fn discoveries(&self) -> usize {
        self.shared.discoveries.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn pings(&self) -> usize {
        self.shared.pings.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections have been accepted in total.
    pub async fn wait_connections(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while self.connections() < n {
                let notified = self.shared.connected.notified();
                if self.connections() >= n {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the worker never made connection {n}"));
    }

    /// Sends a frame on the live connection.
    pub async fn send(&self, frame: &Frame) {
        self.send_raw(frame.encode_to_vec()).await;
    }

    /// Sends any bytes as a binary message on the live connection.
    pub async fn send_raw(&self, bytes: Vec<u8>) {
        let live = self.shared.live.lock().await.clone();
        live.expect("a live connection")
            .send(Some(bytes))
            .await
            .unwrap();
    }

    /// Drops the live connection without a close handshake.
    pub async fn drop_connection(&self) {
        if let Some(live) = self.shared.live.lock().await.take() {
            let _ = live.send(None).await;
        }
    }

    /// Waits until `n` acks have been received; returns them all.
    pub async fn wait_acks(&self, n: usize) -> Vec<Frame> {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let notified = self.shared.acked.notified();
                let acks = self.shared.acks.lock().await.clone();
                if acks.len() >= n {
                    return acks;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} acks arrived"))
    }

    pub async fn acks(&self) -> Vec<Frame> {
        self.shared.acks.lock().await.clone()
    }
}

async fn discover(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Json<Value> {
    shared.discoveries.fetch_add(1, Ordering::SeqCst);
    let code = shared.endpoint_code.load(Ordering::SeqCst);
    if body["AppID"] != APP_ID || body["AppSecret"] != APP_SECRET {
        return Json(json!({"code": 403, "msg": "forbidden"}));
    }
    if code != 0 {
        return Json(json!({"code": code, "msg": "refused by the fake gateway"}));
    }
    let n = shared.discoveries.load(Ordering::SeqCst);
    let url = format!(
        "ws://{}/ws/v2?fpid=493&aid=552564&device_id=dev-{n}&access_key=secretkey&service_id={SERVICE_ID}&ticket=t-{n}",
        shared.ws_addr
    );
    let config = shared.client_config.lock().unwrap().clone();
    Json(json!({"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": config}}))
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let refusal = shared.refuse.lock().unwrap().clone();
            // The callback's signature is tungstenite's.
            #[allow(clippy::result_large_err)]
            let callback =
                move |_: &Request, response: Response| -> Result<Response, ErrorResponse> {
                    let Some((status, headers)) = refusal else {
                        return Ok(response);
                    };
                    let mut refused = ErrorResponse::new(Some("refused".into()));
                    *refused.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    for (name, value) in headers {
                        refused.headers_mut().insert(name, value.parse().unwrap());
                    }
                    Err(refused)
                };
            let Ok(socket) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            serve(socket, shared).await;
        });
    }
}

async fn serve(
    socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    shared: Arc<Shared>,
) {
    let (mut sink, mut stream) = socket.split();
    let (live, mut commands) = mpsc::channel(64);
    *shared.live.lock().await = Some(live);
    shared.connections.fetch_add(1, Ordering::SeqCst);
    shared.connected.notify_waiters();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Some(bytes)) => {
                    if sink.send(Message::Binary(bytes.into())).await.is_err() {
                        return;
                    }
                }
                _ => return, // dropped: no close handshake
            },
            inbound = stream.next() => {
                let Some(Ok(Message::Binary(bytes))) = inbound else {
                    if matches!(inbound, Some(Ok(_))) { continue; }
                    return;
                };
                let frame = Frame::decode_bytes(&bytes).expect("the client sends valid frames");
                match frame.kind() {
                    Kind::Ping => {
                        assert_eq!((frame.service, frame.seq_id, frame.log_id), (SERVICE_ID, 0, 0));
                        shared.pings.fetch_add(1, Ordering::SeqCst);
                        if !shared.silent.load(Ordering::SeqCst) {
                            let mut pong = Frame::ping(SERVICE_ID);
                            pong.headers = vec![header("type", "pong")];
                            let _ = sink.send(Message::Binary(pong.encode_to_vec().into())).await;
                        }
                    }
                    Kind::Event => {
                        shared.acks.lock().await.push(frame);
                        shared.acked.notify_waiters();
                    }
                    other => panic!("unexpected frame from the client: {other:?}"),
                }
            }
        }
    }
}

pub fn header(key: &str, value: &str) -> Header {
    Header {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// Event frames for `payload`: one frame, or `sum` chunks of it.
pub fn event_frames(message_id: &str, payload: &[u8], sum: usize, seq_id: u64) -> Vec<Frame> {
    let size = payload.len().div_ceil(sum);
    payload
        .chunks(size.max(1))
        .enumerate()
        .map(|(seq, part)| Frame {
            seq_id: seq_id + seq as u64,
            log_id: 7,
            service: SERVICE_ID,
            method: METHOD_DATA,
            headers: vec![
                header("type", "event"),
                header("message_id", message_id),
                header("sum", &sum.to_string()),
                header("seq", &seq.to_string()),
                header("trace_id", &format!("trace-{message_id}")),
            ],
            payload_encoding: None,
            payload_type: None,
            payload: Some(part.to_vec()),
            log_id_new: None,
        })
        .collect()
}

/// A pong carrying a `ClientConfig` update.
pub fn pong_with_config(config: &Value) -> Frame {
    let mut pong = Frame::ping(SERVICE_ID);
    pong.headers = vec![header("type", "pong")];
    pong.payload = Some(config.to_string().into_bytes());
    pong
}

/// A control frame the client must ignore (a server-sent ping).
pub fn server_ping() -> Frame {
    Frame {
        method: METHOD_CONTROL,
        ..Frame::ping(SERVICE_ID)
    }
}
