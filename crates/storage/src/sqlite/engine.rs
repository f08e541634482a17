//! How the SQLite store reaches its file: one writer thread that commits concurrent writes
//! together, and reads run on the caller's thread.
//!
//! SQLite takes one writer at a time. A pool of connections that each begin their own
//! write transaction only fights over that lock (the losers sleep in the busy handler),
//! and a driver that runs every statement on a thread of its own pays two thread switches
//! per statement. Here instead:
//!
//! - **Writes** are jobs: closures over a `rusqlite::Connection` sent to the one writer
//!   thread. It takes every job waiting, runs them in one `BEGIN IMMEDIATE … COMMIT`
//!   (group commit), each inside a savepoint so a job that fails rolls back alone, and only
//!   after the commit tells each caller its outcome. A job's statements run back to back on
//!   that thread: one thread switch per job at most, none per statement, and a busy writer
//!   drains its queue without sleeping.
//! - **Reads** run synchronously on the caller's thread, on a small set of read-only WAL
//!   connections: a read is a few microseconds of SQLite work, cheaper than any hop to
//!   another thread, and WAL lets it proceed beside the writer on the last committed state.
//!   (An in-memory database has no WAL: there reads are jobs of the writer too.)
//! - **Checkpoints** (copying committed pages from the WAL into the database file, with
//!   an fsync of each) run on a thread of their own, on their own connection, as
//!   `PASSIVE` checkpoints every [`CHECKPOINT_EVERY`], which never wait for the writer nor
//!   make it wait. Left to SQLite, the commit that crosses the WAL's size threshold
//!   checkpoints on the writer thread, and every write queued behind it waits for those
//!   page copies and fsyncs. The writer still checkpoints itself past
//!   [`WRITER_CHECKPOINT_PAGES`], should the checkpoint thread fall that far behind.
//! - **Rewinding the WAL.** A `PASSIVE` checkpoint copies pages but never rewinds the WAL:
//!   the next write starts the WAL from its beginning again only when no reader still
//!   reads it, and under steady reads some reader always does. Left alone, the WAL grew
//!   until the writer's backstop, and from there every commit checkpointed on the writer
//!   with two fsyncs (start p99 18 ms against 11 ms without). So once the WAL holds
//!   [`RESTART_PAGES`], the checkpoint thread asks the writer, between two batches, for a
//!   `RESTART` checkpoint: it copies the last pages, waits briefly ([`RESTART_WAIT`]) for
//!   readers of older snapshots, and the next commit rewinds the WAL. One short pause per
//!   [`RESTART_PAGES`] written instead of one per commit.
//!
//! Statements are written with `$n` placeholders (see `crate::sql`); [`bind`] binds each
//! to the `n`th argument, wherever it appears, as SQLite numbers named parameters in order
//! of first appearance.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use domain::ports::StoreError;
use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, Row, Statement};

/// How long a write waits in the queue before it is refused as unavailable: a writer this
/// far behind means something is wrong, and the caller fails closed rather than queueing
/// without bound.
const QUEUE_DEADLINE: Duration = Duration::from_secs(5);

/// How long a statement waits for another process's lock on the file (another gateway
/// process, `verify-gateway reencrypt`, a migration) before giving up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most jobs one commit takes: enough to drain a busy queue, few enough that the first
/// caller of a batch does not wait long for the last job.
const MAX_BATCH: usize = 256;

/// How often the checkpoint thread copies the WAL's committed pages into the database
/// file. The WAL's size does not depend on it (only a rewind shrinks it, [`RESTART_PAGES`]);
/// what does is the work: each run copies the latest frame of every page written since the
/// last and syncs the WAL and the file, so a hot page (the country's limit, the newest
/// verifications) is copied once per run however often it was written, and a run costs two
/// fsyncs. Under full load, every 50 ms this thread took 13% as much CPU as the writer, every
/// 500 ms 7%; a run then copies a few MiB, so the rewind's final copy stays short.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The WAL size, in pages, past which a commit on the writer checkpoints by itself (SQLite's
/// `wal_autocheckpoint`; its default is 1,000): a backstop, 256 MiB of 4 KiB pages, twice
/// the size at which the writer rewinds the WAL ([`RESTART_PAGES`]).
const WRITER_CHECKPOINT_PAGES: i64 = 65_536;

/// The WAL size, in pages, at which the writer is asked to rewind it (128 MiB of 4 KiB
/// pages, a few seconds of writes under full load): rare enough that its pause (the last
/// pages' copy and two fsyncs) does not show in latencies.
const RESTART_PAGES: i64 = 32_768;

/// How long a `RESTART` checkpoint on the writer waits for readers of older snapshots
/// before it gives up until the next request (reads take microseconds; a long one must
/// not hold the writer).
const RESTART_WAIT: Duration = Duration::from_millis(20);

/// Read connections kept open for reuse; more are opened when more threads read at once.
const IDLE_READERS: usize = 8;

/// Prepared statements each connection keeps.
const STATEMENT_CACHE: usize = 64;

/// What a job hands back after it ran: told whether the batch committed, it answers its
/// caller.
type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// What a job does when its turn comes: given the connection to run on, or the reason it
/// will not run (then it writes nothing and answers with that error).
type Run = Box<dyn FnOnce(Result<&Connection, StoreError>) -> Deliver + Send>;

/// A write waiting for the writer thread.
struct Job {
    queued_at: Instant,
    run: Run,
}

/// Where the database is.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// A file; readers open it too.
    File(String),
    /// A shared-cache in-memory database, by its URI: it lives as long as the writer's
    /// connection, and only the writer uses it.
    Memory(String),
}

/// Counts of the work the store did, for metrics and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Read transactions (each read call, one or more statements).
    pub reads: AtomicU64,
    /// Write jobs that ran (each one atomic: a transaction of its own to its caller).
    pub writes: AtomicU64,
    /// Commits of the writer: one per batch of write jobs.
    pub commits: AtomicU64,
    /// `RESTART` checkpoints of the writer that let the next commit rewind the WAL.
    pub rewinds: AtomicU64,
}

/// The writer thread and the read connections of one SQLite database.
#[derive(Debug)]
pub(crate) struct Engine {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    /// Dropping the sender stops the checkpoint thread (file databases only).
    checkpoints: Mutex<Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    closed: std::sync::atomic::AtomicBool,
    location: Location,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("queued_at", &self.queued_at)
            .finish()
    }
}

/// Maps a driver error: a value that does not fit the type the code expects means a row
/// that does not fit the schema, which no retry fixes; anything else is the database
/// failing to answer.
pub(crate) fn store_error(error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::InvalidColumnIndex(_)
        | rusqlite::Error::InvalidColumnName(_)
        | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn open(location: &Location, read_only: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    flags |= if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    };
    let conn = match location {
        Location::File(path) => Connection::open_with_flags(path, flags)?,
        Location::Memory(uri) => Connection::open_with_flags(
            uri,
            flags | OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE,
        )?,
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", true)?;
    // Statement and savepoint journals (every write job runs in a savepoint) stay in
    // memory: on disk they spill past 64 KiB into a temporary file, and each page a job
    // changes would cost a write system call there before its commit writes it again.
    conn.pragma_update(None, "temp_store", "memory")?;
    if let Location::File(_) = location {
        if read_only {
            conn.pragma_update(None, "query_only", true)?;
        } else {
            // WAL lets readers run beside the writer. With WAL, `NORMAL` sync never
            // corrupts the database and survives a process crash; only an OS crash or power
            // cut can lose the last commits, which the embedded mode accepts in exchange for
            // not paying an fsync on every commit (production runs on PostgreSQL).
            conn.pragma_update(None, "journal_mode", "wal")?;
            conn.pragma_update(None, "synchronous", "normal")?;
        }
    }
    Ok(conn)
}

impl Engine {
    /// Opens the writer's connection (creating the file or the in-memory database) and
    /// starts its thread.
    pub(crate) fn start(location: Location) -> Result<Engine, String> {
        Engine::start_rewinding_at(location, RESTART_PAGES)
    }

    /// [`Engine::start`], asking the writer to rewind the WAL at `restart_pages` pages.
    fn start_rewinding_at(location: Location, restart_pages: i64) -> Result<Engine, String> {
        let conn = open(&location, false).map_err(|e| e.to_string())?;
        let restart = Arc::new(AtomicBool::new(false));
        let checkpoints = match &location {
            Location::File(_) => {
                conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
                    .map_err(|e| e.to_string())?;
                let own = open(&location, false).map_err(|e| e.to_string())?;
                let (stop, stopped) = mpsc::channel::<()>();
                let wanted = Arc::clone(&restart);
                let handle = thread::Builder::new()
                    .name("sqlite-checkpoint".into())
                    .spawn(move || checkpoint_loop(&own, &stopped, &wanted, restart_pages))
                    .map_err(|e| format!("starting the checkpoint thread: {e}"))?;
                Some((stop, handle))
            }
            Location::Memory(_) => None,
        };
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let thread_counters = Arc::clone(&counters);
        let writer = thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(&conn, &rx, &thread_counters, &restart))
            .map_err(|e| format!("starting the writer thread: {e}"))?;
        Ok(Engine {
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            checkpoints: Mutex::new(checkpoints),
            readers: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            location,
            counters,
        })
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Runs `f` as one atomic write: on the writer thread, committed together with the
    /// writes queued beside it. `f`'s changes are rolled back when it returns an error; its
    /// `Ok` reaches the caller only once the commit succeeded.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let run = move |conn: Result<&Connection, StoreError>| -> Deliver {
            let outcome = conn.and_then(|conn| in_savepoint(conn, f));
            Box::new(move |committed: Result<(), StoreError>| {
                let answer = match outcome {
                    Ok(value) => committed.map(|()| value),
                    Err(e) => Err(e),
                };
                // The caller may have gone (its request was cancelled): nothing to tell.
                let _ = tx.send(answer);
            })
        };
        let job = Job {
            queued_at: Instant::now(),
            run: Box::new(run),
        };
        let sent = match &*self.jobs.lock().map_err(|_| poisoned())? {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Unavailable(
                "the SQLite store is closed".to_owned(),
            ));
        }
        rx.await.map_err(|_| {
            StoreError::Unavailable("the SQLite writer stopped before answering".to_owned())
        })?
    }

    /// Runs `f` on a read connection, on this thread: one read transaction that sees the
    /// last commit. (On an in-memory database, a job of the writer.)
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if let Location::Memory(_) = self.location {
            return self.write(f).await;
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let conn = self.reader()?;
        // A read of several statements sees one snapshot; one statement is its own.
        let result = f(&conn);
        if !conn.is_autocommit() {
            // `f` left a transaction open after an error: end it before the connection
            // is reused.
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.give_back(conn);
        result
    }

    fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.readers.lock().map_err(|_| poisoned())?.pop() {
            return Ok(conn);
        }
        open(&self.location, true).map_err(store_error)
    }

    fn give_back(&self, conn: Connection) {
        // After `close` a read still running keeps its connection only until it ends.
        if let Ok(mut readers) = self.readers.lock()
            && readers.len() < IDLE_READERS
            && !self.closed.load(Ordering::Relaxed)
        {
            readers.push(conn);
        }
    }

    /// Closes the read connections, stops taking writes and lets the writer finish what
    /// is queued. The writer's connection closes last: the last connection to a database
    /// checkpoints the WAL into the file, which a read-only one cannot do.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Ok(mut readers) = self.readers.lock() {
            readers.clear();
        }
        // The checkpoint thread's connection closes before the writer's, which must be
        // the last one.
        if let Ok(mut checkpoints) = self.checkpoints.lock()
            && let Some((stop, handle)) = checkpoints.take()
        {
            drop(stop);
            let _ = handle.join();
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Ok(mut writer) = self.writer.lock()
            && let Some(handle) = writer.take()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("a lock of the SQLite store was poisoned".to_owned())
}

/// Runs a transaction-control statement (`BEGIN`, `COMMIT`, `SAVEPOINT x`, …) from the
/// connection's statement cache: they run several times per batch, and preparing each
/// again would cost more than running it.
pub(crate) fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs `f` inside a savepoint: kept when it succeeds, rolled back when it fails or
/// panics (a panic becomes an error, so one bad job cannot take the writer down).
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    control(conn, "SAVEPOINT job").map_err(store_error)?;
    let outcome = catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| {
        Err(StoreError::Unavailable(
            "a write of the SQLite store panicked".to_owned(),
        ))
    });
    let end = match &outcome {
        Ok(_) => control(conn, "RELEASE job"),
        Err(_) => control(conn, "ROLLBACK TO job").and_then(|()| control(conn, "RELEASE job")),
    };
    match end {
        Ok(()) => outcome,
        Err(e) => Err(store_error(e)),
    }
}

/// The writer thread: waits for a job, takes every job queued behind it, runs them all in
/// one transaction and then answers each. Ends when the store is closed and the queue is
/// empty.
fn write_loop(
    conn: &Connection,
    jobs: &mpsc::Receiver<Job>,
    counters: &Counters,
    restart: &AtomicBool,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(conn, batch, counters);
        if restart.swap(false, Ordering::Relaxed) && restart_wal(conn) {
            counters.rewinds.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A `RESTART` checkpoint on the writer's own connection (so it never waits for the
/// writer): copies what is left of the WAL and waits up to [`RESTART_WAIT`] for readers of
/// older snapshots, after which the next commit writes the WAL from its start. Busy is
/// not an error here: the checkpoint thread asks again while the WAL stays long. Whether
/// the WAL will rewind.
fn restart_wal(conn: &Connection) -> bool {
    let restarted = conn.busy_timeout(RESTART_WAIT).and_then(|()| {
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
            row.get::<_, i64>(0)
        })
    });
    if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
        tracing::warn!(error = %e, "could not restore the writer's busy timeout");
    }
    match restarted {
        Ok(0) => true,
        Ok(_) => {
            tracing::debug!("readers kept the WAL from rewinding; trying again later");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "rewinding the WAL failed; trying again later");
            false
        }
    }
}

/// Runs a `PASSIVE` checkpoint every [`CHECKPOINT_EVERY`] until `stop`'s sender is
/// dropped, and asks the writer to rewind the WAL (`restart`) once it holds
/// `restart_pages` ([`RESTART_PAGES`]). A failed checkpoint is tried again next time (the
/// writer's backstop covers a thread that keeps failing).
fn checkpoint_loop(
    conn: &Connection,
    stop: &mpsc::Receiver<()>,
    restart: &AtomicBool,
    restart_pages: i64,
) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        // Answers (busy, pages in the WAL, pages copied into the file).
        let wal_pages = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(1)
        });
        match wal_pages {
            Ok(pages) if pages >= restart_pages => restart.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "WAL checkpoint failed; trying again"),
        }
    }
}

fn run_batch(conn: &Connection, batch: Vec<Job>, counters: &Counters) {
    let now = Instant::now();
    let (due, late): (Vec<Job>, Vec<Job>) = batch
        .into_iter()
        .partition(|job| now.duration_since(job.queued_at) < QUEUE_DEADLINE);
    for job in late {
        // Never run: the caller learns the store is overloaded, and nothing was written.
        let overloaded = StoreError::Unavailable(format!(
            "the SQLite writer is more than {} s behind",
            QUEUE_DEADLINE.as_secs()
        ));
        (job.run)(Err(overloaded.clone()))(Err(overloaded));
    }
    if due.is_empty() {
        return;
    }
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        let error = store_error(e);
        for job in due {
            (job.run)(Err(error.clone()))(Err(error.clone()));
        }
        return;
    }
    let delivers: Vec<Deliver> = due.into_iter().map(|job| (job.run)(Ok(conn))).collect();
    let committed = control(conn, "COMMIT").map_err(store_error);
    if committed.is_err() {
        let _ = control(conn, "ROLLBACK");
    } else {
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .writes
            .fetch_add(delivers.len() as u64, Ordering::Relaxed);
    }
    for deliver in delivers {
        deliver(committed.clone());
    }
}

/// Binds `args` to `stmt`: each parameter `$n` to `args[n - 1]`.
fn bind(stmt: &mut Statement<'_>, args: &[&dyn ToSql]) -> rusqlite::Result<()> {
    for index in 1..=stmt.parameter_count() {
        let n = stmt
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(index);
        let arg = n
            .checked_sub(1)
            .and_then(|i| args.get(i))
            .ok_or(rusqlite::Error::InvalidParameterCount(n, args.len()))?;
        stmt.raw_bind_parameter(index, arg)?;
    }
    Ok(())
}

/// Runs `sql` with `args` and maps every row it returns.
pub(crate) fn query<T>(
    conn: &Connection,
    sql: &str,
    args: &[&dyn ToSql],
    mut map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut run = || -> rusqlite::Result<Vec<T>> {
        let mut stmt = conn.prepare_cached(sql)?;
        bind(&mut stmt, args)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(map(row)?);
        }
        Ok(out)
    };
    run().map_err(store_error)
}

/// Runs `sql` with `args` and maps the first row it returns, if any.
pub(crate) fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    args: &[&dyn ToSql],
    map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    let run = || -> rusqlite::Result<Option<T>> {
        let mut stmt = conn.prepare_cached(sql)?;
        bind(&mut stmt, args)?;
        let mut rows = stmt.raw_query();
        match rows.next()? {
            Some(row) => map(row).map(Some),
            None => Ok(None),
        }
    };
    run().map_err(store_error)
}

/// Runs `sql` with `args` for its effect (it must return no rows); how many rows it
/// changed.
pub(crate) fn execute(
    conn: &Connection,
    sql: &str,
    args: &[&dyn ToSql],
) -> Result<u64, StoreError> {
    let run = || -> rusqlite::Result<usize> {
        let mut stmt = conn.prepare_cached(sql)?;
        bind(&mut stmt, args)?;
        stmt.raw_execute()
    };
    run().map(|n| n as u64).map_err(store_error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::{CHECKPOINT_EVERY, Engine, Location, execute, query_opt};
    use crate::tests::harness::TempFile;

    /// Pages in the WAL since it was last rewound.
    fn wal_pages(path: &std::path::Path) -> i64 {
        let conn = rusqlite::Connection::open(path).expect("opens");
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .expect("checkpoint")
    }

    /// Under reads that never stop, SQLite alone never rewinds the WAL (some reader always
    /// reads it); the writer does, once the checkpoint thread finds it long.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_rewinds_the_wal_under_steady_reads() -> anyhow::Result<()> {
        let db = TempFile::new("rewind");
        let engine = Arc::new(
            Engine::start_rewinding_at(Location::File(db.path.display().to_string()), 64)
                .map_err(anyhow::Error::msg)?,
        );
        engine
            .write(|c| execute(c, "CREATE TABLE t (n INTEGER PRIMARY KEY, b BLOB)", &[]))
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        // A lookup of a few pages, as the store's reads are: a scan of
                        // the whole growing table held a snapshot for longer than the
                        // rewind waits for, over and over, on a loaded machine.
                        engine
                            .read(|c| {
                                query_opt(c, "SELECT max(n) FROM t", &[], |r| {
                                    r.get::<_, Option<i64>>(0)
                                })
                            })
                            .await
                            .expect("reads");
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        // A page per row and more: thousands of pages, far more than the 64 that ask for a
        // rewind, and writes go on until the writer has rewound (a checkpoint run or two
        // after the WAL grew long).
        let deadline = Instant::now() + CHECKPOINT_EVERY * 20;
        for n in 0i64.. {
            let blob = vec![7u8; 4000];
            engine
                .write(move |c| execute(c, "INSERT INTO t (n, b) VALUES ($1, $2)", &[&n, &blob]))
                .await?;
            if n >= 2000 && engine.counters().rewinds.load(Ordering::Relaxed) > 0 {
                break;
            }
            // Never rewound, the WAL holds every page written (a row's page, the table's and
            // the schema's).
            anyhow::ensure!(
                Instant::now() < deadline,
                "never rewound: {} pages in the WAL",
                wal_pages(&db.path)
            );
            if n % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.await?;
        }
        engine.close();
        Ok(())
    }
}
