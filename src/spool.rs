//! The durable local spool: where jobs go when Redis cannot take them.
//!
//! Append-only segment files `spool-<seq>.log` in one directory. Each record
//! is framed and checksummed:
//!
//! ```text
//! "TSP1" | payload length (u32 LE) | CRC-32 of payload (u32 LE) | payload
//! payload = count (u32 LE), then count × (length (u32 LE), bytes):
//!           the stream name, then field name, value, field name, value, …
//! ```
//!
//! One writer thread owns the files (disk I/O never runs on the async
//! runtime). Requests hand it their encoded records and wait; it takes every
//! request waiting at that moment, writes them in one `write`, calls
//! `fdatasync` once and then answers them all (group commit), so a request
//! hears "stored" only once its records are on disk, and a thousand
//! concurrent requests cost one sync, not a thousand.
//!
//! Replay ([`crate::sink`]) seals the open segment, reads sealed segments in
//! order, writes their records to Redis and deletes a segment once all its
//! records are acknowledged. A torn or corrupt record (a crash mid-write, a
//! flipped bit) fails its frame or checksum: it is skipped with a log line,
//! the reader looks for the next valid frame, and garbage is never replayed.
//!
//! A write whose fate was unknown when it was spooled (it timed out on a
//! connection that stayed open) is preceded by a marker record naming its
//! ticket; a settlement record says Redis stored it after all, and the
//! replay skips it (`sink::tickets`). Both are framed like any record.
//!
//! The directory has a size cap; an append past it is refused
//! ([`SpoolError::Full`]) and the caller hears 503.
//!
//! Records hold the callers' leads (names, emails, phone numbers): the
//! directory is made private to the ingress's user (0700) and each segment
//! readable by it alone (0600); a directory found open to others is said
//! at start.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use tracing::{error, info, warn};

use crate::metrics as m;

/// Why the spool could not take or give records.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The size cap is reached.
    #[error("spool is full")]
    Full,
    /// The disk refused a write or sync.
    #[error("spool write failed: {0}")]
    Io(#[source] std::io::Error),
    /// The writer thread is gone (shutting down).
    #[error("spool writer stopped")]
    Stopped,
    /// The directory cannot be created, read or written (at start).
    #[error("cannot use spool directory {}: {source}", .dir.display())]
    Open {
        /// The directory.
        dir: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the directory (at start).
    #[error(
        "spool directory {} is in use by another process: each instance needs its own",
        .0.display()
    )]
    InUse(PathBuf),
}

const MAGIC: &[u8; 4] = b"TSP1";
const HEADER: usize = 12;
/// A segment is closed and a new one started past this size, so replay reads
/// bounded files.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest payload a reader accepts (a length beyond it is corruption).
const MAX_RECORD: usize = 256 << 20;

/// One record read back: what it is and its field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// What the record is.
    pub(crate) kind: Kind,
    /// Field name/value pairs in order.
    pub(crate) fields: Vec<(Bytes, Bytes)>,
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An entry of this stream.
    Stream(Bytes),
    /// A BullMQ job (its queue is among its fields).
    BullmqJob,
    /// The next `records` records are a write whose fate was pending when
    /// it was spooled (`sink::tickets`).
    Pending {
        /// The write's ticket.
        ticket: u64,
        /// How many records follow that belong to it.
        records: u32,
    },
    /// The write of this ticket was stored by Redis after all: its records
    /// are not replayed.
    Settled(u64),
}

/// A BullMQ job's record names this stream on disk: no configured stream
/// starts with a NUL byte, and the frame stays the one `TSP1` describes.
const BULLMQ_JOB: &[u8] = b"\0bullmq";

/// The marker of a ticketed write's records, and a ticket's settlement,
/// named like the BullMQ tag.
const PENDING: &[u8] = b"\0pending";
const SETTLED: &[u8] = b"\0settled";

/// Appends the marker saying the next `records` records are the write of
/// `ticket`, whose fate is pending.
pub(crate) fn encode_pending(out: &mut Vec<u8>, ticket: u64, records: u32) {
    let (ticket, records) = (ticket.to_string(), records.to_string());
    let fields: [(&[u8], &[u8]); 2] = [
        (b"ticket", ticket.as_bytes()),
        (b"records", records.as_bytes()),
    ];
    encode(out, PENDING, fields.into_iter());
}

/// Appends the settlement saying `ticket`'s write was stored by Redis.
pub(crate) fn encode_settled(out: &mut Vec<u8>, ticket: u64) {
    let ticket = ticket.to_string();
    let fields: [(&[u8], &[u8]); 1] = [(b"ticket", ticket.as_bytes())];
    encode(out, SETTLED, fields.into_iter());
}

/// The decimal number of field `name` among `fields`.
fn number<T: std::str::FromStr>(fields: &[(Bytes, Bytes)], name: &[u8]) -> Option<T> {
    let (_, value) = fields.iter().find(|(k, _)| k.as_ref() == name)?;
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Appends one framed BullMQ job record with `fields` to `out`.
pub(crate) fn encode_bullmq_job<'a>(
    out: &mut Vec<u8>,
    fields: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) {
    encode(out, BULLMQ_JOB, fields);
}

/// Appends one framed record for `stream` with `fields` to `out`.
pub fn encode<'a>(
    out: &mut Vec<u8>,
    stream: &[u8],
    fields: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0u8; 8]);
    let count = 1 + 2 * fields.len();
    out.extend_from_slice(&(count as u32).to_le_bytes());
    let mut put = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    put(stream);
    for (name, value) in fields {
        put(name);
        put(value);
    }
    let payload = start + HEADER..out.len();
    let len = payload.len() as u32;
    let crc = crc32fast::hash(&out[payload]);
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn decode_payload(payload: &Bytes) -> Option<Record> {
    let count = u32_at(payload, 0)? as usize;
    if count == 0 || count.is_multiple_of(2) {
        return None;
    }
    let mut at = 4;
    let mut next = || {
        let len = u32_at(payload, at)? as usize;
        let start = at + 4;
        let end = start.checked_add(len)?;
        if end > payload.len() {
            return None;
        }
        at = end;
        Some(payload.slice(start..end))
    };
    let stream = next()?;
    let mut fields = Vec::with_capacity(count / 2);
    for _ in 0..count / 2 {
        let name = next()?;
        fields.push((name, next()?));
    }
    let kind = match stream.as_ref() {
        BULLMQ_JOB => Kind::BullmqJob,
        PENDING => Kind::Pending {
            ticket: number(&fields, b"ticket")?,
            records: number(&fields, b"records")?,
        },
        SETTLED => Kind::Settled(number(&fields, b"ticket")?),
        _ => Kind::Stream(stream),
    };
    (at == payload.len()).then_some(Record { kind, fields })
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub(crate) struct Segment {
    /// Valid records, in order.
    pub(crate) records: Vec<Record>,
    /// Bytes skipped as torn or corrupt.
    pub(crate) skipped_bytes: usize,
    /// Places where skipping started.
    pub(crate) corrupt_at: Vec<usize>,
}

/// Parses a segment's bytes: valid frames in order; anything else skipped up
/// to the next valid frame.
pub(crate) fn decode_segment(data: &Bytes) -> Segment {
    let mut out = Segment::default();
    let mut at = 0;
    let mut skipping: Option<usize> = None;
    while at < data.len() {
        match frame_at(data, at) {
            Some((record, next)) => {
                if let Some(start) = skipping.take() {
                    out.skipped_bytes += at - start;
                }
                out.records.push(record);
                at = next;
            }
            None => {
                if skipping.is_none() {
                    skipping = Some(at);
                    out.corrupt_at.push(at);
                }
                // Look for the next frame start.
                at = memfind(&data[at + 1..], MAGIC).map_or(data.len(), |i| at + 1 + i);
            }
        }
    }
    if let Some(start) = skipping {
        out.skipped_bytes += data.len() - start;
    }
    out
}

fn frame_at(data: &Bytes, at: usize) -> Option<(Record, usize)> {
    if data.get(at..at + 4)? != MAGIC {
        return None;
    }
    let len = u32_at(data, at + 4)? as usize;
    let crc = u32_at(data, at + 8)?;
    if len > MAX_RECORD {
        return None;
    }
    let start = at + HEADER;
    let end = start.checked_add(len)?;
    let payload = data.get(start..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let record = decode_payload(&data.slice(start..end))?;
    Some((record, end))
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

enum Command {
    Append(Vec<u8>, oneshot::Sender<Result<(), SpoolError>>),
    Seal(oneshot::Sender<Vec<PathBuf>>),
}

/// Handle to the spool; clones share one writer.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// The directory's lock, held while the spool is open.
    _lock: File,
    tx: mpsc::Sender<Command>,
    bytes: AtomicU64,
    max_bytes: u64,
    appended: Notify,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.dir)
            .field("bytes", &self.bytes())
            .finish()
    }
}

fn segment_seq(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("spool-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Segment files in `dir`, oldest first.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| segment_seq(&e.path()).map(|s| (s, e.path())))
        .collect();
    out.sort();
    Ok(out)
}

impl Spool {
    /// Opens (creating) the spool in `dir`, counting what a previous run left
    /// there (it is replayed once Redis is reachable), and starts the writer.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let refused = |source| SpoolError::Open {
            dir: dir.to_owned(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| match e.kind() {
                // The path is there, but not as a directory.
                std::io::ErrorKind::AlreadyExists => refused(std::io::Error::new(
                    e.kind(),
                    "it is a file, not a directory",
                )),
                _ => refused(e),
            })?;
        // Two processes on one directory would write segments of the same
        // numbers and each replay (and delete) the other's: the directory
        // is locked for as long as the spool is open.
        let lock = File::open(dir).map_err(refused)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::InUse(dir.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(refused(e)),
        }
        if let Ok(meta) = lock.metadata()
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                dir = %dir.display(),
                mode = %format_args!("{:o}", meta.permissions().mode() & 0o777),
                "the spool directory is open to other users, and its records hold callers' leads: chmod 700 it"
            );
        }
        // Found now, not at the first Redis outage, when the spool is
        // needed: a directory this process cannot write to.
        let probe = dir.join(format!(".probe-{}", std::process::id()));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(refused)?;
        let existing = segments(dir).map_err(refused)?;
        let mut bytes = 0;
        for (_, p) in &existing {
            bytes += std::fs::metadata(p).map_err(refused)?.len();
        }
        // A cap the filesystem cannot hold: the disk fills first, and then
        // every append fails, and so does whatever else writes there.
        if let Ok(fs) = rustix::fs::statvfs(dir) {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            if free.saturating_add(bytes) < max_bytes {
                warn!(
                    dir = %dir.display(),
                    max_bytes,
                    free_bytes = free,
                    spooled_bytes = bytes,
                    "spool.max_bytes is more than the spool's filesystem has left for it: the disk would fill before the cap, and then every append fails (503) and so does whatever else writes there; lower spool.max_bytes or give the spool a volume of its own"
                );
            }
        }
        if bytes > 0 {
            info!(
                dir = %dir.display(),
                bytes,
                segments = existing.len(),
                "the spool holds jobs an earlier process acknowledged; they are replayed into Redis once it answers"
            );
        }
        let next_seq = existing.last().map_or(1, |(s, _)| s + 1);
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            _lock: lock,
            tx,
            bytes: AtomicU64::new(bytes),
            max_bytes,
            appended: Notify::new(),
        });
        metrics::gauge!(m::SPOOL_BYTES).set(bytes as f64);
        let writer = Writer {
            dir: dir.to_owned(),
            next_seq,
            current: None,
            synced: metrics::counter!(m::SPOOL_SYNCS),
        };
        std::thread::Builder::new()
            .name("tether-spool".into())
            .spawn(move || writer.run(&rx))
            .map_err(SpoolError::Io)?;
        Ok(Self { inner })
    }

    /// Bytes on disk not yet replayed (torn tails included).
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Acquire)
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Resolves after the next append (replay's wake-up).
    pub async fn appended(&self) {
        self.inner.appended.notified().await;
    }

    fn send(&self, cmd: Command) -> Result<(), SpoolError> {
        self.inner.tx.send(cmd).map_err(|_| SpoolError::Stopped)
    }

    /// Stores `records` (frames made by [`encode`]) durably: `Ok` once they
    /// are written and synced to disk.
    pub async fn append(&self, records: Vec<u8>) -> Result<(), SpoolError> {
        let len = records.len() as u64;
        let before = self.inner.bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.inner.max_bytes {
            self.inner.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(SpoolError::Full);
        }
        let (done, wait) = oneshot::channel();
        let result = match self.send(Command::Append(records, done)) {
            Ok(()) => wait.await.unwrap_or(Err(SpoolError::Stopped)),
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => {
                metrics::gauge!(m::SPOOL_BYTES).set(self.bytes() as f64);
                self.inner.appended.notify_one();
            }
            Err(_) => {
                self.inner.bytes.fetch_sub(len, Ordering::AcqRel);
            }
        }
        result
    }

    /// Closes the segment being written and lists every segment, oldest
    /// first; later appends go to a new segment.
    pub async fn seal(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Seal(done))?;
        wait.await.map_err(|_| SpoolError::Stopped)
    }

    /// Reads a sealed segment.
    pub(crate) async fn read(path: PathBuf) -> Result<Segment, SpoolError> {
        tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|_| SpoolError::Stopped)?
            .map(|data| decode_segment(&Bytes::from(data)))
            .map_err(SpoolError::Io)
    }

    /// Deletes a replayed segment and releases its bytes.
    pub async fn remove(&self, path: PathBuf) -> Result<(), SpoolError> {
        let len = tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&path)?.len();
            std::fs::remove_file(&path)?;
            Ok::<_, std::io::Error>(len)
        })
        .await
        .map_err(|_| SpoolError::Stopped)?
        .map_err(SpoolError::Io)?;
        let _ = self
            .inner
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(len))
            });
        metrics::gauge!(m::SPOOL_BYTES).set(self.bytes() as f64);
        Ok(())
    }
}

/// Capacity the writer's group-commit buffer keeps between bursts.
const KEEP_BUFFER_BYTES: usize = 256 * 1024;

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    next_seq: u64,
    current: Option<(File, u64)>,
    /// Group commits made (one write + sync each).
    synced: metrics::Counter,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        let mut buf = Vec::new();
        let mut waiters = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append(records, done) => {
                        // A request's records larger than the buffer's room
                        // become the buffer, rather than a second copy.
                        if buf.is_empty() && records.len() > buf.capacity() {
                            buf = records;
                        } else {
                            buf.extend_from_slice(&records);
                        }
                        waiters.push(done);
                    }
                    Command::Seal(done) => {
                        self.flush(&mut buf, &mut waiters);
                        self.current = None;
                        let list = segments(&self.dir)
                            .map(|v| v.into_iter().map(|(_, p)| p).collect())
                            .unwrap_or_default();
                        let _ = done.send(list);
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush(&mut buf, &mut waiters);
        }
    }

    /// Writes and syncs `buf`, then answers every waiter.
    fn flush(
        &mut self,
        buf: &mut Vec<u8>,
        waiters: &mut Vec<oneshot::Sender<Result<(), SpoolError>>>,
    ) {
        if waiters.is_empty() {
            return;
        }
        let result = self.write(buf);
        self.synced.increment(1);
        if let Err(e) = &result {
            // A full disk fails every group commit: one line a second.
            static FAILED: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(held_back) = FAILED.admit() {
                error!(error = %e, dir = %self.dir.display(), held_back, "spool write failed; answering 503");
            }
            // The failed write was cut off the file (`write`); start a
            // fresh segment for the next one all the same.
            self.current = None;
        }
        for w in waiters.drain(..) {
            let _ = w.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(SpoolError::Io(std::io::Error::new(e.kind(), e.to_string()))),
            });
        }
        buf.clear();
        // A burst grows the buffer to its group commit; give that back so a
        // spike once does not hold its peak for the life of the process.
        if buf.capacity() > KEEP_BUFFER_BYTES {
            buf.shrink_to(KEEP_BUFFER_BYTES);
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, n)| *n >= SEGMENT_BYTES)
        {
            self.current = None;
        }
        if self.current.is_none() {
            let path = self.dir.join(format!("spool-{:020}.log", self.next_seq));
            self.next_seq += 1;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
            // Make the new file's directory entry durable too.
            File::open(&self.dir)?.sync_all()?;
            self.current = Some((file, 0));
        }
        let Some((file, written)) = self.current.as_mut() else {
            return Err(std::io::Error::other("no segment open"));
        };
        if let Err(e) = file.write_all(buf).and_then(|()| file.sync_data()) {
            // Take what reached the file of this failed write back off it
            // (its callers hear 503), so replay finds no torn record to
            // report. Should that fail too, replay skips the torn bytes.
            let _ = file.set_len(*written);
            return Err(e);
        }
        *written += buf.len() as u64;
        Ok(())
    }
}

/// Logs what a segment read skipped.
pub(crate) fn report_skipped(path: &Path, segment: &Segment) {
    if segment.skipped_bytes > 0 {
        warn!(
            segment = %path.display(),
            offsets = ?segment.corrupt_at,
            skipped_bytes = segment.skipped_bytes,
            "spool segment has torn or corrupt records; skipped them"
        );
        metrics::counter!(m::SPOOL_CORRUPT).increment(segment.corrupt_at.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stream: &str, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &mut out,
            stream.as_bytes(),
            pairs.iter().map(|(a, b)| (a.as_bytes(), b.as_bytes())),
        );
        out
    }

    fn streams(seg: &Segment) -> Vec<String> {
        seg.records
            .iter()
            .map(|r| String::from_utf8(r.fields[0].1.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let mut data = rec("s", &[("a", "1"), ("payload", "{\"n\":1.10}")]);
        data.extend(rec("t", &[("x", "")]));
        let seg = decode_segment(&Bytes::from(data));
        assert_eq!(seg.skipped_bytes, 0);
        assert_eq!(seg.records.len(), 2);
        assert_eq!(seg.records[0].kind, Kind::Stream(Bytes::from_static(b"s")));
        assert_eq!(&seg.records[0].fields[1].1[..], b"{\"n\":1.10}");
        assert_eq!(&seg.records[1].fields[0].0[..], b"x");
    }

    #[test]
    fn a_torn_tail_is_skipped_at_every_cut() {
        let mut data = rec("s", &[("id", "1")]);
        data.extend(rec("s", &[("id", "2")]));
        let whole = data.len();
        data.extend(rec("s", &[("id", "3")]));
        for cut in whole + 1..data.len() {
            let seg = decode_segment(&Bytes::copy_from_slice(&data[..cut]));
            assert_eq!(streams(&seg), ["1", "2"], "cut at {cut}");
            assert_eq!(seg.skipped_bytes, cut - whole);
        }
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped_and_the_rest_kept() {
        let one = rec("s", &[("id", "1")]);
        let mut data = one.clone();
        data.extend(rec("s", &[("id", "2")]));
        data.extend(rec("s", &[("id", "3")]));
        for flip in one.len()..one.len() * 2 {
            let mut bad = data.clone();
            bad[flip] ^= 0x40;
            let seg = decode_segment(&Bytes::from(bad));
            assert_eq!(streams(&seg), ["1", "3"], "flip at {flip}");
            assert!(seg.skipped_bytes > 0);
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_the_cap_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let s = spool.clone();
                tokio::spawn(async move { s.append(rec("s", &[("id", &i.to_string())])).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let used = spool.bytes();
        assert!(used > 0);
        drop(spool);
        let spool = Spool::open(dir.path(), used + 10).unwrap();
        assert_eq!(spool.bytes(), used);
        assert!(matches!(
            spool.append(rec("s", &[("id", "x")])).await,
            Err(SpoolError::Full)
        ));
        let segments = spool.seal().await.unwrap();
        let mut ids = Vec::new();
        for p in segments {
            ids.extend(streams(&Spool::read(p.clone()).await.unwrap()));
            spool.remove(p).await.unwrap();
        }
        ids.sort_by_key(|s| s.parse::<u32>().unwrap());
        assert_eq!(ids, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(spool.bytes(), 0);
    }

    #[tokio::test]
    async fn one_spool_per_directory_and_an_unusable_one_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path(), 1 << 20).unwrap();
        let second = Spool::open(dir.path(), 1 << 20).err().unwrap();
        assert!(matches!(&second, SpoolError::InUse(d) if d == dir.path()));
        assert!(second.to_string().contains("in use by another process"));
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(first);
        drop(Spool::open(dir.path(), 1 << 20).unwrap());

        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let refused = Spool::open(&file, 1 << 20).err().unwrap();
        assert_eq!(
            refused.to_string(),
            format!(
                "cannot use spool directory {}: it is a file, not a directory",
                file.display()
            )
        );
        let refused = Spool::open(&file.join("spool"), 1 << 20).err().unwrap();
        assert!(matches!(refused, SpoolError::Open { .. }));
        assert!(
            refused.to_string().starts_with(&format!(
                "cannot use spool directory {}",
                file.join("spool").display()
            )),
            "{refused}"
        );
    }
}
