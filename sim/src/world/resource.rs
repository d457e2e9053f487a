//! The fenced resource: the storage a holder writes to. It accepts a write only with a fence
//! at or above every fence it accepted before (unless the `fence-unchecked` bug is injected),
//! and tells the oracle about every write that reaches it.

use crate::oracle::Violation;
use crate::Protocol;

use super::queue::Ev;
use super::World;

/// The resource's state.
#[derive(Clone, Copy, Debug)]
pub(super) struct Resource {
    /// The highest fence it accepted.
    last: Option<u64>,
    /// The injected `fence-unchecked` bug: it accepts any fence.
    unchecked: bool,
}

impl Resource {
    pub(super) fn new(unchecked: bool) -> Resource {
        Resource {
            last: None,
            unchecked,
        }
    }

    /// A write with `fence` arrives: whether it is accepted, and the fence order it breaks
    /// if it is accepted below one accepted before.
    fn write(&mut self, fence: Option<u64>) -> (bool, Option<Violation>) {
        let accepted = !matches!(
            (fence, self.last),
            (Some(f), Some(last)) if f < last && !self.unchecked
        );
        let mut broke = None;
        if accepted {
            if let (Some(f), Some(last)) = (fence, self.last) {
                if f < last {
                    broke = Some(Violation::FenceOrder {
                        before: last,
                        after: f,
                    });
                }
            }
            if fence.is_some() {
                self.last = fence.max(self.last);
            }
        }
        (accepted, broke)
    }
}

impl<P: Protocol> World<P> {
    /// `client` sends a write under `claim`, with the claim's fence, over the network.
    pub(super) fn send_write(&mut self, client: usize, claim: usize) {
        let d = self.net.delay();
        let fence = self.oracle.claims[claim].fence;
        self.push(
            self.now + d,
            Ev::Write {
                client,
                claim,
                fence,
            },
        );
    }

    /// A write reaches the resource; its acknowledgement goes back to `client`.
    pub(super) fn write(&mut self, client: usize, claim: usize, fence: Option<u64>) {
        let (accepted, broke) = self.resource.write(fence);
        self.oracle.found.extend(broke);
        if accepted {
            self.report.writes.0 += 1;
        } else {
            self.report.writes.1 += 1;
        }
        self.oracle.write(claim, self.now, fence, accepted);
        let d = self.net.delay();
        self.push(self.now + d, Ev::WriteAck { client, claim });
    }
}
