//! The writer connection's lookaside pool: SQLite's per-connection slots for small
//! allocations, sized up for the writer only, through one `unsafe` call (its test reads the
//! pool's counter the same way).
//!
//! Parsing and running a batch's multi-row statements allocates far more small objects than
//! SQLite's default pool holds (40 slots of 1,200 bytes); the rest go to `malloc`. 1,000 slots
//! made `bench ingest` on SQLite 2–13 % faster (median +7 %, six interleaved pairs; 2,000 no
//! faster). The compile-time default would give every connection the pool, and each pool is
//! written whole when its connection opens (idle RSS over 20 MiB); `sqlite3_db_config` sizes
//! one connection's, and no pragma or sqlx option reaches it.
#![allow(unsafe_code)]

use sqlx::{Connection, Executor, SqliteConnection};

/// Slot size in bytes (SQLite's default) and number of slots: 1.2 MB.
const SLOT: i32 = 1200;
const SLOTS: i32 = 1000;

/// The writer's first steps on a new connection: the larger pool, then the settings every
/// connection has ([`super::PRAGMAS`]), whose first statements read the schema into the pool.
pub(super) async fn open_writer(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    enlarge(conn).await?;
    let settings: String = super::PRAGMAS
        .iter()
        .map(|(key, value)| format!("pragma {key} = {value}; "))
        .collect();
    conn.execute(sqlx::raw_sql(&settings)).await?;
    Ok(())
}

/// Gives `conn` the larger pool. SQLite refuses (`SQLITE_BUSY`) while any slot is in use, so
/// this runs before the connection has read the schema; the store does not open otherwise.
async fn enlarge(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    // sqlx keeps the statements it ran while connecting prepared; they hold slots.
    conn.clear_cached_statements().await?;
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is an open connection, which `handle` keeps locked for this call (sqlx's
    // worker thread does not use it meanwhile). A null buffer makes SQLite allocate the pool
    // itself and free it when the connection closes. The variadic arguments are the
    // (void *, int, int) that SQLITE_DBCONFIG_LOOKASIDE takes.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_db_config(
            db,
            libsqlite3_sys::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            SLOT,
            SLOTS,
        )
    };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(sqlx::Error::Protocol(format!(
            "SQLite refused the writer's lookaside pool (result code {rc})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::store::Store;
    use sqlx::{Row, SqliteConnection};

    /// Slots in use at most so far on `conn` (SQLITE_DBSTATUS_LOOKASIDE_USED's high-water mark).
    async fn slots_used_at_most(conn: &mut SqliteConnection) -> i32 {
        let mut handle = conn.lock_handle().await.unwrap();
        let db = handle.as_raw_handle().as_ptr();
        let (mut now, mut most) = (0, 0);
        // SAFETY: as in `enlarge`; the two out-pointers are valid for the call.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_db_status(
                db,
                libsqlite3_sys::SQLITE_DBSTATUS_LOOKASIDE_USED,
                &mut now,
                &mut most,
                0,
            )
        };
        assert_eq!(rc, libsqlite3_sys::SQLITE_OK);
        most
    }

    /// Fails unless `conn` has every setting of [`super::super::PRAGMAS`].
    async fn assert_settings(conn: &mut SqliteConnection) {
        for (pragma, expected) in [
            ("journal_mode", "wal"),
            ("synchronous", "2"),
            ("foreign_keys", "1"),
            ("temp_store", "2"),
            ("wal_autocheckpoint", super::super::WAL_AUTOCHECKPOINT),
            ("journal_size_limit", super::super::JOURNAL_SIZE_LIMIT),
            ("mmap_size", super::super::MMAP_SIZE),
        ] {
            let row = sqlx::query(&format!("pragma {pragma}"))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let value = row
                .try_get::<i64, _>(0)
                .map(|v| v.to_string())
                .or_else(|_| row.try_get::<String, _>(0))
                .unwrap();
            assert_eq!(value, expected, "pragma {pragma}");
        }
    }

    /// The store's writer holds more slots at once than SQLite's default pool has (123: 30 of
    /// 1,200 bytes and 93 of 128), and has every setting, as the readers do.
    #[tokio::test]
    async fn the_writer_has_the_larger_pool_and_every_setting() {
        let dir = std::env::temp_dir().join(format!("ps-lookaside-{}", rand::random::<u64>()));
        let store = SqliteStore::open(&dir.join("t.db"), 1).await.unwrap();
        let mut conn = store.writer.acquire().await.unwrap();
        // A statement the size of a batch's writes: its parse tree alone needs many slots.
        let values = vec!["(1, 'x', 2.5)"; 300].join(", ");
        sqlx::raw_sql(&format!("select count(*) from (values {values})"))
            .execute(&mut *conn)
            .await
            .unwrap();
        let most = slots_used_at_most(&mut conn).await;
        assert!(most > 123, "at most {most} slots in use: the default pool");
        assert_settings(&mut conn).await;
        drop(conn);
        assert_settings(&mut store.reads.acquire().await.unwrap()).await;
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
