//! The fenced resource: the storage a holder writes to, one part per lock name. A part accepts
//! a write only with a fence at or above every fence it accepted before (unless the
//! `fence-unchecked` bug is injected), and the oracle hears of every write that reaches it.

use crate::oracle::Violation;
use crate::Protocol;

use super::queue::Ev;
use super::World;

/// The resource's state.
#[derive(Clone, Debug)]
pub(super) struct Resource {
    /// Per lock name, the highest fence it accepted.
    last: Vec<Option<u64>>,
    /// The injected `fence-unchecked` bug: it accepts any fence.
    unchecked: bool,
}

impl Resource {
    pub(super) fn new(names: usize, unchecked: bool) -> Resource {
        Resource {
            last: vec![None; names.max(1)],
            unchecked,
        }
    }

    /// A write with `fence` arrives at the part of lock `name`: whether it is accepted, and
    /// the fence order it breaks if it is accepted below one accepted before.
    fn write(&mut self, name: usize, fence: Option<u64>) -> (bool, Option<Violation>) {
        let last = &mut self.last[name];
        let accepted = !matches!(
            (fence, *last),
            (Some(f), Some(last)) if f < last && !self.unchecked
        );
        let mut broke = None;
        if accepted {
            if let (Some(f), Some(last)) = (fence, *last) {
                if f < last {
                    broke = Some(Violation::FenceOrder {
                        before: last,
                        after: f,
                    });
                }
            }
            if fence.is_some() {
                *last = fence.max(*last);
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
        let name = self.oracle.claims[claim].name;
        let (accepted, broke) = self.resource.write(name, fence);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_keeps_its_own_fence_order() {
        let mut r = Resource::new(2, false);
        assert_eq!(r.write(0, Some(10)), (true, None));
        // Name 1 has seen nothing yet: a lower fence is fine there.
        assert_eq!(r.write(1, Some(3)), (true, None));
        assert_eq!(r.write(1, Some(2)), (false, None));
        assert_eq!(r.write(0, Some(9)), (false, None));
        let mut unchecked = Resource::new(2, true);
        unchecked.write(0, Some(10));
        assert_eq!(
            unchecked.write(0, Some(9)),
            (
                true,
                Some(Violation::FenceOrder {
                    before: 10,
                    after: 9
                })
            )
        );
    }
}
