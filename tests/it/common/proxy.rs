//! A TCP proxy in front of Postgres that can freeze: bytes stop flowing both ways on every
//! connection and new connections hang, as when the database host stalls or the network
//! drops packets. Only the network is faked; the database behind it is the real one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct FreezableProxy {
    pub addr: SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl FreezableProxy {
    /// A proxy in front of the test's database, and `config` pointed at it.
    pub async fn in_front_of(
        db: &super::TestDb,
        config: &mut process_state::config::Config,
    ) -> Self {
        let target = format!("{}:{}", db.options.get_host(), db.options.get_port());
        let target = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .unwrap();
        let proxy = Self::start(target).await;
        config.database = db
            .options
            .clone()
            .host(&proxy.addr.ip().to_string())
            .port(proxy.addr.port())
            .into();
        proxy
    }

    /// Listens on a free port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    thaw(&flag).await;
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, flag.clone()));
                    pump(sr, cw, flag).await;
                });
            }
        });
        Self { addr, frozen }
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

async fn thaw(frozen: &AtomicBool) {
    while frozen.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        thaw(&frozen).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        thaw(&frozen).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
