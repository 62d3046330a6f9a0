//! The lean writer: a connection of our own that carries job writes.
//!
//! Each serving thread has its own ([`super::writers`]), run by a task on
//! that thread. A request encodes its commands (`XADD`s or one `EVALSHA`)
//! straight into the lane's one buffer and waits on a slot; every request
//! that reaches the lane in one scheduler tick lands in the same buffer, and
//! the lane's task writes it with one syscall. Replies come back in order:
//! each is matched to the front of the queue of expected replies, and a
//! request is woken once all of its own commands are answered. In steady
//! state nothing is allocated per request: the buffers and the slots are
//! reused, and a field is copied once, into the bytes on the wire.
//!
//! # Guarantees
//! - Nothing is re-sent: a connection that breaks fails its unanswered
//!   requests (`Lost`: sent, may be stored; `Disconnected`: never sent), and
//!   the next connection starts empty.
//! - Each request has a deadline (`redis.command_timeout_ms`, from its
//!   start): past it, the request is answered `Timeout` while its entries
//!   stay in the queue, so the late replies still land where they belong.
//! - `redis.max_pending_commands` caps the unanswered commands, and
//!   [`MAX_UNSENT_BYTES`] the encoded ones waiting to be sent.
//! - With `redis.wait_replicas`, each flushed batch ends with one `WAIT`,
//!   and its requests are answered when that `WAIT` is.
//! - A reply that says the node no longer owns the key (`MOVED`, `ASK`,
//!   `READONLY`, `CLUSTERDOWN`, `MASTERDOWN`) refuses that write (Redis ran
//!   none of it); the lane stops taking writes, drains what is in flight,
//!   and reconnects to wherever writes go now.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use fred::{
    error::{Error, ErrorKind},
    interfaces::ClusterInterface as _,
};
use redis_protocol::resp2::{decode::decode_range, types::RangeFrame};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Notify,
};
use tracing::{info, warn};

use crate::redis::{Outage, Say};

use super::{
    error::SinkError,
    tickets::{Fate, Ticket, Tickets},
    wire::{self, Arg, Endpoint, ReadHalf, WriteHalf},
};

/// What a request's commands are answered with.
pub(super) type Answer = Result<Option<Bytes>, SinkError>;

/// The slot index of a `WAIT` entry (it answers a batch, not a request).
const BATCH: u32 = u32::MAX;

/// The slot index of an idle connection's `PING` (it answers nobody).
const PING: u32 = u32::MAX - 1;

/// A connection whose batch in flight has had no reply this long is closed.
const SILENCE: Duration = Duration::from_secs(30);

/// The most a lane keeps of a written batch's buffer for the next one; a
/// larger buffer is dropped once written.
const RETAINED_BATCH_BYTES: usize = 4 << 20;

/// The most one request puts in a lane's buffer at once. A request whose
/// commands take more (a large body matching many workflows: the payload
/// goes once per stream entry, once per BullMQ script run) is sent in parts
/// of about this size, each once Redis has answered the one before, so
/// what a request holds in the buffer and in the batch in flight stays
/// bounded whatever the fan-out (1 MiB and 300 workflows held 300 MB of
/// entries, and eight such requests 1.3 GB). A smaller request is one part.
pub(super) const PART_BYTES: usize = 16 << 20;

/// Sends a request's `parts` one after the other with `send`, each once
/// the one before is stored. A part's timeout carries no ticket unless it
/// is the only part (the request's spooled copy holds the parts after it,
/// never sent), and a part failing after another was stored fails the
/// request as [`SinkError::Partly`]: what was stored stays, and a retry
/// writes it again.
pub(super) async fn in_parts<P, Sent>(
    due: Due,
    parts: impl ExactSizeIterator<Item = P>,
    mut send: impl FnMut(Due, P) -> Sent,
) -> Result<(), SinkError>
where
    Sent: Future<Output = Result<(), SinkError>>,
{
    let due = Due {
        ticketable: parts.len() == 1,
        ..due
    };
    let mut stored = false;
    for part in parts {
        match send(due, part).await {
            Ok(()) => stored = true,
            Err(e @ SinkError::Partly(_)) => return Err(e),
            Err(e) if stored => return Err(SinkError::Partly(Box::new(e))),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Encoded commands waiting behind the batch in flight, at most: beyond it
/// a request is refused like one over `redis.max_pending_commands` (nothing
/// sent), so a slow Redis and large bodies cannot grow the queue without
/// bound (100,000 commands of 1 MiB bodies would be 100 GB).
const MAX_UNSENT_BYTES: usize = 64 << 20;

/// How often a busy lane checks its deadlines.
const TICK: Duration = Duration::from_millis(10);

/// What one queued reply is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A command whose success is all that matters.
    Done,
    /// A command whose bulk-string answer is the request's result (an
    /// outreach entry's id).
    Id,
    /// The `WAIT` closing a batch.
    Wait,
}

/// One expected reply, in the order the commands were written.
#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: u32,
    expect: Expect,
    deadline: Instant,
}

/// One request's place in the lane: how many replies it still expects and
/// what it will be told.
#[derive(Debug, Default)]
struct Slot {
    outstanding: u32,
    /// Its commands are answered; it waits for its batch's `WAIT`.
    confirming: bool,
    /// An answer was given (it may have been taken already).
    resolved: bool,
    /// The request's future is gone (it took its answer or was dropped).
    taken: bool,
    answer: Option<Answer>,
    id: Option<Bytes>,
    refused: Option<Error>,
    waker: Option<Waker>,
    /// Answered `Timeout` with this ticket: its replies settle it.
    ticket: Option<Ticket>,
    /// A timed-out answer may carry a ticket (not for one part of a
    /// request written in several: the parts after it were never sent).
    ticketable: bool,
    /// One of its commands was answered without an error.
    some_stored: bool,
}

/// What the lane's task and its requests share.
#[derive(Debug, Default)]
struct State {
    /// A connection is up and taking writes.
    up: bool,
    /// The lane is shutting down: no new writes.
    closing: bool,
    /// The node said writes go elsewhere: no new writes until reconnected.
    misplaced: bool,
    /// Commands encoded and not yet handed to the socket.
    out: BytesMut,
    /// How many of `queue`'s last entries are still in `out`.
    unsent: usize,
    /// Replies expected, oldest first.
    queue: VecDeque<Entry>,
    /// How many of `queue`'s first entries are past their deadline.
    expired: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots waiting for the next `WAIT`'s answer.
    confirming: Vec<u32>,
    /// `redis.stall_after_ms` as the latest request read it (zero: off).
    stall_after: Duration,
    /// How long a batch's `WAIT` may hold its replies by design (its own
    /// timeout, with `redis.wait_replicas`): added to `stall_after`.
    wait_allowance: Duration,
    /// When the batch in flight was written, or Redis last answered part
    /// of it (kept only with stall_after or tickets).
    flushed_at: Option<Instant>,
    /// The batch in flight has waited longer than `stall_after`: new writes
    /// skip this lane until a reply or a reconnect.
    stalled: bool,
    /// With a spool (and no `WAIT`): tickets for writes answered before
    /// their reply, so a late reply can cancel their spooled copy.
    tickets: Option<Arc<Tickets>>,
    /// Batches handed to the socket so far (the keep-alive's idleness test).
    batches: u64,
}

impl State {
    /// Entries written to the socket and not answered yet.
    fn in_flight(&self) -> usize {
        self.queue.len() - self.unsent.min(self.queue.len())
    }

    fn slot(&mut self, outstanding: u32, ticketable: bool) -> u32 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                // The queue is capped far below u32::MAX slots.
                u32::try_from(self.slots.len() - 1).unwrap_or(PING - 1)
            }
        };
        if let Some(slot) = self.slots.get_mut(index as usize) {
            *slot = Slot {
                outstanding,
                ticketable,
                ..Slot::default()
            };
        }
        index
    }

    fn resolve(&mut self, index: u32, answer: Answer) {
        if let Some(slot) = self.slots.get_mut(index as usize)
            && !slot.resolved
        {
            slot.resolved = true;
            slot.answer = Some(answer);
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    /// Answers `index` `Timeout` before its replies came: with tickets, under
    /// a new ticket its replies will settle.
    fn time_out(&mut self, index: u32) {
        let tickets = self.tickets.clone();
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.resolved {
            return;
        }
        let ticket = match &tickets {
            Some(t) if slot.outstanding > 0 && !slot.confirming && slot.ticketable => {
                Some(t.issue())
            }
            _ => None,
        };
        slot.ticket = ticket;
        self.resolve(index, Err(SinkError::Timeout(ticket)));
    }

    /// Settles the ticket of `index`, if it has one.
    fn settle(&mut self, index: u32, fate: Fate) {
        let ticket = self
            .slots
            .get_mut(index as usize)
            .and_then(|slot| slot.ticket.take());
        if let (Some(ticket), Some(tickets)) = (ticket, &self.tickets) {
            tickets.settle(ticket, fate);
        }
    }

    /// Frees `index` once nothing refers to it any more.
    fn release(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(index as usize)
            && slot.taken
            && slot.outstanding == 0
            && !slot.confirming
        {
            *slot = Slot::default();
            self.free.push(index);
        }
    }

    /// One reply for the front entry: `frame`, read from `buf`.
    fn answer(&mut self, entry: Entry, reply: Reply, confirm: bool) {
        if entry.slot == BATCH {
            let confirmed = matches!(reply, Reply::Acked(true));
            let mut confirming = std::mem::take(&mut self.confirming);
            for index in confirming.drain(..) {
                let id = self.slots.get_mut(index as usize).and_then(|slot| {
                    slot.confirming = false;
                    slot.id.take()
                });
                let answer = if confirmed {
                    Ok(id)
                } else {
                    Err(SinkError::NotReplicated)
                };
                self.resolve(index, answer);
                self.release(index);
            }
            self.confirming = confirming;
            return;
        }
        let index = entry.slot;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        slot.outstanding = slot.outstanding.saturating_sub(1);
        match reply {
            Reply::Refused(e) => {
                slot.refused.get_or_insert(e);
            }
            Reply::Id(id) => {
                slot.id = Some(id);
                slot.some_stored = true;
            }
            Reply::Acked(_) | Reply::Ok => slot.some_stored = true,
        }
        if slot.outstanding > 0 {
            return;
        }
        let fate = if slot.refused.is_some() {
            Fate::Replay
        } else {
            Fate::Stored
        };
        self.settle(index, fate);
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if let Some(e) = slot.refused.take() {
            let refused = SinkError::Redis(e);
            let answer = match slot.some_stored {
                true => SinkError::Partly(Box::new(refused)),
                false => refused,
            };
            self.resolve(index, Err(answer));
        } else if confirm && !slot.resolved {
            slot.confirming = true;
            self.confirming.push(index);
        } else {
            let id = slot.id.take();
            self.resolve(index, Ok(id));
        }
        self.release(index);
    }

    /// Answers `Timeout` to every request past its deadline.
    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.queue.get(self.expired).copied() {
            if entry.deadline > now {
                break;
            }
            self.expired += 1;
            if entry.slot == BATCH {
                for i in 0..self.confirming.len() {
                    let index = self.confirming[i];
                    self.resolve(index, Err(SinkError::Timeout(None)));
                }
            } else {
                self.time_out(entry.slot);
            }
        }
    }

    /// Marks the lane stalled when the batch in flight has heard nothing
    /// for longer than `stall_after`: what was not sent yet is taken back (refused,
    /// nothing sent), and the requests in flight are answered `Timeout`
    /// now rather than at their deadline. `true` on the transition.
    fn check_stall(&mut self, now: Instant) -> bool {
        let waited = self.flushed_at.map(|at| now.saturating_duration_since(at));
        if self.stalled
            || self.stall_after.is_zero()
            || waited.is_none_or(|w| w < self.stall_after + self.wait_allowance)
        {
            return false;
        }
        self.stalled = true;
        for _ in 0..std::mem::take(&mut self.unsent) {
            let Some(entry) = self.queue.pop_back() else {
                break;
            };
            if let Some(slot) = self.slots.get_mut(entry.slot as usize) {
                slot.outstanding = slot.outstanding.saturating_sub(1);
            }
            self.resolve(entry.slot, Err(SinkError::Stalled));
            self.release(entry.slot);
        }
        self.out.clear();
        self.expired = self.expired.min(self.queue.len());
        for i in 0..self.queue.len() {
            let slot = self.queue[i].slot;
            if slot != BATCH {
                self.time_out(slot);
            }
        }
        for i in 0..self.confirming.len() {
            let slot = self.confirming[i];
            self.resolve(slot, Err(SinkError::Timeout(None)));
        }
        true
    }

    /// Ends a stall (a reply came, or the connection ended); `true` on the
    /// transition.
    fn unstall(&mut self) -> bool {
        std::mem::take(&mut self.stalled)
    }

    /// The connection ended: everything unanswered fails (`Lost` if it was
    /// handed to the socket, `Disconnected` if not) and the lane is down.
    fn fail_all(&mut self) {
        self.up = false;
        let sent = self.queue.len() - self.unsent.min(self.queue.len());
        let queue = std::mem::take(&mut self.queue);
        for (i, entry) in queue.iter().enumerate() {
            if entry.slot == BATCH {
                continue;
            }
            if let Some(slot) = self.slots.get_mut(entry.slot as usize) {
                slot.outstanding = slot.outstanding.saturating_sub(1);
            }
            let error = if i < sent {
                SinkError::Lost
            } else {
                SinkError::Disconnected
            };
            // Its late reply can no longer come: the spooled copy replays.
            self.settle(entry.slot, Fate::Replay);
            self.resolve(entry.slot, Err(error));
            self.release(entry.slot);
        }
        self.queue = queue;
        self.queue.clear();
        let mut confirming = std::mem::take(&mut self.confirming);
        for index in confirming.drain(..) {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.confirming = false;
            }
            self.resolve(index, Err(SinkError::Lost));
            self.release(index);
        }
        self.confirming = confirming;
        self.out.clear();
        self.unsent = 0;
        self.expired = 0;
        self.flushed_at = None;
    }
}

/// A decoded reply, as much of it as the lane needs.
enum Reply {
    Ok,
    Id(Bytes),
    /// A `WAIT`'s answer: whether enough replicas acknowledged.
    Acked(bool),
    Refused(Error),
}

#[derive(Debug)]
struct Inner {
    /// Which writer this is, in its log lines (`main`, `serve-0`, …).
    name: Box<str>,
    state: Mutex<State>,
    /// Wakes the task's writing half: `out` has bytes.
    flush: Notify,
    /// Wakes the task's reading half: the queue was empty and is not, so
    /// its deadlines need watching.
    busy: Notify,
    /// Wakes a closing lane's caller: the queue emptied.
    drained: Notify,
    endpoint: Endpoint,
    max_pending: usize,
    /// `redis.wait_replicas` and the `WAIT`'s own timeout, when on.
    wait: Option<(u32, Duration)>,
    /// An idle connection sends `PING` this often, when on.
    keepalive: Option<Duration>,
    /// Counts the lanes (and clients) that connected at least once.
    connected: Arc<AtomicUsize>,
    stalled: metrics::Gauge,
    stalls: metrics::Counter,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave the state half-updated in a
        // way that matters more than stopping would: keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How the lanes behave: the queue cap, `redis.wait_replicas` and
/// `redis.keepalive_ms`.
#[derive(Debug, Clone)]
pub(super) struct LaneSettings {
    /// `redis.max_pending_commands`.
    pub(super) max_pending: usize,
    /// `redis.wait_replicas` and the `WAIT`'s own timeout, when on.
    pub(super) wait: Option<(u32, Duration)>,
    /// With a spool: the tickets of writes answered before their reply.
    pub(super) tickets: Option<Arc<Tickets>>,
    /// An idle connection sends `PING` this often, when on.
    pub(super) keepalive: Option<Duration>,
}

/// One lean writer. Cheap to clone (all clones are the same lane).
#[derive(Debug, Clone)]
pub(super) struct Lane {
    inner: Arc<Inner>,
}

impl Lane {
    /// A lane to `endpoint` called `name` in its log lines, its connection
    /// task started on `runtime`.
    pub(super) fn start(
        name: String,
        endpoint: Endpoint,
        settings: &LaneSettings,
        connected: Arc<AtomicUsize>,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let LaneSettings {
            max_pending,
            wait,
            ref tickets,
            keepalive,
        } = *settings;
        let tickets = tickets.clone();
        let inner = Arc::new(Inner {
            name: name.into(),
            state: Mutex::new(State {
                out: BytesMut::with_capacity(16 * 1024),
                wait_allowance: wait.map_or(Duration::ZERO, |(_, timeout)| timeout),
                tickets: tickets.filter(|_| wait.is_none()),
                ..State::default()
            }),
            flush: Notify::new(),
            busy: Notify::new(),
            drained: Notify::new(),
            endpoint,
            max_pending,
            wait,
            keepalive,
            connected,
            stalled: metrics::gauge!(crate::metrics::REDIS_STALLED),
            stalls: metrics::counter!(crate::metrics::REDIS_STALLS),
        });
        runtime.spawn(run(inner.clone()));
        Self { inner }
    }

    /// Queues `commands` commands that `encode` appends, all due by
    /// `due.deadline`; the last one's bulk-string answer is the result when
    /// `want_id`. Refused at once (nothing sent) when the lane is down,
    /// stalled or full.
    pub(super) fn send(
        &self,
        commands: u32,
        want_id: bool,
        due: Due,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<Ack<'_>, SinkError> {
        let deadline = due.deadline;
        let mut state = self.inner.lock();
        if !state.up || state.misplaced || state.closing {
            return Err(SinkError::Disconnected);
        }
        state.stall_after = due.stall_after;
        if state.stalled {
            return Err(SinkError::Stalled);
        }
        if state.queue.len() + commands as usize > self.inner.max_pending
            || state.out.len() >= MAX_UNSENT_BYTES
        {
            return Err(SinkError::Backpressure);
        }
        let idle = state.queue.is_empty();
        let before = state.out.len();
        encode(&mut state.out);
        let slot = state.slot(commands, due.ticketable);
        for i in 0..commands {
            let expect = if want_id && i + 1 == commands {
                Expect::Id
            } else {
                Expect::Done
            };
            state.queue.push_back(Entry {
                slot,
                expect,
                deadline,
            });
        }
        state.unsent += commands as usize;
        drop(state);
        if before == 0 {
            self.inner.flush.notify_one();
        }
        if idle {
            self.inner.busy.notify_one();
        }
        Ok(Ack {
            lane: &self.inner,
            slot,
            done: false,
        })
    }

    /// Stops taking writes and waits (at most `grace`) for the replies of
    /// those in flight.
    pub(super) async fn close(&self, grace: Duration) {
        let drained = self.inner.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        {
            let mut state = self.inner.lock();
            state.closing = true;
            if state.queue.is_empty() || !state.up {
                return;
            }
        }
        let _ = tokio::time::timeout(grace, drained).await;
    }
}

/// When a request's write is due, and when its lane counts as stalled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Due {
    /// The request's deadline (`redis.command_timeout_ms` from its start).
    pub(super) deadline: Instant,
    /// `redis.stall_after_ms` (zero: off).
    pub(super) stall_after: Duration,
    /// Whether a timed-out write may be answered under a ticket, so that
    /// its late reply decides its spooled copy's fate: not a part of a
    /// request written in several, whose copy holds parts never sent.
    pub(super) ticketable: bool,
}

impl Due {
    /// A write started at `started`, under the settings in force.
    pub(super) fn of(settings: &crate::settings::Settings, started: Instant) -> Self {
        Self {
            deadline: started + settings.redis.command_timeout_ms,
            stall_after: settings.redis.stall_after_ms,
            ticketable: true,
        }
    }
}

/// A request's wait for its answer. Dropped early, it leaves the slot to be
/// freed when its replies arrive.
#[derive(Debug)]
pub(super) struct Ack<'a> {
    lane: &'a Inner,
    slot: u32,
    done: bool,
}

impl Future for Ack<'_> {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let mut state = self.lane.lock();
        let index = self.slot;
        let Some(slot) = state.slots.get_mut(index as usize) else {
            return Poll::Ready(Err(SinkError::Lost));
        };
        match slot.answer.take() {
            Some(answer) => {
                slot.taken = true;
                state.release(index);
                drop(state);
                self.done = true;
                Poll::Ready(answer)
            }
            None => {
                match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Ack<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.lane.lock();
        let tickets = state.tickets.clone();
        if let Some(slot) = state.slots.get_mut(self.slot as usize) {
            slot.taken = true;
            slot.waker = None;
            // An answer nobody took: no spooled copy waits on its ticket.
            if let Some(Err(SinkError::Timeout(Some(ticket)))) = slot.answer.take() {
                slot.ticket = None;
                if let Some(tickets) = tickets {
                    tickets.forget(ticket);
                }
            }
        }
        state.release(self.slot);
    }
}

/// Why a connection's life ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("{0}")]
    Io(std::io::Error),
    /// The node said writes go elsewhere, and what was in flight is answered.
    #[error("the node no longer takes these writes")]
    Misplaced,
    /// A reply that fits no request or does not parse.
    #[error("unreadable reply: {0}")]
    Protocol(String),
    /// The sentinels name another primary: what this one takes now, its
    /// demotion will discard.
    #[error("the sentinels name another primary")]
    Moved,
    /// Nothing answered the batch in flight for [`SILENCE`].
    #[error("no reply for {SILENCE:?}")]
    Silent,
}

/// The lane's task: connect, carry writes until the connection ends, fail
/// what it left unanswered, reconnect (50 ms doubling to 1 s between tries).
async fn run(inner: Arc<Inner>) {
    let mut counted = false;
    let mut down: Option<Outage> = None;
    let mut backoff = Duration::ZERO;
    loop {
        if inner.lock().closing {
            return;
        }
        match inner.endpoint.connect().await {
            Ok(link) => {
                inner.lock().up = true;
                if !counted {
                    counted = true;
                    inner.connected.fetch_add(1, Ordering::Release);
                }
                if let Some(outage) = down.take() {
                    info!(writer = %inner.name, down_for_ms = outage.lasted().as_millis() as u64, "job writer reconnected to redis");
                }
                backoff = Duration::ZERO;
                let ended = tokio::select! {
                    e = read_loop(&inner, link.read) => e,
                    e = write_loop(&inner, link.write) => Ended::Io(e),
                    () = inner.endpoint.moved_from(link.primary.as_ref()) => Ended::Moved,
                    never = keep_alive(&inner) => match never {},
                };
                let (closing, misplaced) = {
                    let mut state = inner.lock();
                    state.fail_all();
                    if state.unstall() {
                        inner.stalled.decrement(1.0);
                    }
                    let misplaced = std::mem::take(&mut state.misplaced);
                    (state.closing, misplaced)
                };
                inner.drained.notify_waiters();
                if closing {
                    return;
                }
                if misplaced && let Some(view) = inner.endpoint.cluster_view() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), view.sync_cluster()).await;
                }
                if down.is_none() {
                    warn!(writer = %inner.name, reason = %ended, "job writer lost its redis connection; reconnecting");
                    down = Some(Outage::new(Instant::now()));
                }
            }
            Err(e) => match Outage::note(&mut down, Instant::now()) {
                Say::Began => {
                    warn!(writer = %inner.name, error = %e, "job writer cannot connect to redis; retrying");
                }
                Say::Lasts(down_for) => {
                    warn!(writer = %inner.name, error = %e, down_for_secs = down_for.as_secs(), "job writer still cannot connect to redis; retrying");
                }
                Say::Nothing => {}
            },
        }
        backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::time::sleep(backoff).await;
    }
}

/// Hands each batch of encoded commands to the socket, one write each.
async fn write_loop(inner: &Inner, mut write: WriteHalf) -> std::io::Error {
    let mut batch = BytesMut::with_capacity(16 * 1024);
    loop {
        inner.flush.notified().await;
        loop {
            {
                let mut state = inner.lock();
                // One batch in flight at a time: what arrives meanwhile
                // waits for its answers and leaves as the next, deeper
                // batch (the reader wakes this loop when they land). Idle,
                // a request leaves at once.
                if state.out.is_empty() || state.in_flight() > 0 {
                    break;
                }
                // A keep-alive `PING` alone stores nothing to confirm.
                if let Some((replicas, timeout)) = inner.wait
                    && let Some(last) = state.queue.back().filter(|e| e.slot != PING)
                {
                    let deadline = last.deadline;
                    wait_command(&mut state.out, replicas, timeout);
                    state.queue.push_back(Entry {
                        slot: BATCH,
                        expect: Expect::Wait,
                        deadline,
                    });
                }
                std::mem::swap(&mut state.out, &mut batch);
                state.unsent = 0;
                state.batches = state.batches.wrapping_add(1);
                if !state.stall_after.is_zero() || state.tickets.is_some() {
                    state.flushed_at = Some(Instant::now());
                }
            }
            if let Err(e) = write.write_all(&batch).await {
                return e;
            }
            if let Err(e) = write.flush().await {
                return e;
            }
            batch.clear();
            // One huge request (a 1 MiB body matching many workflows) must
            // not pin its batch's memory for the life of the connection.
            if batch.capacity() > RETAINED_BATCH_BYTES {
                batch = BytesMut::with_capacity(16 * 1024);
            }
        }
    }
}

/// Sends a `PING` whenever the connection wrote nothing for half of
/// `redis.keepalive_ms`, so a Redis `timeout` (which closes clients idle
/// that long) does not close it: the next requests would meet a reconnect.
/// It wakes twice a period whatever the load, and the request path pays
/// nothing for it (a batch counter the writer keeps anyway). Never ends.
async fn keep_alive(inner: &Inner) -> std::convert::Infallible {
    let Some(every) = inner.keepalive else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(every / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut seen = inner.lock().batches;
    loop {
        tick.tick().await;
        let batches = inner.lock().batches;
        if batches == seen {
            ping(inner);
        }
        seen = batches;
    }
}

/// Queues a `PING` on an idle connection. Its reply answers nobody;
/// unanswered, it stalls the lane like any write.
fn ping(inner: &Inner) {
    let mut state = inner.lock();
    if !state.queue.is_empty() || !state.up || state.closing || state.stalled {
        return;
    }
    wire::encode(&mut state.out, [Arg::Bytes(b"PING")]);
    state.queue.push_back(Entry {
        slot: PING,
        expect: Expect::Done,
        deadline: Instant::now() + SILENCE,
    });
    state.unsent += 1;
    drop(state);
    inner.flush.notify_one();
}

/// `WAIT replicas timeout-ms`, appended to `out`.
fn wait_command(out: &mut BytesMut, replicas: u32, timeout: Duration) {
    let millis = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let args = [
        Arg::Bytes(b"WAIT"),
        Arg::Int(i64::from(replicas)),
        Arg::Int(millis),
    ];
    wire::encode(out, args);
}

/// Reads replies, answers their requests in order, and checks deadlines
/// while anything is in flight.
async fn read_loop(inner: &Inner, mut read: ReadHalf) -> Ended {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let busy = !inner.lock().queue.is_empty();
        let read_some = async {
            if busy {
                tokio::select! {
                    biased;
                    r = read.read_buf(&mut buf) => Some(r),
                    _ = tick.tick() => None,
                }
            } else {
                tokio::select! {
                    biased;
                    r = read.read_buf(&mut buf) => Some(r),
                    () = inner.busy.notified() => None,
                }
            }
        };
        match read_some.await {
            None => {
                let mut state = inner.lock();
                let now = Instant::now();
                state.expire(now);
                if state.check_stall(now) {
                    inner.stalled.increment(1.0);
                    inner.stalls.increment(1);
                    warn!(
                        writer = %inner.name,
                        after_ms = state.stall_after.as_millis() as u64,
                        "redis stopped answering this job writer; new writes skip it until it answers"
                    );
                }
                // A node that said "elsewhere" and then stopped answering.
                if state.misplaced && state.expired == state.queue.len() {
                    return Ended::Misplaced;
                }
                // Silent for this long, the connection is given up: its
                // ticketed writes become replays instead of waiting forever.
                if state
                    .flushed_at
                    .is_some_and(|at| now.saturating_duration_since(at) > SILENCE)
                {
                    return Ended::Silent;
                }
            }
            Some(Err(e)) => return Ended::Io(e),
            Some(Ok(0)) => return Ended::Io(std::io::ErrorKind::UnexpectedEof.into()),
            Some(Ok(_)) => {
                if let Some(ended) = take_replies(inner, &mut buf) {
                    return ended;
                }
            }
        }
    }
}

/// Answers every complete reply in `buf`; `Some` when the connection must
/// end.
fn take_replies(inner: &Inner, buf: &mut BytesMut) -> Option<Ended> {
    let mut state = inner.lock();
    if state.unstall() {
        inner.stalled.decrement(1.0);
        info!(writer = %inner.name, "redis answers this job writer again");
    }
    loop {
        let (frame, used) = match decode_range(buf) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => break,
            Err(e) => return Some(Ended::Protocol(e.to_string())),
        };
        let Some(entry) = state.queue.pop_front() else {
            return Some(Ended::Protocol("a reply nobody asked for".to_owned()));
        };
        state.expired = state.expired.saturating_sub(1);
        let reply = match (frame, entry.expect) {
            (RangeFrame::Error(range), _) => {
                let text = String::from_utf8_lossy(&buf[range.0..range.1]).into_owned();
                if is_misplaced(&text) {
                    state.misplaced = true;
                }
                buf.advance(used);
                Reply::Refused(Error::new(ErrorKind::Unknown, text))
            }
            (RangeFrame::BulkString(range), Expect::Id) => {
                let id = buf.split_to(used).freeze().slice(range.0..range.1);
                Reply::Id(id)
            }
            (RangeFrame::Integer(n), Expect::Wait) => {
                buf.advance(used);
                let wanted = inner.wait.map_or(0, |(r, _)| i64::from(r));
                Reply::Acked(n >= wanted)
            }
            (_, Expect::Wait) => {
                buf.advance(used);
                Reply::Acked(false)
            }
            _ => {
                buf.advance(used);
                Reply::Ok
            }
        };
        state.answer(entry, reply, inner.wait.is_some());
    }
    // Under a steady flow the tick may never win against the reads: check
    // the oldest deadline here too (one clock read per batch of replies).
    let now = Instant::now();
    if state
        .queue
        .get(state.expired)
        .is_some_and(|oldest| oldest.deadline <= now)
    {
        state.expire(now);
    }
    if state.queue.is_empty() {
        if state.misplaced {
            return Some(Ended::Misplaced);
        }
        if state.closing {
            inner.drained.notify_waiters();
        }
    }
    if state.in_flight() == 0 {
        state.flushed_at = None;
    } else if state.flushed_at.is_some() {
        // Redis is answering, only slowly (a batch it takes seconds over):
        // a stall and the silence limit count from its latest reply, or the
        // lane would stall again at every tick between two replies.
        state.flushed_at = Some(now);
    }
    let next_batch = state.in_flight() == 0 && !state.out.is_empty();
    drop(state);
    if next_batch {
        inner.flush.notify_one();
    }
    None
}

/// Whether an error reply says this node no longer takes the write.
fn is_misplaced(error: &str) -> bool {
    [
        "MOVED",
        "ASK",
        "READONLY",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "TRYAGAIN",
    ]
    .iter()
    .any(|code| error.starts_with(code))
}
