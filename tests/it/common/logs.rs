//! Capturing what the service logs, per test. One global subscriber is installed for the whole
//! test binary; it writes an event only on a thread that is capturing, into that capture.
//! Tests run the service on their own current-thread runtime, so the capture holds exactly
//! that test's service (`TestApp::spawn` keeps the intake on that runtime too). (Scoped `set_default` subscribers were flaky next to other tests:
//! tracing caches callsite interest across threads.)

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};
use tracing_subscriber::filter::{DynFilterFn, EnvFilter, FilterExt, LevelFilter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// A capture's buffer and the level it records from.
type Capture = (Arc<Mutex<Vec<u8>>>, LevelFilter);

thread_local! {
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// What one thread logged while the value lives.
#[derive(Debug)]
pub struct Captured {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

/// Starts capturing this thread's events at `level` and above, through the service's own cap
/// on secret-bearing targets.
pub fn capture(level: LevelFilter) -> Captured {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let on_capturing_thread = DynFilterFn::new(|meta, _| {
            CAPTURE.with(|c| {
                c.borrow()
                    .as_ref()
                    .is_some_and(|(_, level)| meta.level() <= level)
            })
        });
        let cap = process_state::telemetry::capped(EnvFilter::new("trace"));
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| ThreadWriter)
            .with_filter(cap.and(on_capturing_thread));
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .expect("no other global subscriber in the test binary");
    });
    let buffer = Arc::new(Mutex::new(Vec::new()));
    CAPTURE.with(|c| *c.borrow_mut() = Some((buffer.clone(), level)));
    Captured { buffer }
}

/// Whether this thread is capturing.
pub fn capturing() -> bool {
    CAPTURE.with(|c| c.borrow().is_some())
}

struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some((buffer, _)) = c.borrow().as_ref() {
                buffer.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
