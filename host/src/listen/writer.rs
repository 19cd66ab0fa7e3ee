//! A listener's stream, once it is let in: the write loop. Each round takes every chunk after the
//! listener's cursor, interleaves ICY metadata if the player asked for it, writes the batch with
//! vectored writes (the plain-TCP fast path never arms a timer), then sleeps until the node's
//! write grid ticks again; admin commands (kill, move) and a fallback's return interrupt the
//! wait. A listener the ring overtakes is dropped and counted.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, watch};
use tracing::info;

use super::{resolve, resolve_anywhere, Listen, OVERRIDE_CHECK};
use crate::hub::{Hub, ListenerCtrl, ListenerTicket, ReadResult};
use crate::metrics::Metrics;
use crate::tls::Stream;

struct Icy {
    /// Audio bytes left before the next metadata slot.
    until: usize,
    /// Audio bytes between slots, as announced to this listener.
    every: usize,
    /// Last metadata version sent to this listener.
    sent_version: u64,
}

pub(super) struct Conn {
    /// Another node relaying the mount, not a player.
    relay: bool,
    /// When the mount's `max_listener_secs` ends this listener.
    time_limit: Option<Instant>,
    pub(super) stream: Stream,
    icy: Option<Icy>,
    /// Bytes written to it.
    pub(super) sent: u64,
    state: Arc<Listen>,
    hub_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

/// What a listener follows: the mount it wanted, its ticket (admin commands), its place in the
/// hub it reads, the audio queued for its next write, and what wakes it.
struct Place {
    wanted: String,
    ticket: ListenerTicket,
    cursor: u64,
    queue: VecDeque<Bytes>,
    /// The hub's new-data signal.
    rx: watch::Receiver<u64>,
    /// Mounts whose producer started here (a fallback's listener goes back to its mount).
    started_rx: broadcast::Receiver<String>,
    /// When to look again whether the wanted mount is produced elsewhere in the cluster.
    override_check: tokio::time::Instant,
}

/// A round of the write loop went well, or why the stream ends (its log reason).
type Step = Result<(), &'static str>;

impl Conn {
    /// A listener on `stream`, ICY metadata every `metaint` bytes if it asked for it.
    pub(super) fn new(
        stream: Stream,
        state: Arc<Listen>,
        metaint: Option<usize>,
        time_limit: Option<Instant>,
        relay: bool,
    ) -> Conn {
        Conn {
            stream,
            icy: metaint.map(|every| Icy {
                until: every,
                every,
                sent_version: 0,
            }),
            sent: 0,
            state,
            hub_gauge: None,
            time_limit,
            relay,
        }
    }

    pub(super) fn attach(&mut self, hub: &Hub) {
        hub.listener_joined();
        let g = self
            .state
            .metrics
            .listeners
            .get_or_create(&Metrics::mount(&hub.mount))
            .clone();
        g.inc();
        self.hub_gauge = Some(g);
    }

    pub(super) fn detach(&mut self, hub: &Hub) {
        hub.listener_left();
        if let Some(g) = self.hub_gauge.take() {
            g.dec();
        }
    }

    /// Moves this listener to another hub at its live position (Ogg: after its header pages).
    fn switch(&mut self, hub: &mut Arc<Hub>, to: Arc<Hub>, at: &mut Place) {
        self.detach(hub);
        *hub = to;
        self.attach(hub);
        // Title versions count per hub: the new hub's title goes out at the next slot.
        if let Some(icy) = &mut self.icy {
            icy.sent_version = u64::MAX;
        }
        let (headers, cursor) = hub.join_live();
        if let Some(h) = headers {
            self.queue_audio(hub, h, &mut at.queue);
        }
        at.cursor = cursor;
        at.rx = hub.watch();
        info!(mount = %hub.mount, "listener switched hub");
    }

    /// Appends audio to the write queue, inserting ICY metadata blocks every `Icy::every` bytes.
    fn queue_audio(&mut self, hub: &Hub, mut data: Bytes, queue: &mut VecDeque<Bytes>) {
        let Some(icy) = &mut self.icy else {
            queue.push_back(data);
            return;
        };
        while !data.is_empty() {
            if icy.until == 0 {
                let meta = hub.meta();
                if meta.version != icy.sent_version {
                    icy.sent_version = meta.version;
                    queue.push_back(meta.block);
                } else {
                    queue.push_back(Bytes::from_static(&[0]));
                }
                icy.until = icy.every;
            }
            let take = icy.until.min(data.len());
            queue.push_back(data.split_to(take));
            icy.until -= take;
        }
    }

    /// Counts a listener dropped for falling behind the ring; returns the log reason.
    fn dropped_slow(&self, hub: &Hub) -> &'static str {
        self.state
            .metrics
            .dropped_slow
            .get_or_create(&Metrics::mount(&hub.mount))
            .inc();
        "too slow: fell behind the mount's queue"
    }

    /// Streams `hub` to the listener (after the mount's `intro`, from `start` when the head
    /// already named it) until it ends: the reason.
    pub(super) async fn run(
        &mut self,
        hub: &mut Arc<Hub>,
        wanted: String,
        ticket: ListenerTicket,
        intro: Option<Bytes>,
        start: Option<(Option<Bytes>, u64)>,
    ) -> &'static str {
        // Another node's relay writes on to its own listeners' grid: batching here too would
        // put two intervals of delay (and of silence in a failover) in series.
        let interval = if self.relay {
            RELAY_WRITE_INTERVAL
        } else {
            self.state.settings.write_interval
        };
        let counter = self
            .state
            .metrics
            .bytes_out
            .get_or_create(&Metrics::mount(&wanted))
            .clone();
        let mut queue = VecDeque::new();
        if let Some(intro) = intro {
            // Written whole before the listener joins the hub, as fast as the player takes it
            // (as Icecast does): there is no ring position yet to fall behind.
            self.queue_audio(hub, intro, &mut queue);
            match self.write(&mut queue, hub, u64::MAX, &counter).await {
                Ok(()) => {}
                Err(WriteError::Timeout) => return "write timeout",
                Err(WriteError::Io | WriteError::Lagged) => return "connection closed",
            }
        }
        // Joined already when the head named the position (a relay); else after the intro.
        let (headers, cursor) = start.unwrap_or_else(|| hub.join());
        if let Some(h) = headers {
            self.queue_audio(hub, h, &mut queue);
        }
        let mut at = Place {
            wanted,
            ticket,
            cursor,
            queue,
            rx: hub.watch(),
            started_rx: self.state.hubs.producer_started(),
            override_check: tokio::time::Instant::now() + OVERRIDE_CHECK,
        };
        loop {
            if let Err(why) = self.round(hub, &mut at, &counter, interval).await {
                return why;
            }
        }
    }

    /// One round: what the hub has after the cursor, written; the fallback followed if the
    /// stream went silent or ended; then the wait for the next write.
    async fn round(
        &mut self,
        hub: &mut Arc<Hub>,
        at: &mut Place,
        counter: &prometheus_client::metrics::counter::Counter,
        interval: Duration,
    ) -> Step {
        if self.time_limit.is_some_and(|t| Instant::now() >= t) {
            return Err("listening time limit reached");
        }
        match hub.read_from(at.cursor) {
            ReadResult::Data(chunks, next) => {
                at.cursor = next;
                // One allocation for the round's queue (ICY blocks split a few chunks more).
                at.queue.reserve(chunks.len() + chunks.len() / 8 + 4);
                for c in chunks {
                    self.queue_audio(hub, c, &mut at.queue);
                }
            }
            ReadResult::Empty => {}
            ReadResult::Lagged => return Err(self.dropped_slow(hub)),
        }
        let last_write = Instant::now();
        if !at.queue.is_empty() {
            match self.write(&mut at.queue, hub, at.cursor, counter).await {
                // The queue's memory goes back between rounds: kept, it held the join burst's
                // hundreds of entries for as long as the listener stayed, most of what a
                // listener cost (`benches/memory.sh`).
                Ok(()) => at.queue = VecDeque::new(),
                Err(WriteError::Lagged) => return Err(self.dropped_slow(hub)),
                Err(WriteError::Io) => return Err("connection closed"),
                Err(WriteError::Timeout) => return Err("write timeout"),
            }
        }
        if self.follow_fallback(hub, at).await? {
            return Ok(());
        }
        // Wait out the write interval (batching is what keeps fan-out cheap), then for new
        // data if the source has none yet.
        self.wait(hub, at, next_tick(last_write, interval)).await
    }

    /// Writes the queue and counts what went.
    async fn write(
        &mut self,
        queue: &mut VecDeque<Bytes>,
        hub: &Hub,
        cursor: u64,
        counter: &prometheus_client::metrics::counter::Counter,
    ) -> Result<(), WriteError> {
        let n = write_queue(&mut self.stream, queue, hub, cursor).await? as u64;
        self.sent += n;
        counter.inc_by(n);
        self.state.hubs.sent(n);
        Ok(())
    }

    /// Follows the fallback when the stream went silent (to one with sound; back when the sound
    /// returns) or ended with everything sent: whether it switched hub.
    async fn follow_fallback(
        &mut self,
        hub: &mut Arc<Hub>,
        at: &mut Place,
    ) -> Result<bool, &'static str> {
        if hub.is_silenced() {
            if let Some(h) = resolve(&self.state, &at.wanted).filter(|h| !Arc::ptr_eq(h, hub)) {
                self.switch(hub, h, at);
                return Ok(true);
            }
        }
        if hub.is_ended() && hub.head() <= at.cursor {
            // A draining node lets another node's relay go, rather than relay the mount's
            // next origin to it: that node follows the mount there itself.
            if self.relay && self.state.lifecycle.draining() {
                return Err("source ended");
            }
            return match resolve_anywhere(&self.state, &at.wanted).await {
                Some(h) => {
                    self.switch(hub, h, at);
                    Ok(true)
                }
                None => Err("source ended"),
            };
        }
        Ok(false)
    }

    /// Waits for `next_write`, then for new data if the source has none yet. Admin commands and
    /// overrides (the wanted mount's source back, here or elsewhere) interrupt either wait.
    async fn wait(
        &mut self,
        hub: &mut Arc<Hub>,
        at: &mut Place,
        next_write: tokio::time::Instant,
    ) -> Step {
        let mut paced = false;
        loop {
            if paced {
                at.rx.borrow_and_update();
                if hub.head() > at.cursor || hub.is_ended() {
                    return Ok(());
                }
            }
            tokio::select! {
                biased;
                changed = at.ticket.commands.changed() => {
                    if changed.is_err() {
                        return Err("removed");
                    }
                    let cmd = at.ticket.commands.borrow_and_update().clone();
                    match cmd {
                        ListenerCtrl::Kill => return Err("killed by admin"),
                        ListenerCtrl::MoveTo(to) => {
                            if let Some(h) = resolve(&self.state, &to) {
                                at.wanted = to;
                                at.ticket.moved_to(&at.wanted);
                                self.switch(hub, h, at);
                            }
                        }
                        ListenerCtrl::Run => {}
                    }
                    return Ok(());
                }
                ev = at.started_rx.recv(), if hub.mount != at.wanted => {
                    // Override: the wanted mount's source is back.
                    let relevant = match ev {
                        Ok(m) => m == at.wanted,
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => false,
                    };
                    if relevant {
                        if let Some(h) = self.state.hubs.hub(&at.wanted).filter(|h| !h.is_silenced()) {
                            self.switch(hub, h, at);
                        }
                    }
                    if hub.mount == at.wanted {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(at.override_check), if hub.mount != at.wanted => {
                    // Override across the cluster: the wanted mount is produced elsewhere
                    // again.
                    at.override_check = tokio::time::Instant::now() + OVERRIDE_CHECK;
                    if self.state.coordinator.origin_url(&at.wanted).is_some() {
                        let back = self.state.relays.hub_from_origin(&at.wanted).await;
                        if let Some(h) = back.filter(|h| !h.is_silenced()) {
                            self.switch(hub, h, at);
                            return Ok(());
                        }
                    }
                }
                () = tokio::time::sleep_until(next_write), if !paced => paced = true,
                _ = at.rx.changed(), if paced => {}
            }
        }
    }
}

/// How often a relay to another node is written to: a few connections per mount, so they are
/// not batched like listeners.
const RELAY_WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// The first multiple of `interval` (counted from process start) after `last`. Listeners write
/// on a shared grid, so one timer wake-up of a worker thread serves many listeners instead of
/// each listener waking a thread at its own phase. A listener woken by a tick writes at once
/// and is due again at the next one: one interval apart. (Counting a whole interval from the
/// moment of the write, which always falls a little after its tick, skipped every other tick.)
fn next_tick(last: Instant, interval: Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    tokio::time::Instant::from_std(tick_after(epoch, last, interval))
}

fn tick_after(epoch: Instant, last: Instant, interval: Duration) -> Instant {
    let step = interval.as_nanos().max(1);
    let since = last.saturating_duration_since(epoch).as_nanos();
    let ticks = since / step + 1;
    epoch + Duration::from_nanos(u64::try_from(ticks * step).unwrap_or(u64::MAX))
}

enum WriteError {
    Io,
    Timeout,
    Lagged,
}

/// A write that makes no progress for this long ends the connection.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Writes the whole queue with vectored writes. While the socket is blocked, checks once a second
/// whether the hub's ring has overtaken this listener (`cursor`: the next chunk it needs).
async fn write_queue(
    stream: &mut Stream,
    queue: &mut VecDeque<Bytes>,
    hub: &Hub,
    cursor: u64,
) -> Result<usize, WriteError> {
    let mut written = 0;
    while !queue.is_empty() {
        let slices: Vec<IoSlice<'_>> = queue.iter().take(128).map(|b| IoSlice::new(b)).collect();
        // Fast path: the socket usually has room, and then no timer is armed at all.
        let n = match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(WriteError::Io),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tokio::select! {
                r = tokio::time::timeout(WRITE_STALL, stream.write_vectored(&slices)) => match r {
                    Err(_) => return Err(WriteError::Timeout),
                    Ok(Err(_)) | Ok(Ok(0)) => return Err(WriteError::Io),
                    Ok(Ok(n)) => n,
                },
                () = overtaken(hub, cursor) => return Err(WriteError::Lagged),
            },
            Err(_) => return Err(WriteError::Io),
        };
        drop(slices);
        written += n;
        let mut left = n;
        while left > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                queue.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    if stream.is_tls() {
        // rustls may still hold records the socket had no room for.
        match tokio::time::timeout(WRITE_STALL, stream.flush()).await {
            Err(_) => return Err(WriteError::Timeout),
            Ok(Err(_)) => return Err(WriteError::Io),
            Ok(Ok(())) => {}
        }
    }
    Ok(written)
}

async fn overtaken(hub: &Hub, cursor: u64) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if hub.first_seq() > cursor {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_woken_by_a_tick_is_due_again_one_interval_later() {
        let epoch = Instant::now();
        let second = Duration::from_secs(1);
        // Woken 3 ms after the tick at 5 s, having written: due at 6 s, not 7 s.
        let woke = epoch + Duration::from_millis(5003);
        assert_eq!(
            tick_after(epoch, woke, second),
            epoch + Duration::from_secs(6)
        );
        // A first write off the grid waits for the next tick.
        let joined = epoch + Duration::from_millis(5700);
        assert_eq!(
            tick_after(epoch, joined, second),
            epoch + Duration::from_secs(6)
        );
    }
}
