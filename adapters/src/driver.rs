//! The generic tokio driver: runs any lucky-core [`LockMachine`] over a [`Transport`]. It owns
//! no protocol decision: it sends what the machine says, stamps replies with the clock, sleeps
//! until the machine's deadline, and turns events into guard state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use lucky_core::{Event, Fence, LockError, LockMachine, NodeId, NodeOutcome, OpId, Output, State};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use crate::clock::Clock;
use crate::hold::{End, Hold};
use crate::Error;

/// How long a finished lock's cleanup commands may take to go out before they are dropped (a
/// server that never answers must not keep a task alive).
const CLEANUP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Sends one command to one node and reads its reply. Transport failures are replies too (the
/// protocol's "unavailable" reply); timeouts are the machine's business, not the transport's.
pub(crate) trait Transport: Send + Sync + 'static {
    type Command: Send + 'static;
    type Reply: Send + 'static;
    fn send(self: &Arc<Self>, node: usize, command: Self::Command) -> BoxFuture<Self::Reply>;
    /// A source of "the lock may be free now" hints for `channel`, if the backend has one.
    fn subscribe(self: &Arc<Self>, _channel: Vec<u8>) -> BoxFuture<Option<Subscription>> {
        Box::pin(async { None })
    }
}

/// Hints that a lock may have been released; unsubscribes when dropped.
pub(crate) struct Subscription {
    pub notify: Arc<tokio::sync::Notify>,
    pub _keep: Box<dyn Send + Sync>,
}

enum Control {
    Release(oneshot::Sender<Vec<NodeOutcome>>),
    Extend,
}

/// Hands a machine back once it is done with a lock, so its session (an etcd lease) serves
/// the next acquisition of the same name.
pub(crate) type Recycle<M> = Box<dyn FnOnce(M) + Send>;

/// Starts a driver task for `machine` and waits until it holds the lock or gives up.
/// Dropping the returned future before it resolves releases whatever was taken.
pub(crate) async fn acquire<M, T>(
    mut machine: M,
    transport: Arc<T>,
    clock: Clock,
    name: String,
    wake_channel: Option<Vec<u8>>,
    recycle: Option<Recycle<M>>,
) -> Result<Guard, Error>
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    machine.acquire(clock.now())?;
    let shared = Arc::new(Hold::new(0));
    let (lost_tx, lost_rx) = watch::channel(false);
    let span = tracing::info_span!("lucky.lock", name = %name);
    let driver = Driver {
        machine,
        transport,
        clock,
        shared: shared.clone(),
        lost: lost_tx,
        wake_channel,
        subscription: None,
        inflight: Vec::new(),
        recycle,
    };
    // The acquisition runs inline in the caller's future (no task, no channel hop); if that
    // future is dropped mid-flight, `Pending`'s drop hands the machine to a task that
    // releases whatever was taken.
    let mut pending = Pending(Some((driver, span.clone())));
    let outcome = {
        let (driver, _) = pending.0.as_mut().ok_or(Error::DriverGone)?;
        driver.acquire_inline().instrument(span.clone()).await
    };
    let (driver, span) = pending.0.take().ok_or(Error::DriverGone)?;
    match outcome {
        Ok(fence) => {
            let (ctl_tx, ctl_rx) = mpsc::channel(4);
            tokio::spawn(driver.run(ctl_rx).instrument(span));
            Ok(Guard {
                name,
                fence,
                shared,
                clock,
                ctl: ctl_tx,
                lost: lost_rx,
            })
        }
        Err(e) => {
            // Let the cleanup releases of the failed attempt go out.
            spawn_cleanup(driver, span);
            Err(Error::Lock(e))
        }
    }
}

/// An acquisition in progress inside the caller's future.
struct Pending<M, T>(Option<(Driver<M, T>, tracing::Span)>)
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport;

impl<M, T> Drop for Pending<M, T>
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    fn drop(&mut self) {
        if let Some((mut driver, span)) = self.0.take() {
            tracing::debug!(parent: &span, "acquisition cancelled");
            let _ = driver.machine.release(driver.clock.now());
            spawn_cleanup(driver, span);
        }
    }
}

/// Runs `driver` to the end with no guard: releases, sends what is left, then stops.
fn spawn_cleanup<M, T>(driver: Driver<M, T>, span: tracing::Span)
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let (_, ctl_rx) = mpsc::channel(1); // closed: the driver releases and ends
        rt.spawn(driver.run(ctl_rx).instrument(span));
    }
}

struct Driver<M, T: Transport> {
    machine: M,
    transport: Arc<T>,
    clock: Clock,
    shared: Arc<Hold>,
    lost: watch::Sender<bool>,
    /// Where release hints for this lock arrive, subscribed once the lock is found busy.
    wake_channel: Option<Vec<u8>>,
    subscription: Option<Subscription>,
    /// Commands in flight, polled by whoever drives the machine (no task per command).
    inflight: Vec<BoxFuture<(NodeId, OpId, T::Reply)>>,
    recycle: Option<Recycle<M>>,
}

impl<M, T> Driver<M, T>
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    /// Drives the machine until it holds the lock (its fence) or gives up.
    async fn acquire_inline(&mut self) -> Result<Option<Fence>, LockError> {
        tracing::debug!("acquiring");
        let mut timer = Timer::new();
        loop {
            while let Some(out) = self.machine.poll_output() {
                match out {
                    Output::Transmit(t) => self.transmit(t),
                    Output::Event(Event::Acquired { fence, valid_until }) => {
                        self.shared.extend(valid_until.as_nanos());
                        let valid_ms = valid_until
                            .saturating_duration_since(self.clock.now())
                            .as_millis();
                        tracing::info!(fence = fence.map(Fence::get), valid_ms, "acquired");
                        self.subscription = None;
                        return Ok(fence);
                    }
                    Output::Event(Event::Failed(error)) => {
                        tracing::info!(%error, "not acquired");
                        return Err(error);
                    }
                    Output::Event(Event::Retrying { attempt, .. }) => {
                        tracing::debug!(attempt, "lock busy, waiting")
                    }
                    Output::Event(_) => {}
                }
            }
            let state = self.machine.state();
            let waiting = matches!(state, State::Waiting);
            if waiting && self.subscription.is_none() {
                if let Some(channel) = self.wake_channel.take() {
                    self.subscription = self.transport.subscribe(channel).await;
                    // A release may have happened before the subscription took: try now.
                    if self.subscription.is_some() {
                        self.machine.wake(self.clock.now());
                        continue;
                    }
                }
            }
            let notify = self.subscription.as_ref().map(|s| s.notify.clone());
            timer.set(self.machine.poll_timeout().map(|t| self.clock.to_tokio(t)));
            tokio::select! {
                biased;
                (node, op, reply) = next_reply(&mut self.inflight) => {
                    self.machine.handle_reply(self.clock.now(), node, op, reply);
                }
                () = notified(notify.as_deref()), if waiting => {
                    self.machine.wake(self.clock.now());
                }
                () = timer.fired() => {
                    self.machine.handle_timeout(self.clock.now());
                }
            }
        }
    }

    fn transmit(&mut self, t: lucky_core::Transmit<T::Command>) {
        let send = self.transport.send(t.node.index(), t.command);
        self.inflight
            .push(Box::pin(async move { (t.node, t.op, send.await) }));
    }

    /// Keeps a held lock (renewal, loss, release), or, with a closed `ctl`, releases and ends.
    async fn run(mut self, mut ctl: mpsc::Receiver<Control>) {
        let mut inflight = std::mem::take(&mut self.inflight);
        let mut waiters: Vec<oneshot::Sender<Vec<NodeOutcome>>> = Vec::new();
        let mut guard_open = true;
        let mut drain_until: Option<tokio::time::Instant> = None;
        let mut timer = Timer::new();
        loop {
            let mut released = None;
            while let Some(out) = self.machine.poll_output() {
                match out {
                    Output::Transmit(t) => {
                        let send = self.transport.send(t.node.index(), t.command);
                        inflight.push(Box::pin(async move { (t.node, t.op, send.await) }));
                    }
                    Output::Event(Event::Released { nodes }) => {
                        if self.shared.end(End::Released) {
                            let _ = self.lost.send(true);
                        }
                        tracing::info!("released");
                        released = Some(nodes);
                    }
                    Output::Event(e) => self.event(e),
                }
            }
            let state = self.machine.state();
            if let Some(nodes) = released {
                // Released and nobody can ask anything more: hand the machine back before
                // answering, so the caller's next acquisition finds it; commands still in
                // flight (cleanup the machine does not wait for) finish in the background.
                let closing = !waiters.is_empty() || !guard_open;
                if closing && state == State::Done {
                    if let Some(recycle) = self.recycle.take() {
                        finish_detached(std::mem::take(&mut inflight));
                        recycle(self.machine);
                        for w in waiters.drain(..) {
                            let _ = w.send(nodes.clone());
                        }
                        return;
                    }
                }
                for w in waiters.drain(..) {
                    let _ = w.send(nodes.clone());
                }
            }
            // Done, nobody waiting, and no guard that could still ask: the task ends once the
            // commands still in flight (cleanup the machine sent without waiting) are out, or
            // after a grace period if a server does not answer them.
            let idle = matches!(state, State::Done | State::Idle);
            let mut deadline = self.machine.poll_timeout().map(|t| self.clock.to_tokio(t));
            if idle && waiters.is_empty() && !guard_open {
                let until =
                    *drain_until.get_or_insert_with(|| tokio::time::Instant::now() + CLEANUP_GRACE);
                if inflight.is_empty() || tokio::time::Instant::now() >= until {
                    break;
                }
                deadline = Some(deadline.map_or(until, |d| d.min(until)));
            }
            timer.set(deadline);
            tokio::select! {
                biased;
                (node, op, reply) = next_reply(&mut inflight) => {
                    self.machine.handle_reply(self.clock.now(), node, op, reply);
                }
                c = ctl.recv(), if guard_open => match c {
                    Some(Control::Release(w)) => {
                        waiters.push(w);
                        let _ = self.machine.release(self.clock.now());
                    }
                    Some(Control::Extend) => {
                        let _ = self.machine.extend(self.clock.now());
                    }
                    None => {
                        // The guard was dropped: release in the background.
                        guard_open = false;
                        let _ = self.machine.release(self.clock.now());
                    }
                },
                () = timer.fired() => {
                    // Judge by the clock, not by the timer: it may have fired late.
                    self.machine.handle_timeout(self.clock.now());
                }
            }
        }
        if self.shared.end(End::Released) {
            let _ = self.lost.send(true);
        }
        // Nothing is in flight that the machine still waits for: it may serve again.
        let done = matches!(self.machine.state(), State::Done);
        if let (Some(recycle), true) = (self.recycle.take(), inflight.is_empty() && done) {
            recycle(self.machine);
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            // The acquisition itself ran in `acquire_inline`; these cannot follow a hold.
            // `Released` is handled by `run`.
            Event::Acquired { .. }
            | Event::Retrying { .. }
            | Event::Failed(_)
            | Event::Released { .. } => {}
            Event::Extended { valid_until } => {
                self.shared.extend(valid_until.as_nanos());
                tracing::debug!("extended");
            }
            Event::ExtendFailed { error, .. } => tracing::warn!(%error, "extension failed"),
            Event::Lost { reason } => {
                tracing::warn!(?reason, "lock lost");
                if self.shared.end(End::Lost) {
                    let _ = self.lost.send(true);
                }
            }
        }
    }
}

/// Lets commands already handed to the transport complete on their own (bounded), with
/// nobody reading their replies.
fn finish_detached<R: Send + 'static>(inflight: Vec<BoxFuture<R>>) {
    if inflight.is_empty() {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let mut inflight = inflight;
            let all = async {
                while !inflight.is_empty() {
                    next_reply(&mut inflight).await;
                }
            };
            let _ = tokio::time::timeout(CLEANUP_GRACE, all).await;
        });
    }
}

async fn notified(n: Option<&tokio::sync::Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// The first reply among the commands in flight (pending forever when none is).
async fn next_reply<R>(inflight: &mut Vec<BoxFuture<R>>) -> R {
    std::future::poll_fn(|cx| {
        for i in 0..inflight.len() {
            if let std::task::Poll::Ready(r) = inflight[i].as_mut().poll(cx) {
                // `remove`, not `swap_remove`: commands not yet polled keep their order, so
                // each node receives them in the order the machine emitted them.
                drop(inflight.remove(i));
                return std::task::Poll::Ready(r);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// One timer per driver loop, moved only when the machine's deadline moves: most inputs leave
/// the deadline where it was, and re-arming a fresh sleep each time costs a trip through the
/// runtime's timer wheel.
struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<tokio::time::Instant>,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(86_400))),
            armed: None,
        }
    }

    fn set(&mut self, deadline: Option<tokio::time::Instant>) {
        if deadline != self.armed {
            if let Some(d) = deadline {
                self.sleep.as_mut().reset(d);
            }
            self.armed = deadline;
        }
    }

    /// Resolves at the armed deadline (never, if none); then disarms.
    async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

/// A held lock. Keeps the lease alive in the background (when auto-extension is on) and
/// releases on [`release`](Guard::release) or, in the background, on drop.
#[derive(Debug)]
pub struct Guard {
    name: String,
    fence: Option<Fence>,
    shared: Arc<Hold>,
    clock: Clock,
    ctl: mpsc::Sender<Control>,
    lost: watch::Receiver<bool>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Release(_) => "Release",
            Control::Extend => "Extend",
        })
    }
}

impl Guard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token, when the backend provides one.
    pub fn fence(&self) -> Option<Fence> {
        self.fence
    }

    /// The local deadline: the lock must not be relied on at or after it. Moves forward with
    /// each successful extension.
    pub fn valid_until(&self) -> std::time::Instant {
        self.clock.to_std(self.deadline())
    }

    fn deadline(&self) -> lucky_core::Instant {
        lucky_core::Instant::from_nanos(self.shared.deadline())
    }

    /// Whether the lock is still held now (not lost, deadline not reached).
    pub fn is_held(&self) -> bool {
        self.shared.is_held(self.clock.now().as_nanos())
    }

    /// Resolves when the lock is lost: when renewal did not succeed, at the local deadline at
    /// the latest (even if the driver task is late), or once released.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        loop {
            let deadline = self.deadline();
            rx.borrow_and_update();
            if self.shared.ended() || self.clock.now() >= deadline {
                return;
            }
            tokio::select! {
                biased;
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(self.clock.to_tokio(deadline)) => {}
            }
        }
    }

    /// Asks for an extension now (auto-extension does this by itself).
    pub async fn extend(&self) -> Result<(), Error> {
        self.ctl
            .send(Control::Extend)
            .await
            .map_err(|_| Error::DriverGone)
    }

    /// Releases the lock on every node and returns each node's outcome (`Granted`: our key
    /// was deleted; `Refused`: it was not there; or why the node failed). Bounded by the
    /// per-node timeout.
    pub async fn release(self) -> Result<Vec<NodeOutcome>, Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Control::Release(tx))
            .await
            .map_err(|_| Error::DriverGone)?;
        rx.await.map_err(|_| Error::DriverGone)
    }
}
