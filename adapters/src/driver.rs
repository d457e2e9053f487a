//! The generic tokio driver: runs any lucky-core [`LockMachine`] over a [`Transport`]. It owns
//! no protocol decision: it sends what the machine says, stamps replies with the clock, sleeps
//! until the machine's deadline, and turns events into guard state.
//!
//! One driver (machine, commands in flight, timer) lives in one box for the whole life of a
//! lock: the acquisition runs it inside the caller's future; then either a keeper drives it (the
//! machine has something to do before the deadline: renewal) or the guard does, and runs it
//! inline on `release` (no task, no channel hop for a lock that is only taken and released).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use lucky_core::{
    Event, Fence, LockError, LockMachine, LostReason, NodeId, NodeOutcome, OpId, Output, State,
    UsageError,
};
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::clock::Clock;
use crate::hold::{End, Hold};
use crate::keeper::{Keepers, Kept};
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
    /// The driver boxes the returned future once, with the command's address.
    fn send(
        self: &Arc<Self>,
        node: usize,
        command: Self::Command,
    ) -> impl Future<Output = Self::Reply> + Send + 'static;
    /// Answers `command` at once when the transport can (an in-process store): no future, no
    /// allocation. The default hands it back, to go through [`send`](Self::send).
    fn send_now(&self, _node: usize, command: Self::Command) -> Result<Self::Reply, Self::Command> {
        Err(command)
    }
    /// Whether `command` is answered inside this process, not by a server (an etcd lock's
    /// long-poll for its session's changes): its answer does not free the gate's slot.
    fn is_local(&self, _command: &Self::Command) -> bool {
        false
    }
    /// The client's background tasks, so `close()` can wait for them.
    fn tasks(&self) -> &Arc<Tasks>;
    /// The client's bound on acquisitions in their first attempt, if it has one.
    fn gate(&self) -> Option<&Gate> {
        None
    }
    /// A source of "the lock may be free now" hints for `channel`, if the backend has one.
    fn subscribe(self: &Arc<Self>, _channel: Vec<u8>) -> BoxFuture<Option<Subscription>> {
        Box::pin(async { None })
    }
}

/// The background tasks of one client: clean-ups of cancelled acquisitions, releases of
/// dropped guards, renewals of held locks, commands left to finish. A process waits for them
/// with the client's `close()` before it exits, so nothing it wrote outlives it.
#[derive(Debug, Default)]
pub struct Tasks {
    live: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    /// The tasks that drive the client's held locks.
    keepers: Keepers,
}

/// One live background task; dropping it ends the task's count.
pub(crate) struct TaskToken(Arc<Tasks>);

impl Tasks {
    /// Counts a task until the returned token is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> TaskToken {
        self.live.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        TaskToken(self.clone())
    }

    /// Tasks still running.
    pub(crate) fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until no task runs, or `timeout` passed; returns whether none runs.
    pub(crate) async fn wait_idle(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check: a task ending in between still wakes us.
            notified.as_mut().enable();
            if self.live() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.live() == 0;
            }
        }
    }
}

impl Drop for TaskToken {
    fn drop(&mut self) {
        if self
            .0
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// Back-pressure: at most `size` acquisitions of one client have sent their first requests
/// and heard nothing back yet. An acquisition takes a slot before its machine starts, so its
/// round's timeouts start when its commands can go out at once instead of while they queue
/// behind thousands of others, and gives it back at the first answer (or outcome): new
/// acquisitions start at the pace answers come back, like a window, and one queued behind a
/// holder (waiting on a watch, or between attempts) holds no slot. Slots are granted in
/// order of asking.
#[derive(Debug)]
pub(crate) struct Gate {
    slots: Arc<tokio::sync::Semaphore>,
    size: usize,
}

impl Gate {
    /// A gate of `size` slots (at least one).
    #[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
    pub(crate) fn new(size: usize) -> Gate {
        let size = size.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Gate {
            slots: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
        }
    }

    /// A slot, once one is free (None only if the gate closed, which it never does).
    fn slot(
        &self,
    ) -> impl Future<Output = Option<tokio::sync::OwnedSemaphorePermit>> + Send + 'static {
        let slots = self.slots.clone();
        async move { slots.acquire_owned().await.ok() }
    }

    /// Waits for a slot: as long as the request's `wait` allows, without end for a request
    /// that does not wait for the lock (work accepted is queued, not failed; dropping the
    /// future gives up).
    async fn enter(
        &self,
        wait: lucky_core::Wait,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let got = match wait {
            lucky_core::Wait::For(d) => {
                tokio::time::timeout(d, self.slot())
                    .await
                    .map_err(|_| Error::Overloaded {
                        in_flight: self.size,
                        waited: d,
                    })?
            }
            _ => self.slot().await,
        };
        got.ok_or(Error::DriverGone)
    }
}

/// Hints that a lock may have been released; unsubscribes when dropped.
pub(crate) struct Subscription {
    pub notify: Arc<tokio::sync::Notify>,
    pub _keep: Box<dyn Send + Sync>,
}

enum Control {
    Release(oneshot::Sender<Vec<NodeOutcome>>),
    Extend(oneshot::Sender<Extension>),
    /// Answered (a placeholder while an answer is taken out of the queue).
    Done,
}

/// What a guard asks of its kept driver: a queue the driver reads and a flag for "the guard
/// is gone" (then the driver releases). A hundred bytes per held lock where a bounded channel
/// costs a kilobyte; requests are rare (an explicit extend or release), one reader.
#[derive(Default)]
struct Ctl {
    state: std::sync::Mutex<CtlState>,
}

#[derive(Default)]
struct CtlState {
    queue: std::collections::VecDeque<Control>,
    closed: bool,
    /// Wakes the driver once something is queued or the guard is gone.
    waker: Option<std::task::Waker>,
}

impl Ctl {
    fn state(&self) -> std::sync::MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `c` for the driver; false if the guard side was closed.
    fn send(&self, c: Control) -> bool {
        let mut s = self.state();
        if s.closed {
            return false;
        }
        s.queue.push_back(c);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The next request, or `None` once the guard is gone and nothing is queued.
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Control>> {
        let mut s = self.state();
        if let Some(c) = s.queue.pop_front() {
            return Poll::Ready(Some(c));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The guard's end of its driver's [`Ctl`]: dropping it tells the driver the guard is gone.
struct CtlSender(Arc<Ctl>);

impl Drop for CtlSender {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.state();
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The answer to an extension: the new local deadline, or why there is none.
type Extension = Result<lucky_core::Instant, Error>;

/// Hands a machine back once it is done with a lock, so its session (an etcd lease) serves
/// the next acquisition of the same name.
pub(crate) type Recycle<M> = Box<dyn FnOnce(M) + Send>;

/// Prepares the acquisition of a lock with `machine`; the returned future runs it in the
/// caller's task and resolves once the lock is held or the machine gave up. Dropping the
/// future before it resolves releases whatever was taken.
pub(crate) fn acquire<M, T>(
    machine: M,
    transport: Arc<T>,
    clock: Clock,
    name: String,
    recycle: Option<Recycle<M>>,
    wait: lucky_core::Wait,
) -> impl Future<Output = Result<Guard, Error>> + Send + 'static
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    let shared = Arc::new(Hold::new(0));
    let span = tracing::info_span!("lucky.lock", name = %name);
    // Boxed once here: the future below, the guard and any task move only the pointer.
    let driver = Box::new(Driver {
        machine,
        transport,
        clock,
        shared: shared.clone(),
        listened: false,
        hints: None,
        answered: std::collections::VecDeque::new(),
        steps: std::collections::VecDeque::new(),
        inflight: Vec::new(),
        timer: Timer::new(),
        recycle,
        span,
        releasing: false,
        slot: None,
        heard: false,
        local_op: None,
        entering: None,
        keep: None,
    });
    async move {
        let mut driver = driver;
        if let Some(gate) = driver.transport.gate() {
            // Before the machine starts: nothing sent yet, nothing to clean up.
            driver.slot = Some(gate.enter(wait).await?);
        }
        let mut pending = Pending(Some(driver));
        let started = pending.0.as_mut().map(|d| d.machine.acquire(d.clock.now()));
        if let Some(Err(usage)) = started {
            // Refused before anything was sent: nothing to clean up.
            drop(pending.0.take());
            return Err(Error::Usage(usage));
        }
        let outcome = match pending.0.as_mut() {
            Some(driver) => {
                let span = driver.span.clone();
                driver.acquire_inline().instrument(span).await
            }
            None => return Err(Error::DriverGone),
        };
        let mut driver = pending.0.take().ok_or(Error::DriverGone)?;
        match outcome {
            Ok(fence) => {
                driver.trim();
                // A hold with nothing to send before its deadline (no renewal) needs no
                // task: the guard keeps the driver and runs it when asked.
                let key = driver.machine.held_key();
                let link = if driver.machine.renews_while_held() {
                    keep(driver).map_or(Link::Gone, Link::Task)
                } else {
                    Link::Parked(driver)
                };
                Ok(Guard {
                    name,
                    key,
                    fence,
                    shared,
                    clock,
                    link: std::sync::Mutex::new(link),
                })
            }
            Err(e) => {
                // Let the cleanup releases of the failed attempt go out.
                drop(keep(driver));
                Err(Error::Lock(e))
            }
        }
    }
}

/// An acquisition in progress inside the caller's future; dropped midway, it hands the
/// driver to a keeper that releases whatever was taken.
struct Pending<M, T>(Option<Box<Driver<M, T>>>)
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport;

impl<M, T> Drop for Pending<M, T>
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    fn drop(&mut self) {
        if let Some(mut driver) = self.0.take() {
            tracing::debug!(parent: &driver.span, "acquisition cancelled");
            let _ = driver.machine.release(driver.clock.now());
            drop(keep(driver));
        }
    }
}

/// Moves a driver to one of the client's keepers and returns its control channel; dropping
/// the channel makes the driver release and end (what cleanup after a failed or cancelled
/// acquisition does). Without a runtime nothing can run (None): the lock then runs out at its
/// ttl.
fn keep<M, T>(mut driver: Box<Driver<M, T>>) -> Option<CtlSender>
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let ctl = Arc::new(Ctl::default());
    let tasks = driver.transport.tasks().clone();
    driver.keep = Some(Box::new(Keep {
        ctl: ctl.clone(),
        guard_open: true,
        asked: Vec::new(),
        want_release: false,
        grace: None,
        finish_nodes: None,
        _token: tasks.enter(),
    }));
    tasks.keepers.keep(&rt, driver);
    Some(CtlSender(ctl))
}

/// How a guard reaches its driver.
enum Link {
    /// The guard holds the driver; nothing runs until the guard asks.
    Parked(Box<dyn Parked>),
    /// A keeper drives the hold (renewal, loss, release).
    Task(CtlSender),
    /// Released, or the driver moved on.
    Gone,
}

/// A held lock's driver kept in its guard, type-erased over machine and transport.
trait Parked: Send {
    /// Drives the release in the caller's task; ready once the machine reports it.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<Vec<NodeOutcome>>;
    /// After the release: leftover commands finish in the background, the machine goes back
    /// for reuse.
    fn finish(self: Box<Self>);
    /// Moves the driver to a keeper (none without a runtime: the lock then runs out at its
    /// ttl). Dropping the returned sender makes the driver release.
    fn into_task(self: Box<Self>) -> Option<CtlSender>;
}

impl<M, T> Parked for Driver<M, T>
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<Vec<NodeOutcome>> {
        let span = self.span.clone();
        let _entered = span.enter();
        if !self.releasing {
            std::task::ready!(self.poll_slot(cx));
            // First what arrived while nobody drove the machine, then the release.
            if let Poll::Ready(Some(first)) = poll_ready_reply(&mut self.inflight, cx) {
                self.feed(first, cx);
            }
            let _ = self.machine.release(self.clock.now());
            self.releasing = true;
        }
        loop {
            if let Step::Released(nodes) = std::task::ready!(self.poll_step(cx)) {
                self.slot = None;
                return Poll::Ready(nodes);
            }
        }
    }

    fn finish(self: Box<Self>) {
        self.wind_up();
    }

    fn into_task(self: Box<Self>) -> Option<CtlSender> {
        keep(self)
    }
}

/// A parked release in progress; dropped midway, the release finishes in a keeper.
struct Releasing(Option<Box<dyn Parked>>);

impl Drop for Releasing {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            drop(p.into_task());
        }
    }
}

/// Release hints of a waiting acquisition: the subscription, while it is set up, then the
/// next hint.
struct Hints {
    subscribing: Option<BoxFuture<Option<Subscription>>>,
    subscription: Option<Subscription>,
    wakeup: Option<BoxFuture<()>>,
}

/// What a driver needs once a keeper drives it: the guard's requests, and who waits for
/// their answers. Boxed apart from the driver: an acquisition that is only taken and released
/// inline never needs it.
struct Keep {
    ctl: Arc<Ctl>,
    /// The guard can still ask (it was not dropped).
    guard_open: bool,
    /// Releases and extensions asked for, not yet answered.
    asked: Vec<Control>,
    /// A release was asked for and waits for a slot of the gate.
    want_release: bool,
    /// Bounds the time cleanup commands may take once the lock is done with.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Released with the machine to hand back: the answer `finish` gives the release waiters.
    finish_nodes: Option<Vec<NodeOutcome>>,
    /// Counts the kept lock among the client's tasks, so `close()` waits for it.
    _token: TaskToken,
}

impl Drop for Keep {
    fn drop(&mut self) {
        // The driver ends without answering (its keeper was dropped with a runtime that shut
        // down, or it panicked): the guard's requests fail at once instead of waiting forever.
        let queued = {
            let mut s = self.ctl.state();
            s.closed = true;
            std::mem::take(&mut s.queue)
        };
        drop(queued);
    }
}

impl Keep {
    /// Whether someone waits for the release's outcome.
    fn release_asked(&self) -> bool {
        self.asked.iter().any(|c| matches!(c, Control::Release(_)))
    }

    /// Answers everyone waiting for an extension's outcome.
    fn answer_extensions(&mut self, outcome: impl Fn() -> Extension) {
        self.asked.retain_mut(|c| {
            if !matches!(c, Control::Extend(_)) {
                return true;
            }
            if let Control::Extend(w) = std::mem::replace(c, Control::Done) {
                let _ = w.send(outcome());
            }
            false
        });
    }

    /// Answers everyone waiting for the release.
    fn answer_releases(&mut self, nodes: &[NodeOutcome]) {
        self.asked.retain_mut(|c| {
            if !matches!(c, Control::Release(_)) {
                return true;
            }
            if let Control::Release(w) = std::mem::replace(c, Control::Done) {
                let _ = w.send(nodes.to_vec());
            }
            false
        });
    }
}

impl<M, T> Kept for Driver<M, T>
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    fn poll_keep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let span = self.span.clone();
        let _entered = span.enter();
        let Some(mut keep) = self.keep.take() else {
            return Poll::Ready(());
        };
        let done = self.poll_kept(&mut keep, cx);
        self.keep = Some(keep);
        done
    }

    fn finish(mut self: Box<Self>) {
        let span = self.span.clone();
        let _entered = span.enter();
        let Some(mut keep) = self.keep.take() else {
            return;
        };
        if let Some(nodes) = keep.finish_nodes.take() {
            // Released and nobody can ask more: the machine goes back before the answer.
            self.wind_up();
            keep.answer_releases(&nodes);
            return;
        }
        end_hold(&self.shared, End::Released);
        // Nothing is in flight that the machine still waits for: it may serve again.
        if self.inflight.is_empty() {
            self.wind_up();
        }
    }
}

struct Driver<M, T: Transport> {
    machine: M,
    transport: Arc<T>,
    clock: Clock,
    shared: Arc<Hold>,
    /// Release hints were asked for (once, when the lock was first found busy).
    listened: bool,
    /// Release hints, while the acquisition waits for a busy lock (boxed: a held lock has
    /// none).
    hints: Option<Box<Hints>>,
    /// Replies the transport gave at once, fed to the machine as the next input.
    answered: std::collections::VecDeque<(NodeId, OpId, T::Reply)>,
    /// What the machine reported that the caller of the drive loop has not looked at yet.
    steps: std::collections::VecDeque<Step>,
    /// Commands in flight, polled by whoever drives the machine (no task per command).
    inflight: Vec<InFlight<T::Reply>>,
    /// The machine's deadline, one timer for the driver's whole life.
    timer: Timer,
    recycle: Option<Recycle<M>>,
    span: tracing::Span,
    /// An inline release has been asked of the machine.
    releasing: bool,
    /// The acquisition's slot in the client's [`Gate`], until a server first answers it.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A reply has been fed to the machine.
    heard: bool,
    /// The command in flight that the transport answers itself ([`Transport::is_local`]).
    local_op: Option<OpId>,
    /// Waiting for a slot of the gate before a release.
    entering: Option<BoxFuture<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// Set once a keeper drives the lock.
    keep: Option<Box<Keep>>,
}

impl<M, T> Driver<M, T>
where
    M: LockMachine<Command = T::Command, Reply = T::Reply> + Send + 'static,
    T: Transport,
{
    /// The drive loop, one step at a time, shared by the acquisition, the guard's inline
    /// release and the keeper: hands out what the machine emitted, reports the first
    /// thing it said that the caller waits for, else applies one input (a reply, a release
    /// hint, the deadline) and reports `Moved`. Everything lives in the driver, so a step
    /// dropped midway loses nothing.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        self.drain();
        if let Some(step) = self.steps.pop_front() {
            return Poll::Ready(step);
        }
        if !self.answered.is_empty() {
            // Answered at once: read now, after the whole batch went out.
            let now = self.clock.now();
            self.heard = true;
            while let Some((node, op, reply)) = self.answered.pop_front() {
                self.machine.handle_reply(now, node, op, reply);
            }
            return Poll::Ready(Step::Moved);
        }
        if let Poll::Ready(first) = poll_next_reply(&mut self.inflight, cx) {
            self.feed(first, cx);
            return Poll::Ready(Step::Moved);
        }
        if self.machine.state() == State::Waiting && self.poll_hint(cx).is_ready() {
            self.machine.wake(self.clock.now());
            return Poll::Ready(Step::Moved);
        }
        self.timer
            .set(self.machine.poll_timeout().map(|t| self.clock.to_tokio(t)));
        if self.timer.poll_fired(cx).is_ready() {
            // Judge by the clock, not by the timer: it may have fired late.
            self.machine.handle_timeout(self.clock.now());
            return Poll::Ready(Step::Moved);
        }
        Poll::Pending
    }

    /// Gives back the buffers of a round that is over while the lock is held: a held lock
    /// may wait hours for its next round, and thousands of them are held at once.
    fn trim(&mut self) {
        // Over: held, and nothing in flight but what stays there while held (an etcd lock's
        // long-poll, which keeps its place). Mid-round, buffers would only shrink to grow.
        let over = self.inflight.iter().all(|f| Some(f.op) == self.local_op);
        if over && matches!(self.machine.state(), State::Held { .. }) {
            self.inflight.shrink_to_fit();
            self.steps.shrink_to_fit();
            self.answered.shrink_to_fit();
            self.machine.shrink();
        }
    }

    /// Hands out everything the machine emitted: commands to the transport, events to the
    /// guard's state and the step queue.
    fn drain(&mut self) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                Output::Transmit(t) => self.transmit(t),
                Output::Event(e) => self.event(e),
            }
        }
    }

    /// Ready when the lock may have been released: once the subscription to release hints
    /// took (a release may have happened before it did), then at each hint. Hints are asked
    /// for once, when the lock is first found busy, where the machine says to listen.
    fn poll_hint(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.listened {
            self.listened = true;
            if let Some(channel) = self.machine.release_channel() {
                self.hints = Some(Box::new(Hints {
                    subscribing: Some(self.transport.subscribe(channel.to_vec())),
                    subscription: None,
                    wakeup: None,
                }));
            }
        }
        let Some(hints) = self.hints.as_mut() else {
            return Poll::Pending;
        };
        if let Some(setting_up) = hints.subscribing.as_mut() {
            let subscription = std::task::ready!(setting_up.as_mut().poll(cx));
            hints.subscribing = None;
            hints.subscription = subscription;
            if hints.subscription.is_some() {
                return Poll::Ready(());
            }
        }
        let Some(subscription) = &hints.subscription else {
            return Poll::Pending;
        };
        let notify = subscription.notify.clone();
        let wakeup = hints
            .wakeup
            .get_or_insert_with(|| Box::pin(async move { notify.notified().await }));
        std::task::ready!(wakeup.as_mut().poll(cx));
        hints.wakeup = None;
        Poll::Ready(())
    }

    /// Ready once the driver has a slot of the client's gate (at once if the client has
    /// none): a burst of releases goes out at the pace answers come back, like acquisitions,
    /// instead of timing out in the queue.
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.is_none() {
            if let Some(gate) = self.transport.gate() {
                let entering = self.entering.get_or_insert_with(|| Box::pin(gate.slot()));
                self.slot = std::task::ready!(entering.as_mut().poll(cx));
                self.entering = None;
            }
        }
        Poll::Ready(())
    }

    /// Drives the machine until it holds the lock (its fence) or gives up.
    async fn acquire_inline(&mut self) -> Result<Option<Fence>, LockError> {
        tracing::debug!("acquiring");
        loop {
            let step = std::future::poll_fn(|cx| self.poll_step(cx)).await;
            if self.slot.is_some() && (self.heard || self.machine.state() != State::Acquiring) {
                // A server answered, or the attempt has an outcome: the next acquisition may
                // start (a queued one may wait long on a watch; it must not hold a slot).
                self.slot = None;
            }
            match step {
                Step::Acquired(fence) => {
                    // Hints serve only the acquisition.
                    self.hints = None;
                    return Ok(fence);
                }
                Step::Failed(error) => return Err(error),
                _ => {}
            }
        }
    }

    /// Hands the machine `first` and every other reply already in, stamped with one reading
    /// of the clock (they were all read at this moment).
    fn feed(&mut self, first: (NodeId, OpId, T::Reply), cx: &mut Context<'_>) {
        let now = self.clock.now();
        let (node, op, reply) = first;
        self.heard |= self.local_op != Some(op);
        self.machine.handle_reply(now, node, op, reply);
        while let Poll::Ready(Some((node, op, reply))) = poll_ready_reply(&mut self.inflight, cx) {
            self.heard |= self.local_op != Some(op);
            self.machine.handle_reply(now, node, op, reply);
        }
    }

    /// Hands `t` to the transport; its reply comes back through `inflight`.
    fn transmit(&mut self, t: lucky_core::Transmit<T::Command>) {
        match self.transport.send_now(t.node.index(), t.command) {
            Ok(reply) => self.answered.push_back((t.node, t.op, reply)),
            Err(command) => {
                if self.transport.is_local(&command) {
                    self.local_op = Some(t.op);
                }
                self.inflight.push(InFlight {
                    node: t.node,
                    op: t.op,
                    reply: Box::pin(self.transport.send(t.node.index(), command)),
                });
            }
        }
    }

    /// Keeps a held lock (renewal, loss, release), or, once the guard is gone, releases it;
    /// ready when there is nothing left to do (then [`Kept::finish`]).
    fn poll_kept(&mut self, keep: &mut Keep, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.trim();
            if keep.want_release {
                std::task::ready!(self.poll_slot(cx));
                keep.want_release = false;
                let _ = self.machine.release(self.clock.now());
            }
            // Done, nobody waiting, and no guard that could still ask: the driver ends once
            // the commands still in flight (cleanup the machine sent without waiting) are out,
            // or after a grace period if a server does not answer them.
            let idle = matches!(self.machine.state(), State::Done | State::Idle);
            let mut in_grace = false;
            if idle
                && !keep.release_asked()
                && !keep.guard_open
                && self.steps.is_empty()
                && self.answered.is_empty()
            {
                let now = tokio::time::Instant::now();
                let until = keep
                    .grace
                    .as_ref()
                    .map_or(now + CLEANUP_GRACE, |s| s.deadline());
                if self.inflight.is_empty() || now >= until {
                    return Poll::Ready(());
                }
                // Boxed, and made only for the grace period: a held lock's state stays small
                // for the hours it may be held.
                if keep.grace.is_none() {
                    keep.grace = Some(Box::pin(tokio::time::sleep_until(until)));
                }
                in_grace = true;
            }
            if let Poll::Ready(step) = self.poll_step(cx) {
                match step {
                    Step::Released(nodes) => {
                        self.slot = None;
                        keep.answer_extensions(|| Err(Error::Lost));
                        // Released and nobody can ask anything more: the machine goes back
                        // (in `finish`) before the answer, so the caller's next acquisition
                        // finds it; commands still in flight (cleanup the machine does not
                        // wait for) finish in the background.
                        let closing = keep.release_asked() || !keep.guard_open;
                        if closing && self.machine.state() == State::Done && self.recycle.is_some()
                        {
                            keep.finish_nodes = Some(nodes);
                            return Poll::Ready(());
                        }
                        keep.answer_releases(&nodes);
                    }
                    // The answer to `extend()` goes out after the guard's state has the new
                    // deadline (or the end), so the caller reads what it was told.
                    Step::Extension(outcome) => keep.answer_extensions(|| {
                        outcome
                            .clone()
                            .map_err(|e| e.map_or(Error::Lost, Error::Lock))
                    }),
                    Step::Moved | Step::Acquired(_) | Step::Failed(_) => {}
                }
                continue;
            }
            if keep.guard_open {
                if let Poll::Ready(c) = keep.ctl.poll_recv(cx) {
                    match c {
                        Some(Control::Release(w)) => {
                            keep.asked.push(Control::Release(w));
                            keep.want_release = true;
                        }
                        Some(Control::Extend(w)) => match self.machine.extend(self.clock.now()) {
                            Ok(()) => keep.asked.push(Control::Extend(w)),
                            Err(UsageError::NotHeld) => {
                                let _ = w.send(Err(Error::Lost));
                            }
                            Err(e) => {
                                let _ = w.send(Err(Error::Usage(e)));
                            }
                        },
                        None => {
                            // The guard was dropped: release in the background.
                            keep.guard_open = false;
                            keep.want_release = true;
                        }
                        Some(Control::Done) => {}
                    }
                    continue;
                }
            }
            if in_grace {
                if let Some(sleep) = keep.grace.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                }
            }
            return Poll::Pending;
        }
    }

    /// The lock is done with: commands the machine no longer waits for finish in the
    /// background, and a finished machine goes back for reuse.
    #[allow(clippy::boxed_local)] // the driver lives in this box; unboxing would copy it
    fn wind_up(mut self: Box<Self>) {
        // What the machine said last (a release answered after the driver decided to end) is
        // read here: a machine goes back for reuse with nothing left to say, or its next
        // acquisition would read that answer as its own (a `Released` ending a fresh hold).
        self.drain();
        finish_detached(std::mem::take(&mut self.inflight), self.transport.tasks());
        if let (Some(recycle), State::Done) = (self.recycle.take(), self.machine.state()) {
            recycle(self.machine);
        }
    }

    /// Applies what an event means for the guard, and queues what a drive loop waits for.
    fn event(&mut self, e: Event) {
        let step = match e {
            Event::Acquired { fence, valid_until } => {
                self.shared.extend(valid_until.as_nanos());
                let valid_ms = valid_until
                    .saturating_duration_since(self.clock.now())
                    .as_millis();
                tracing::info!(fence = fence.map(Fence::get), valid_ms, "acquired");
                Step::Acquired(fence)
            }
            Event::Failed(error) => {
                tracing::info!(%error, "not acquired");
                Step::Failed(error)
            }
            Event::Retrying { attempt, .. } => {
                tracing::debug!(attempt, "lock busy, waiting");
                return;
            }
            Event::Released { nodes } => {
                end_hold(&self.shared, End::Released);
                tracing::info!("released");
                Step::Released(nodes)
            }
            Event::Extended { valid_until } => {
                self.shared.extend(valid_until.as_nanos());
                tracing::debug!("extended");
                Step::Extension(Ok(valid_until))
            }
            Event::ExtendFailed { error, .. } => {
                tracing::warn!(%error, "extension failed");
                Step::Extension(Err(Some(error)))
            }
            Event::Lost { reason } => {
                tracing::warn!(?reason, "lock lost");
                end_hold(&self.shared, End::Lost);
                Step::Extension(Err(match reason {
                    LostReason::ExtendFailed(error) => Some(error),
                    LostReason::Expired => None,
                }))
            }
            Event::TimeWentBack { by, valid_until } => {
                // The driver's clock is monotonic: this is a bug of ours. The machine moved
                // its deadlines back; so does the guard.
                tracing::error!(?by, "the monotonic clock stepped back");
                debug_assert!(by.is_zero(), "the monotonic clock stepped back by {by:?}");
                if let Some(v) = valid_until {
                    self.shared.shorten(v.as_nanos());
                }
                return;
            }
        };
        self.steps.push_back(step);
    }
}

/// What one step of the drive loop reports.
enum Step {
    /// An input was applied; look at the machine again.
    Moved,
    /// The lock is held, with this fence.
    Acquired(Option<Fence>),
    /// The acquisition gave up (its clean-up done).
    Failed(LockError),
    /// Released; each node's outcome.
    Released(Vec<NodeOutcome>),
    /// The outcome of an extension: the new deadline, or why not (`None`: no longer held).
    Extension(Result<lucky_core::Instant, Option<LockError>>),
}

/// Ends the hold (once) and wakes whoever waits in `Guard::lost()`.
fn end_hold(shared: &Hold, how: End) {
    if let (_, true) = shared.end(how) {
        shared.notify.notify_waiters();
    }
}

/// Leaves the waiters of a hold when dropped (`lost()` may be cancelled).
struct Waiting<'a>(&'a Hold);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.unregister();
    }
}

/// A command handed to the transport: its address beside its boxed reply (one allocation per
/// command).
struct InFlight<R> {
    node: NodeId,
    op: OpId,
    reply: BoxFuture<R>,
}

/// Lets commands already handed to the transport complete on their own (bounded), with
/// nobody reading their replies.
fn finish_detached<R: Send + 'static>(inflight: Vec<InFlight<R>>, tasks: &Arc<Tasks>) {
    if inflight.is_empty() {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let token = tasks.enter();
        rt.spawn(async move {
            let _token = token;
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

/// The first reply among the commands in flight, with its address (pending when none is
/// ready).
fn poll_next_reply<R>(
    inflight: &mut Vec<InFlight<R>>,
    cx: &mut Context<'_>,
) -> Poll<(NodeId, OpId, R)> {
    for i in 0..inflight.len() {
        if let Poll::Ready(r) = inflight[i].reply.as_mut().poll(cx) {
            // `remove`, not `swap_remove`: commands not yet polled keep their order, so
            // each node receives them in the order the machine emitted them.
            let done = inflight.remove(i);
            return Poll::Ready((done.node, done.op, r));
        }
    }
    Poll::Pending
}

/// A reply that has already arrived, if any (never pending).
fn poll_ready_reply<R>(
    inflight: &mut Vec<InFlight<R>>,
    cx: &mut Context<'_>,
) -> Poll<Option<(NodeId, OpId, R)>> {
    match poll_next_reply(inflight, cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    }
}

/// The first reply among the commands in flight (pending forever when none is).
async fn next_reply<R>(inflight: &mut Vec<InFlight<R>>) -> (NodeId, OpId, R) {
    std::future::poll_fn(|cx| poll_next_reply(inflight, cx)).await
}

/// One timer per driver, moved only when the machine's deadline moves: most inputs leave the
/// deadline where it was, and re-arming a fresh sleep each time costs a trip through the
/// runtime's timer wheel.
///
/// The sleep is made on first use, inside the runtime: a lock future may be built outside
/// one (`runtime.block_on(request.into_future())`).
struct Timer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: Option<tokio::time::Instant>,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            sleep: None,
            armed: None,
        }
    }

    fn set(&mut self, deadline: Option<tokio::time::Instant>) {
        if deadline != self.armed {
            if let (Some(d), Some(sleep)) = (deadline, self.sleep.as_mut()) {
                sleep.as_mut().reset(d);
            }
            self.armed = deadline;
        }
    }

    /// Ready at the armed deadline (never, if none); then disarmed.
    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.armed else {
            return Poll::Pending;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        let fired = sleep.as_mut().poll(cx);
        if fired.is_ready() {
            self.armed = None;
        }
        fired
    }
}

/// A held lock. Keeps the lease alive in the background (when auto-extension is on) and
/// releases on [`release`](Guard::release) or, in the background, on drop.
///
/// A lock without auto-extension needs no keeper while held: its guard keeps the driver and
/// runs it in the caller's task on `release` (the first manual `extend` moves it to a keeper).
/// `lost()` and `is_held()` read the clock, so they need no task.
pub struct Guard {
    name: String,
    key: Option<bytes::Bytes>,
    fence: Option<Fence>,
    shared: Arc<Hold>,
    clock: Clock,
    link: std::sync::Mutex<Link>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.name)
            .field("fence", &self.fence)
            .field("valid_until", &self.valid_until())
            .field("ended", &self.shared.ended())
            .finish()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // A parked driver goes to a keeper that releases; a kept driver's closed channel
        // tells it so.
        if let Link::Parked(p) = std::mem::replace(self.link_mut(), Link::Gone) {
            drop(p.into_task());
        }
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Release(_) => "Release",
            Control::Extend(_) => "Extend",
            Control::Done => "Done",
        })
    }
}

impl Guard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key the lock is held under on the servers, when the backend names one per hold
    /// (etcd: `<name>/<lease hex>`, the key [`guarded_put`](crate::etcd::guarded_put) checks).
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
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
    /// the latest (even if the driver is late), or once released.
    pub async fn lost(&self) {
        loop {
            // Ready to be woken before registering: an end after `register` wakes this.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let on = self.shared.register();
            let _waiting = Waiting(&self.shared);
            let deadline = self.deadline();
            if !on || self.clock.now() >= deadline {
                return;
            }
            // Woken by the end, or by the deadline (which an extension may have moved: look
            // again).
            tokio::select! {
                biased;
                () = &mut notified => {}
                () = tokio::time::sleep_until(self.clock.to_tokio(deadline)) => {}
            }
        }
    }

    /// Extends the lock now (auto-extension does this by itself) and returns the new local
    /// deadline. Fails with [`Error::Lock`] when the extension did not win (the lock stays
    /// held until its old deadline) and with [`Error::Lost`] once the lock is lost or released.
    pub async fn extend(&self) -> Result<std::time::Instant, Error> {
        let ctl = {
            let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
            if let Link::Parked(_) = &*link {
                if let Link::Parked(p) = std::mem::replace(&mut *link, Link::Gone) {
                    *link = p.into_task().map_or(Link::Gone, Link::Task);
                }
            }
            match &*link {
                Link::Task(ctl) => ctl.0.clone(),
                Link::Parked(_) | Link::Gone => return Err(Error::DriverGone),
            }
        };
        let (tx, rx) = oneshot::channel();
        if !ctl.send(Control::Extend(tx)) {
            return Err(Error::DriverGone);
        }
        let valid_until = rx.await.map_err(|_| Error::DriverGone)??;
        Ok(self.clock.to_std(valid_until))
    }

    /// Releases the lock on every node and returns each node's outcome (`Granted`: our key
    /// was deleted; `Refused`: it was not there; or why the node failed). Bounded by the
    /// per-node timeout.
    pub async fn release(mut self) -> Result<Vec<NodeOutcome>, Error> {
        match std::mem::replace(self.link_mut(), Link::Gone) {
            Link::Parked(p) => {
                let mut releasing = Releasing(Some(p));
                let nodes = std::future::poll_fn(|cx| match releasing.0.as_mut() {
                    Some(p) => p.poll_release(cx),
                    None => Poll::Ready(Vec::new()),
                })
                .await;
                if let Some(p) = releasing.0.take() {
                    p.finish();
                }
                Ok(nodes)
            }
            Link::Task(ctl) => {
                let (tx, rx) = oneshot::channel();
                if !ctl.0.send(Control::Release(tx)) {
                    return Err(Error::DriverGone);
                }
                let outcome = rx.await.map_err(|_| Error::DriverGone);
                // The guard's side closes once the release is answered, as it did before.
                drop(ctl);
                outcome
            }
            Link::Gone => Err(Error::DriverGone),
        }
    }

    fn link_mut(&mut self) -> &mut Link {
        self.link.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(all(test, not(lucky_loom)))]
mod gate_tests {
    use super::*;

    #[tokio::test]
    async fn a_request_waits_for_a_slot_at_most_its_wait() {
        let gate = Gate::new(1);
        let held = gate.enter(lucky_core::Wait::None).await.unwrap();
        let wait = std::time::Duration::from_millis(20);
        let err = gate.enter(lucky_core::Wait::For(wait)).await.unwrap_err();
        assert!(
            matches!(err, Error::Overloaded { in_flight: 1, waited } if waited == wait),
            "{err}"
        );
        assert_eq!(err.kind(), crate::ErrorKind::Local);
        // A slot given back is free for the next request.
        drop(held);
        assert!(gate.enter(lucky_core::Wait::For(wait)).await.is_ok());
    }
}
