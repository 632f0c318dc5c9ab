//! The job store: every job a server accepted, what became of it and when, in one SQLite file
//! (`vpd.db`, WAL mode) in the state directory. It outlives the server: `vpd jobs` lists it,
//! a restarted server's dashboard shows it.
//!
//! The schema is versioned (`PRAGMA user_version`) and migrated forward at start, in one
//! transaction per step. A file from a newer vpd, or one that is not a database, stops the
//! server with an error naming it; nothing here ever deletes or rewrites such a file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

use crate::media::SegmentRecord;
use crate::media::clips::ClipRecord;
use crate::metrics::{Charts, JobSummary};
pub use crate::protocol::job::{JobId, JobRecord, JobSpec, JobState, Transition};

/// The file in the state directory.
pub const DATABASE: &str = "vpd.db";

/// Each step takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: jobs and their transitions.
    "CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        peer TEXT NOT NULL,
        client TEXT NOT NULL,
        input_name TEXT NOT NULL,
        input_bytes INTEGER NOT NULL,
        input_sha256 TEXT,
        chain TEXT NOT NULL,
        output_options TEXT NOT NULL,
        container TEXT NOT NULL,
        output_bytes INTEGER,
        frames INTEGER,
        failed_frames INTEGER,
        retries INTEGER,
        summary TEXT,
        error TEXT
    );
    CREATE INDEX jobs_by_creation ON jobs (created_ms);
    CREATE TABLE transitions (
        job TEXT NOT NULL REFERENCES jobs (id),
        state TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX transitions_by_job ON transitions (job);",
    // 2: durable jobs: committed segments, resumes, reruns, removed results, the transport.
    "CREATE TABLE segments (
        job TEXT NOT NULL REFERENCES jobs (id),
        number INTEGER NOT NULL,
        first_frame INTEGER NOT NULL,
        frames INTEGER NOT NULL,
        last_pts INTEGER,
        bytes INTEGER NOT NULL,
        committed_ms INTEGER NOT NULL,
        PRIMARY KEY (job, number)
    );
    ALTER TABLE jobs ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN rerun_of TEXT;
    ALTER TABLE jobs ADD COLUMN removed_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN transport TEXT NOT NULL DEFAULT 'auto';",
    // 3: the job's spec whole, as JSON (chain, output options, container, transport, input, client
    // name), instead of a column of text each; the client's software apart from its name.
    "ALTER TABLE jobs ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE jobs ADD COLUMN software TEXT NOT NULL DEFAULT '';
    UPDATE jobs SET
        spec = json_object(
            'chain', chain, 'output', json(output_options), 'container', container, 'transport', transport,
            'input_name', input_name, 'input_bytes', input_bytes,
            'client', CASE WHEN instr(client, ' (') > 0 THEN substr(client, 1, instr(client, ' (') - 1) ELSE client END),
        software = CASE WHEN instr(client, ' (') > 0 THEN rtrim(substr(client, instr(client, ' (') + 2), ')') ELSE '' END;
    ALTER TABLE jobs DROP COLUMN chain;
    ALTER TABLE jobs DROP COLUMN output_options;
    ALTER TABLE jobs DROP COLUMN container;
    ALTER TABLE jobs DROP COLUMN transport;
    ALTER TABLE jobs DROP COLUMN input_name;
    ALTER TABLE jobs DROP COLUMN input_bytes;
    ALTER TABLE jobs DROP COLUMN client;",
    // 4: a segment's record says whether it is the job's last; segment files now carry their
    // stream's parameters and the other streams' packets, so those of an older vpd are
    // forgotten and their jobs start afresh (their files are overwritten).
    "ALTER TABLE segments ADD COLUMN last INTEGER NOT NULL DEFAULT 0;
    DELETE FROM segments;",
    // 5: what a job's charts showed (throughput samples, latency bars, frames per worker), as
    // JSON, so that history draws them again.
    "ALTER TABLE jobs ADD COLUMN charts TEXT;",
    // 6: the clips a live job recorded under `--record-on`, each once it is in place.
    "CREATE TABLE clips (
        job TEXT NOT NULL REFERENCES jobs (id),
        number INTEGER NOT NULL,
        path TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        seconds REAL NOT NULL,
        frames INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (job, number)
    );",
];

impl ToSql for JobId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.as_str().as_bytes())))
    }
}

impl FromSql for JobId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(|e: String| FromSqlError::Other(e.into()))
    }
}

/// The job store of one state directory.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens (creating it if need be) the store in `dir`, migrated to this binary's schema.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let probe = dir.join(format!(".vpd-write-test-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .with_context(|| format!("the state directory {} is not writable by this process", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let path = dir.join(DATABASE);
        let unusable = |e: rusqlite::Error| {
            anyhow::anyhow!("the job store {} cannot be used ({e}); it is left as it is", path.display())
        };
        let mut conn = Connection::open(&path).map_err(unusable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(unusable)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(unusable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("the job store {} cannot use WAL mode (got {mode})", path.display());
        }
        // FULL: a committed segment's record survives a power loss, not only a crash (a few
        // writes a second at most: segments, transitions).
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(unusable)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unusable)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            bail!(
                "the job store {} has schema version {version}, from a newer vpd; this one knows up to {known}",
                path.display()
            );
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(unusable)?;
            tx.execute_batch(step).map_err(unusable)?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(unusable)?;
            tx.commit().map_err(unusable)?;
        }
        Ok(Store { path, conn: Mutex::new(conn) })
    }

    /// Opens the store in `dir` to read it (a dashboard beside a server): never creates,
    /// migrates or writes it.
    pub fn open_read_only(dir: &Path) -> anyhow::Result<Store> {
        let path = dir.join(DATABASE);
        if !path.is_file() {
            bail!("no job store at {}", path.display());
        }
        let unusable = |e: rusqlite::Error| anyhow::anyhow!("the job store {} cannot be read ({e})", path.display());
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(unusable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(unusable)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unusable)?;
        let known = MIGRATIONS.len() as i64;
        if version != known {
            bail!(
                "the job store {} has schema version {version}; this vpd reads version {known} (start its server \
                 with this vpd to migrate it)",
                path.display()
            );
        }
        Ok(Store { path, conn: Mutex::new(conn) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records job `id` just accepted, as uploading: `spec` from `peer`, whose software is
    /// `software`.
    pub fn create(&self, id: &JobId, peer: &str, software: &str, spec: &JobSpec) -> anyhow::Result<()> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO jobs (id, state, created_ms, updated_ms, peer, software, spec)
             VALUES (?1, 'uploading', ?2, ?2, ?3, ?4, ?5)",
            params![id, now, peer, software, serde_json::to_string(spec)?],
        )?;
        tx.execute("INSERT INTO transitions (job, state, at_ms) VALUES (?1, 'uploading', ?2)", params![id, now])?;
        tx.commit()?;
        Ok(())
    }

    /// Moves a job to `state`; `error` for a failed one.
    pub fn transition(&self, id: &JobId, state: JobState, error: Option<&str>) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        record_transition(&tx, id, state, error)?;
        tx.commit()?;
        Ok(())
    }

    /// Records the whole upload's sha256.
    pub fn uploaded(&self, id: &JobId, sha256: &str) -> anyhow::Result<()> {
        self.conn().execute("UPDATE jobs SET input_sha256 = ?2 WHERE id = ?1", params![id, sha256])?;
        Ok(())
    }

    /// Records a finished job's summary and result size, and marks it done.
    pub fn finished(&self, id: &JobId, summary: &JobSummary, output_bytes: u64) -> anyhow::Result<()> {
        let mut conn = self.conn();
        // One transaction: a crash leaves the job either running or done with its summary.
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE jobs SET output_bytes = ?2, frames = ?3, failed_frames = ?4, retries = ?5, summary = ?6,
                             error = NULL
             WHERE id = ?1",
            params![
                id,
                output_bytes as i64,
                summary.frames as i64,
                summary.failed_frames as i64,
                summary.retries as i64,
                serde_json::to_string(summary)?
            ],
        )?;
        record_transition(&tx, id, JobState::Done, None)?;
        tx.commit()?;
        Ok(())
    }

    /// Jobs whose upload was under way when the server stopped: the upload is lost with its
    /// connection. They are marked failed; returns their ids.
    pub fn fail_uploading(&self, why: &str) -> anyhow::Result<Vec<JobId>> {
        let ids = self.uploading()?;
        for id in &ids {
            self.transition(id, JobState::Failed, Some(why))?;
        }
        Ok(ids)
    }

    /// Jobs whose upload is not whole yet.
    pub fn uploading(&self) -> anyhow::Result<Vec<JobId>> {
        self.ids_where("state = 'uploading'")
    }

    /// Forgets `id`'s error: an upload that was cut off, then resumed to its end.
    pub fn clear_error(&self, id: &JobId) -> anyhow::Result<()> {
        self.conn().execute("UPDATE jobs SET error = NULL WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Jobs uploaded and not ended (queued, running, paused), oldest first: what a restarted
    /// server resumes.
    pub fn unfinished(&self) -> anyhow::Result<Vec<JobId>> {
        self.ids_where("state IN ('queued', 'running', 'paused') ORDER BY created_ms, rowid")
    }

    fn ids_where(&self, condition: &str) -> anyhow::Result<Vec<JobId>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT id FROM jobs WHERE {condition}"))?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Counts a resume of `id` after a restart.
    pub fn resumed(&self, id: &JobId) -> anyhow::Result<()> {
        self.conn().execute("UPDATE jobs SET resumes = resumes + 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Records a committed segment of `id` (its file is on disk, fsynced).
    pub fn commit_segment(&self, id: &JobId, r: &SegmentRecord) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO segments (job, number, first_frame, frames, last_pts, bytes, committed_ms, last)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                r.number as i64,
                r.first_frame as i64,
                r.frames as i64,
                r.last_pts,
                r.bytes as i64,
                now_ms(),
                r.last
            ],
        )?;
        Ok(())
    }

    /// The committed segments of `id`, in order.
    pub fn segments(&self, id: &JobId) -> anyhow::Result<Vec<SegmentRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT number, first_frame, frames, last_pts, bytes, last FROM segments WHERE job = ?1 ORDER BY number",
        )?;
        let segments = stmt
            .query_map([id], |r| {
                Ok(SegmentRecord {
                    number: r.get::<_, i64>(0)? as u64,
                    first_frame: r.get::<_, i64>(1)? as u64,
                    frames: r.get::<_, i64>(2)? as u64,
                    last_pts: r.get(3)?,
                    bytes: r.get::<_, i64>(4)? as u64,
                    last: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(segments)
    }

    /// Records a clip `id` wrote.
    pub fn add_clip(&self, id: &JobId, c: &ClipRecord) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO clips (job, number, path, started_ms, seconds, frames, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                c.number as i64,
                c.path.to_string_lossy(),
                c.started_ms,
                c.seconds,
                c.frames as i64,
                c.bytes as i64
            ],
        )?;
        Ok(())
    }

    /// The clips `id` wrote, in order.
    pub fn clips(&self, id: &JobId) -> anyhow::Result<Vec<ClipRecord>> {
        clips_of(&self.conn(), id)
    }

    /// Forgets `id`'s segments (joined into its result, or their files gone).
    pub fn drop_segments(&self, id: &JobId) -> anyhow::Result<()> {
        self.conn().execute("DELETE FROM segments WHERE job = ?1", [id])?;
        Ok(())
    }

    /// Records a new job `id` that reruns `of`, with the same input, chain and options, as
    /// queued (its input is a copy of `of`'s); it is `client`'s, from `peer`, whose software is
    /// `software`.
    pub fn rerun(&self, of: &JobId, id: &JobId, peer: &str, (client, software): (&str, &str)) -> anyhow::Result<()> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO jobs (id, state, created_ms, updated_ms, peer, software, spec, input_sha256, rerun_of)
             SELECT ?2, 'queued', ?3, ?3, ?4, ?6, json_set(spec, '$.client', ?5), input_sha256, id
             FROM jobs WHERE id = ?1",
            params![of, id, now, peer, client, software],
        )?;
        tx.execute("INSERT INTO transitions (job, state, at_ms) VALUES (?1, 'queued', ?2)", params![id, now])?;
        tx.commit()?;
        Ok(())
    }

    /// Records that `id`'s files (upload, result, segments) were removed.
    pub fn removed(&self, id: &JobId) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("UPDATE jobs SET removed_ms = ?2 WHERE id = ?1", params![id, now_ms()])?;
        tx.execute("DELETE FROM segments WHERE job = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    /// Ended jobs whose files are still kept, oldest end first: `(id, ended_ms)`.
    pub fn kept(&self) -> anyhow::Result<Vec<(JobId, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, updated_ms FROM jobs
             WHERE state IN ('done', 'failed', 'cancelled') AND removed_ms IS NULL ORDER BY updated_ms, rowid",
        )?;
        let kept = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(kept)
    }

    /// Keeps what job `id`'s charts showed.
    pub fn set_charts(&self, id: &JobId, charts: &Charts) -> anyhow::Result<()> {
        let json = serde_json::to_string(charts)?;
        self.conn().execute("UPDATE jobs SET charts = ?2 WHERE id = ?1", params![id, json])?;
        Ok(())
    }

    /// What job `id`'s charts showed when it ended, if it was kept.
    pub fn charts(&self, id: &JobId) -> anyhow::Result<Option<Charts>> {
        let json: Option<Option<String>> =
            self.conn().query_row("SELECT charts FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        Ok(json.flatten().and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// A page of history: the newest `limit` jobs created before job `before` (from the
    /// newest when `None`), newest first. A `before` the store does not have gives nothing.
    pub fn page(&self, before: Option<&JobId>, limit: usize) -> anyhow::Result<Vec<JobRecord>> {
        let ids: Vec<JobId> = {
            let conn = self.conn();
            match before {
                None => {
                    let mut stmt = conn.prepare("SELECT id FROM jobs ORDER BY created_ms DESC, rowid DESC LIMIT ?1")?;
                    stmt.query_map([limit as i64], |r| r.get(0))?.collect::<Result<_, _>>()?
                }
                Some(before) => {
                    // The cursor is a job: the page goes on below it in the same order.
                    let mut stmt = conn.prepare(
                        "SELECT j.id FROM jobs j, jobs c WHERE c.id = ?1
                           AND (j.created_ms < c.created_ms OR (j.created_ms = c.created_ms AND j.rowid < c.rowid))
                         ORDER BY j.created_ms DESC, j.rowid DESC LIMIT ?2",
                    )?;
                    stmt.query_map(params![before, limit as i64], |r| r.get(0))?.collect::<Result<_, _>>()?
                }
            }
        };
        ids.iter().filter_map(|id| self.get(id).transpose()).collect()
    }

    /// The newest `limit` jobs, newest first.
    pub fn list(&self, limit: usize) -> anyhow::Result<Vec<JobRecord>> {
        let ids: Vec<JobId> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT id FROM jobs ORDER BY created_ms DESC, rowid DESC LIMIT ?1")?;
            stmt.query_map([limit as i64], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        ids.iter().filter_map(|id| self.get(id).transpose()).collect()
    }

    /// One job, if the store has it.
    pub fn get(&self, id: &JobId) -> anyhow::Result<Option<JobRecord>> {
        let conn = self.conn();
        let record = conn
            .query_row(
                "SELECT id, state, created_ms, updated_ms, peer, software, spec, input_sha256, output_bytes, frames,
                        failed_frames, retries, summary, error, resumes, rerun_of, removed_ms,
                        (SELECT coalesce(sum(frames), 0) FROM segments WHERE job = jobs.id)
                 FROM jobs WHERE id = ?1",
                [id],
                |r| {
                    let spec: String = r.get(6)?;
                    let spec = serde_json::from_str(&spec).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
                    })?;
                    let summary: Option<String> = r.get(12)?;
                    Ok(JobRecord {
                        id: r.get(0)?,
                        state: JobState::parse(&r.get::<_, String>(1)?),
                        created_ms: r.get(2)?,
                        updated_ms: r.get(3)?,
                        transitions: Vec::new(),
                        peer: r.get(4)?,
                        software: r.get(5)?,
                        spec,
                        input_sha256: r.get(7)?,
                        output_bytes: r.get::<_, Option<i64>>(8)?.map(|n| n as u64),
                        frames: r.get::<_, Option<i64>>(9)?.map(|n| n as u64),
                        failed_frames: r.get::<_, Option<i64>>(10)?.map(|n| n as u64),
                        retries: r.get::<_, Option<i64>>(11)?.map(|n| n as u64),
                        summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
                        error: r.get(13)?,
                        resumes: r.get::<_, i64>(14)? as u32,
                        rerun_of: r.get(15)?,
                        removed_ms: r.get(16)?,
                        committed_frames: r.get::<_, i64>(17)? as u64,
                        clips: Vec::new(),
                    })
                },
            )
            .optional()
            .with_context(|| format!("job {id}'s record"))?;
        let Some(mut record) = record else { return Ok(None) };
        let mut stmt = conn.prepare("SELECT state, at_ms FROM transitions WHERE job = ?1 ORDER BY rowid")?;
        record.transitions = stmt
            .query_map([id], |r| Ok(Transition { state: JobState::parse(&r.get::<_, String>(0)?), at_ms: r.get(1)? }))?
            .collect::<Result<_, _>>()?;
        record.clips = clips_of(&conn, id)?;
        Ok(Some(record))
    }
}

/// The clips `id` wrote, in order.
fn clips_of(conn: &Connection, id: &JobId) -> anyhow::Result<Vec<ClipRecord>> {
    let mut stmt = conn
        .prepare("SELECT number, path, started_ms, seconds, frames, bytes FROM clips WHERE job = ?1 ORDER BY number")?;
    let clips = stmt
        .query_map([id], |r| {
            Ok(ClipRecord {
                number: r.get::<_, i64>(0)? as u64,
                path: PathBuf::from(r.get::<_, String>(1)?),
                started_ms: r.get(2)?,
                seconds: r.get(3)?,
                frames: r.get::<_, i64>(4)? as u64,
                bytes: r.get::<_, i64>(5)? as u64,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(clips)
}

/// Moves a job to `state`, within `tx`.
fn record_transition(
    tx: &rusqlite::Transaction<'_>,
    id: &JobId,
    state: JobState,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let now = now_ms();
    tx.execute(
        "UPDATE jobs SET state = ?2, updated_ms = ?3, error = coalesce(?4, error) WHERE id = ?1",
        params![id, state.as_str(), now, error],
    )?;
    tx.execute("INSERT INTO transitions (job, state, at_ms) VALUES (?1, ?2, ?3)", params![id, state.as_str(), now])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(id: &str) -> JobId {
        id.parse().unwrap()
    }

    fn spec() -> JobSpec {
        JobSpec {
            chain: "edges:low=50:high=150".parse().unwrap(),
            output: crate::media::OutputOptions::default(),
            container: "mp4".into(),
            transport: crate::protocol::wire::TransportEncoding::Auto,
            split: crate::protocol::segment::Split::Auto,
            input_name: "in.mp4".into(),
            input_bytes: 1234,
            client: "alice".into(),
            live: None,
        }
    }

    fn create(store: &Store, job: &str) {
        store.create(&id(job), "127.0.0.1:5000", "vpd/0.1.0", &spec()).unwrap();
    }

    #[test]
    fn clips_are_recorded_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        create(&store, "j1");
        let clip = |n: u64| ClipRecord {
            number: n,
            path: format!("/clips/cam-{n}.mp4").into(),
            started_ms: 1_000 * n as i64,
            seconds: 9.5,
            frames: 238,
            bytes: 4096,
        };
        store.add_clip(&id("j1"), &clip(1)).unwrap();
        store.add_clip(&id("j1"), &clip(0)).unwrap();
        assert!(store.add_clip(&id("j1"), &clip(0)).is_err(), "a clip's number is recorded once");
        drop(store);
        let store = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(store.clips(&id("j1")).unwrap(), vec![clip(0), clip(1)]);
        assert!(store.clips(&id("j2")).unwrap().is_empty());
        // The job's record carries them, for `vpd jobs show`.
        assert_eq!(store.get(&id("j1")).unwrap().unwrap().clips, vec![clip(0), clip(1)]);
    }

    #[test]
    fn jobs_and_their_transitions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        create(&store, "j1");
        store.uploaded(&id("j1"), "abc").unwrap();
        store.transition(&id("j1"), JobState::Running, None).unwrap();
        create(&store, "j2");
        store.transition(&id("j2"), JobState::Failed, Some("in.mp4: truncated")).unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let j1 = store.get(&id("j1")).unwrap().unwrap();
        assert_eq!((j1.state, j1.input_sha256.as_deref()), (JobState::Running, Some("abc")));
        assert_eq!((&j1.spec, j1.software.as_str()), (&spec(), "vpd/0.1.0"), "the spec read back whole");
        let states: Vec<JobState> = j1.transitions.iter().map(|t| t.state).collect();
        assert_eq!(states, [JobState::Uploading, JobState::Running]);
        assert_eq!(store.get(&id("j2")).unwrap().unwrap().error.as_deref(), Some("in.mp4: truncated"));
        assert_eq!(store.list(10).unwrap().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["j2", "j1"]);
        assert_eq!(store.get(&id("nope")).unwrap(), None);
        // A restarted server resumes what was running when the last one died, and fails what
        // was uploading.
        create(&store, "j3");
        assert_eq!(store.unfinished().unwrap(), [id("j1")]);
        assert_eq!(store.fail_uploading("the upload was cut off").unwrap(), [id("j3")]);
        assert_eq!(store.get(&id("j3")).unwrap().unwrap().state, JobState::Failed);
    }

    #[test]
    fn a_newer_schema_and_a_file_that_is_no_database_are_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DATABASE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("schema version 99, from a newer vpd"), "{err}");

        let other = tempfile::tempdir().unwrap();
        let garbage = b"this is not a database, but someone's notes".repeat(100);
        std::fs::write(other.path().join(DATABASE), &garbage).unwrap();
        let err = format!("{:#}", Store::open(other.path()).err().unwrap());
        assert!(err.contains(DATABASE) && err.contains("left as it is"), "{err}");
        assert_eq!(std::fs::read(other.path().join(DATABASE)).unwrap(), garbage, "never wiped");
    }

    #[test]
    fn segments_reruns_and_removals_are_recorded_and_a_version_1_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        // A store as the first schema left it, with a job in it.
        let conn = Connection::open(dir.path().join(DATABASE)).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO jobs (id, state, created_ms, updated_ms, peer, client, input_name, input_bytes, chain,
                               output_options, container)
             VALUES ('old', 'done', 1, 2, 'p', 'c', 'a.mp4', 10, 'edges', '{}', 'mp4')",
            [],
        )
        .unwrap();
        drop(conn);

        let store = Store::open(dir.path()).unwrap();
        let old = store.get(&id("old")).unwrap().unwrap();
        assert_eq!((old.resumes, old.spec.transport.to_string().as_str(), old.removed_ms), (0, "auto", None));
        assert_eq!((old.spec.client.as_str(), old.software.as_str()), ("c", ""), "a client recorded without software");

        create(&store, "j1");
        store.transition(&id("j1"), JobState::Running, None).unwrap();
        let seg = |number: u64| SegmentRecord {
            number,
            first_frame: number * 25,
            frames: 25,
            last_pts: Some(7),
            bytes: 100,
            last: false,
        };
        store.commit_segment(&id("j1"), &seg(0)).unwrap();
        store.commit_segment(&id("j1"), &seg(1)).unwrap();
        store.resumed(&id("j1")).unwrap();
        let j1 = store.get(&id("j1")).unwrap().unwrap();
        assert_eq!((j1.committed_frames, j1.resumes), (50, 1));
        assert_eq!(store.segments(&id("j1")).unwrap(), [seg(0), seg(1)]);
        store.transition(&id("j1"), JobState::Paused, None).unwrap();
        let unfinished = store.get(&store.unfinished().unwrap()[0]).unwrap().unwrap();
        assert_eq!(unfinished.state, JobState::Paused, "a paused job is resumed paused");

        store.rerun(&id("old"), &id("j2"), "peer", ("bob", "vpd/0.2.0")).unwrap();
        let j2 = store.get(&id("j2")).unwrap().unwrap();
        assert_eq!((j2.state, j2.rerun_of.as_ref()), (JobState::Queued, Some(&id("old"))));
        assert_eq!(j2.spec.chain, "edges".parse().unwrap());
        assert_eq!(
            (j2.spec.client.as_str(), j2.software.as_str(), j2.spec.input_name.as_str()),
            ("bob", "vpd/0.2.0", "a.mp4")
        );

        assert_eq!(store.kept().unwrap().iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["old"]);
        store.removed(&id("old")).unwrap();
        assert!(store.get(&id("old")).unwrap().unwrap().removed_ms.is_some());
        assert!(store.kept().unwrap().is_empty());
    }

    #[test]
    fn a_version_2_store_keeps_each_jobs_spec_and_client() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DATABASE)).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute(
            "INSERT INTO jobs (id, state, created_ms, updated_ms, peer, client, input_name, input_bytes, chain,
                               output_options, container, transport)
             VALUES ('j9', 'queued', 1, 2, '10.0.0.1', 'alice (vpd/0.1.0)', 'film (1).mkv', 77,
                     'blur:ksize=5,edges:low=50:high=150', '{\"codec\":\"h264\",\"crf\":18,\"preset\":\"fast\"}',
                     'mkv', 'lz4')",
            [],
        )
        .unwrap();
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        let j9 = store.get(&id("j9")).unwrap().unwrap();
        assert_eq!((j9.spec.client.as_str(), j9.software.as_str()), ("alice", "vpd/0.1.0"));
        assert_eq!((j9.spec.input_name.as_str(), j9.spec.input_bytes), ("film (1).mkv", 77));
        assert_eq!(j9.spec.chain, "blur:ksize=5,edges".parse().unwrap());
        assert_eq!((j9.spec.output.crf, j9.spec.output.preset.as_deref()), (Some(18), Some("fast")));
        assert_eq!((j9.spec.container.as_str(), j9.spec.transport.to_string().as_str()), ("mkv", "lz4"));
        assert_eq!(store.unfinished().unwrap().len(), 1);
    }
}
