//! The writer's WAL writes gathered into a few large `pwrite`s per commit: a SQLite VFS that is
//! the `unix` VFS except for the WAL file, whose writes wait in a buffer until the commit's sync.
//!
//! SQLite writes each WAL frame as two calls, its 24-byte header and its page, so a ~23-event
//! batch (~185 pages) is ~370 `pwrite`s before the one `fsync`; under `bench ingest` writing
//! the frames was a quarter of the writer thread's time. Gathered, the thread spends ~17 % less
//! CPU per event and SQLite ingest is ~9 % faster (docs/architecture.md, "tenth session").
//!
//! SQLite appends frames in order and syncs before a commit is visible to any other connection
//! (the WAL index is updated after the sync), so a buffer flushed at the sync, and before
//! anything else that looks at the file (a read of it, its size, a truncate, closing), writes
//! the same bytes in the same order as the calls would have; a commit is durable exactly when
//! it was before. Only the writer connection opens its files through this VFS, and only with
//! `synchronous=FULL`: under `NORMAL` a commit is not synced, so other connections would be
//! told of frames still waiting here.
#![allow(unsafe_code)]

use libsqlite3_sys as ffi;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

/// The VFS's name, for the writer's connect options.
pub(super) const NAME: &str = "process-state-wal";
const NAME_C: &CStr = c"process-state-wal";

/// Bytes gathered at most before they are written anyway (a batch is ~770 KB).
const LIMIT: usize = 4 << 20;

/// The most one `unix` write takes (its `seekAndWrite` keeps the low 17 bits of the length).
const CHUNK: usize = 0x1_ffff;

/// A WAL file opened through this VFS: SQLite's handle, what waits to be written, then the
/// `unix` VFS's own handle (`szOsFile` makes room for it after this struct).
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    /// Bytes not written yet, which belong at `at` in the file.
    pending: Vec<u8>,
    at: i64,
}

impl WalFile {
    /// Where the buffered bytes end in the file.
    fn end(&self) -> i64 {
        self.at + self.pending.len() as i64
    }
}

// `unix`'s handle follows a `WalFile` and needs 8-byte alignment, which SQLite's allocation of
// `szOsFile` bytes has.
const _: () = assert!(size_of::<WalFile>().is_multiple_of(8));

/// The `unix` VFS this one forwards to, once registered.
struct Unix(*mut ffi::sqlite3_vfs);
// SAFETY: SQLite's VFS objects are immutable once registered and safe to use from any thread.
unsafe impl Send for Unix {}
unsafe impl Sync for Unix {}

static UNIX: OnceLock<Result<Unix, String>> = OnceLock::new();

/// Registers the VFS (once per process) and returns its name.
pub(super) fn register() -> Result<&'static str, String> {
    // SAFETY: `sqlite3_vfs_find` and `sqlite3_vfs_register` are thread-safe; the registered
    // struct is leaked, so it lives as long as the process, as SQLite requires.
    let registered = UNIX.get_or_init(|| unsafe {
        let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
        if unix.is_null() {
            return Err("this SQLite has no unix VFS".to_owned());
        }
        let mut ours = *unix;
        let own = c_int::try_from(size_of::<WalFile>()).expect("a few dozen bytes");
        ours.szOsFile = own + (*unix).szOsFile;
        ours.zName = NAME_C.as_ptr();
        ours.pNext = ptr::null_mut();
        ours.xOpen = Some(open);
        match ffi::sqlite3_vfs_register(Box::leak(Box::new(ours)), 0) {
            ffi::SQLITE_OK => Ok(Unix(unix)),
            rc => Err(format!(
                "SQLite refused the WAL-writes VFS (result code {rc})"
            )),
        }
    });
    registered.as_ref().map(|_| NAME).map_err(Clone::clone)
}

fn unix() -> *mut ffi::sqlite3_vfs {
    match UNIX.get() {
        Some(Ok(Unix(vfs))) => *vfs,
        _ => unreachable!("files are opened through the VFS only after it was registered"),
    }
}

/// The `unix` handle behind a WAL file of ours.
unsafe fn inner(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    unsafe { file.cast::<u8>().add(size_of::<WalFile>()).cast() }
}

/// The `unix` handle's methods (set by its `xOpen`, never null on a file SQLite uses).
unsafe fn methods(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    unsafe { &*(*inner(file)).pMethods }
}

/// Opens every file as `unix` does; a WAL file gets [`METHODS`] in front of it.
unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let unix = unix();
    // SAFETY: SQLite gives `file` our `szOsFile` bytes, enough for `unix`'s handle alone or
    // for a `WalFile` followed by it; `unix`'s `xOpen` is always set.
    unsafe {
        let open = (*unix).xOpen.expect("unix VFS has xOpen");
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return open(unix, name, file, flags, out_flags);
        }
        let rc = open(unix, name, inner(file), flags, out_flags);
        if (*inner(file)).pMethods.is_null() {
            (*file).pMethods = ptr::null();
            return rc;
        }
        let base = ffi::sqlite3_file { pMethods: &METHODS };
        let pending = Vec::new();
        ptr::write(
            file.cast::<WalFile>(),
            WalFile {
                base,
                pending,
                at: 0,
            },
        );
        rc
    }
}

/// Writes what waits, if anything, in calls of at most [`CHUNK`] bytes. The bytes are dropped
/// either way: a failed write fails the call that flushed, and SQLite rolls the transaction
/// back.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `file` is a `WalFile` (only [`METHODS`] call this) that SQLite uses from one
    // thread at a time.
    unsafe {
        let wal = &mut *file.cast::<WalFile>();
        let write = methods(file).xWrite.expect("unix files have xWrite");
        let mut rc = ffi::SQLITE_OK;
        let mut at = wal.at;
        for chunk in wal.pending.chunks(CHUNK) {
            let len = c_int::try_from(chunk.len()).expect("CHUNK fits a c_int");
            rc = write(inner(file), chunk.as_ptr().cast(), len, at);
            if rc != ffi::SQLITE_OK {
                break;
            }
            at += i64::from(len);
        }
        wal.pending.clear();
        rc
    }
}

/// A write that continues the buffered bytes joins them; any other write flushes them first.
unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: as in `flush` (each borrow of the `WalFile` ends before `flush` takes its own);
    // SQLite's `data` holds `amount` bytes.
    unsafe {
        let len = usize::try_from(amount).unwrap_or(0);
        let (joins, room) = {
            let wal = &*file.cast::<WalFile>();
            let joins = !wal.pending.is_empty() && offset == wal.end();
            (joins, wal.pending.len() + len <= LIMIT)
        };
        if !joins || !room {
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            (*file.cast::<WalFile>()).at = offset;
        }
        let bytes = std::slice::from_raw_parts(data.cast(), len);
        (*file.cast::<WalFile>()).pending.extend_from_slice(bytes);
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: as in `write`. A read of bytes still buffered (SQLite rereading frames of the
    // open transaction) first writes them.
    unsafe {
        let overlaps = {
            let wal = &*file.cast::<WalFile>();
            !wal.pending.is_empty() && offset < wal.end() && offset + i64::from(amount) > wal.at
        };
        if overlaps {
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        (methods(file).xRead.expect("unix files have xRead"))(inner(file), data, amount, offset)
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: as in `flush`.
    unsafe {
        match flush(file) {
            ffi::SQLITE_OK => (methods(file).xSync.expect("xSync"))(inner(file), flags),
            rc => rc,
        }
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: as in `flush`.
    unsafe {
        match flush(file) {
            ffi::SQLITE_OK => (methods(file).xTruncate.expect("xTruncate"))(inner(file), size),
            rc => rc,
        }
    }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: as in `flush`.
    unsafe {
        match flush(file) {
            ffi::SQLITE_OK => (methods(file).xFileSize.expect("xFileSize"))(inner(file), size),
            rc => rc,
        }
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as in `flush`; SQLite uses the handle no more after `xClose`, so the buffer is
    // dropped here, and `unix`'s handle is closed even when the last write failed.
    unsafe {
        let flushed = flush(file);
        ptr::drop_in_place(ptr::addr_of_mut!((*file.cast::<WalFile>()).pending));
        let closed = (methods(file).xClose.expect("xClose"))(inner(file));
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: forwards to `unix`'s handle.
    unsafe { (methods(file).xLock.expect("xLock"))(inner(file), level) }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: forwards to `unix`'s handle.
    unsafe { (methods(file).xUnlock.expect("xUnlock"))(inner(file), level) }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: forwards to `unix`'s handle.
    unsafe {
        (methods(file)
            .xCheckReservedLock
            .expect("xCheckReservedLock"))(inner(file), out)
    }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: forwards to `unix`'s handle.
    unsafe { (methods(file).xFileControl.expect("xFileControl"))(inner(file), op, arg) }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwards to `unix`'s handle.
    unsafe { (methods(file).xSectorSize.expect("xSectorSize"))(inner(file)) }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwards to `unix`'s handle.
    unsafe {
        (methods(file)
            .xDeviceCharacteristics
            .expect("xDeviceCharacteristics"))(inner(file))
    }
}

/// Version 1: SQLite maps and shares memory through the database file, never the WAL.
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::{METHODS, ffi};
    use crate::store::Store;
    use std::ffi::{CStr, CString, c_void};
    use std::path::{Path, PathBuf};
    use std::ptr;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ps-{name}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A connection on this thread, through `vfs` (SQLite's default when `None`).
    struct Db(*mut ffi::sqlite3);

    impl Db {
        fn open(path: &Path, vfs: Option<&str>) -> Db {
            let path = CString::new(path.to_str().unwrap()).unwrap();
            let vfs = vfs.map(|name| CString::new(name).unwrap());
            let vfs = vfs.as_ref().map_or(ptr::null(), |name| name.as_ptr());
            let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE;
            let mut db = ptr::null_mut();
            // SAFETY: valid C strings and an out-pointer for the call.
            let rc = unsafe { ffi::sqlite3_open_v2(path.as_ptr(), &mut db, flags, vfs) };
            assert_eq!(rc, ffi::SQLITE_OK);
            let db = Db(db);
            db.run("pragma journal_mode = wal; pragma synchronous = full");
            db
        }

        /// Runs `sql`; returns the last row it produced, its columns joined by `|`.
        fn run(&self, sql: &str) -> String {
            let sql = CString::new(sql).unwrap();
            let mut tail = sql.as_ptr();
            let mut last = String::new();
            // SAFETY: each statement is prepared from the text left, stepped to its end and
            // finalized; column text is copied before the next step.
            unsafe {
                while *tail != 0 {
                    let mut stmt = ptr::null_mut();
                    let rc = ffi::sqlite3_prepare_v2(self.0, tail, -1, &mut stmt, &mut tail);
                    assert_eq!(rc, ffi::SQLITE_OK, "{}", self.error());
                    if stmt.is_null() {
                        continue;
                    }
                    loop {
                        match ffi::sqlite3_step(stmt) {
                            ffi::SQLITE_ROW => {
                                let columns = ffi::sqlite3_column_count(stmt);
                                let text = (0..columns).map(|i| {
                                    let text = ffi::sqlite3_column_text(stmt, i);
                                    if text.is_null() {
                                        String::new()
                                    } else {
                                        CStr::from_ptr(text.cast()).to_string_lossy().into_owned()
                                    }
                                });
                                last = text.collect::<Vec<_>>().join("|");
                            }
                            ffi::SQLITE_DONE => break,
                            rc => panic!("step failed ({rc}): {}", self.error()),
                        }
                    }
                    ffi::sqlite3_finalize(stmt);
                }
            }
            last
        }

        fn error(&self) -> String {
            // SAFETY: SQLite's message for the connection, copied at once.
            let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.0)) };
            message.to_string_lossy().into_owned()
        }
    }

    impl Drop for Db {
        fn drop(&mut self) {
            // SAFETY: every statement was finalized.
            unsafe { ffi::sqlite3_close(self.0) };
        }
    }

    /// Whether the connection's WAL file is opened through the VFS.
    fn wal_is_ours(db: *mut ffi::sqlite3) -> bool {
        let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
        let out: *mut *mut ffi::sqlite3_file = &mut file;
        // SAFETY: JOURNAL_POINTER writes the handle of the journal, in WAL mode the WAL's.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                db,
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_JOURNAL_POINTER,
                out.cast::<c_void>(),
            )
        };
        assert_eq!(rc, ffi::SQLITE_OK);
        // SAFETY: a handle SQLite keeps open while the connection is.
        !file.is_null() && ptr::eq(unsafe { (*file).pMethods }, &METHODS)
    }

    /// Write system calls this thread has made so far (Linux's per-thread I/O accounting;
    /// `None` where there is none).
    fn writes_so_far() -> Option<u64> {
        let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
        let line = io.lines().find(|l| l.starts_with("syscw:"))?;
        line["syscw:".len()..].trim().parse().ok()
    }

    /// Rows `1..=n` of 3,000 characters each (about a page each), `i * factor` zero-padded.
    fn rows(n: u32, factor: u32) -> String {
        format!(
            "with recursive i(v) as (select 1 union all select v + 1 from i where v < {n}) \
             select v, printf('%0*d', 3000, v * {factor}) from i"
        )
    }

    /// A commit of ~200 pages reaches the kernel as a few writes of up to 128 KiB each, not
    /// two per page (a `unix` connection makes ~400).
    #[test]
    fn a_commit_is_a_few_large_writes() {
        let name = super::register().unwrap();
        let dir = temp_dir("wal-writes");
        let db = Db::open(&dir.join("t.db"), Some(name));
        db.run("create table t (id integer primary key, x text)");
        assert!(wal_is_ours(db.0), "the WAL is not opened through the VFS");
        let before = writes_so_far();
        db.run(&format!("begin; insert into t {}; commit", rows(200, 1)));
        let writes = writes_so_far()
            .zip(before)
            .map(|(after, before)| after - before);
        // Committed means written: the file holds the WAL's header and every frame.
        let on_disk = std::fs::metadata(dir.join("t.db-wal")).unwrap().len();
        let checkpoint = db.run("pragma wal_checkpoint(passive)");
        let frames: u64 = checkpoint.split('|').nth(1).unwrap().parse().unwrap();
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(frames >= 200, "{frames} frames in the WAL");
        assert_eq!(
            on_disk,
            32 + frames * (24 + 4096),
            "bytes in the WAL after the commit"
        );
        match writes {
            Some(writes) => assert!(
                writes <= 12,
                "{writes} write calls for a commit of {frames} frames"
            ),
            None => eprintln!("no /proc/thread-self/io here: write calls not counted"),
        }
    }

    /// A transaction larger than the page cache spills pages into the WAL before its commit,
    /// rereads them, and overwrites frames it wrote (then rewrites their checksums): every such
    /// step must see the bytes written so far. Another connection, through SQLite's own VFS,
    /// then reads exactly what was committed, and so does the writer after reopening.
    #[test]
    fn spilled_frames_read_back_as_written() {
        let name = super::register().unwrap();
        let dir = temp_dir("wal-spill");
        let path = dir.join("t.db");
        let db = Db::open(&path, Some(name));
        db.run("pragma cache_size = 10; create table t (id integer primary key, x text)");
        // Inserting 1,500 pages and updating each twice in one transaction, with a cache of
        // 10 pages: hundreds of spills, rereads and rewritten frames.
        db.run(&format!(
            "begin; insert into t {}; \
             update t set x = printf('%0*d', 3000, id * 7); \
             update t set x = printf('%0*d', 3000, id * 11); commit",
            rows(1500, 3)
        ));
        let wrong = "select count(*) from t where x <> printf('%0*d', 3000, id * 11)";
        let expected = "1500|0";
        let check = format!("select count(*), ({wrong}) from t");
        let reader = Db::open(&path, None);
        assert!(!wal_is_ours(reader.0));
        assert_eq!(reader.run(&check), expected);
        assert_eq!(reader.run("pragma integrity_check"), "ok");
        assert_eq!(db.run(&check), expected);
        drop((db, reader));
        let db = Db::open(&path, Some(name));
        assert_eq!(db.run(&check), expected);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The store's writer writes its WAL through the VFS; readers through SQLite's own.
    #[tokio::test]
    async fn only_the_stores_writer_uses_the_vfs() {
        let dir = temp_dir("wal-store");
        let store = SqliteStore::open(&dir.join("t.db"), 1).await.unwrap();
        store.migrate().await.unwrap();
        for (pool, writer) in [(&store.writer, true), (&store.reads, false)] {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("select count(*) from inbox")
                .execute(&mut *conn)
                .await
                .unwrap();
            let mut handle = conn.lock_handle().await.unwrap();
            assert_eq!(wal_is_ours(handle.as_raw_handle().as_ptr()), writer);
        }
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
