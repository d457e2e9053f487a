//! The network between clients and nodes: per-link delay with jitter (so messages reorder),
//! drop, duplicate, and partitions (symmetric or one-way).

use crate::rng::Rng;

/// Link behaviour, drawn per run and changed by faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetParams {
    /// One-way delay, uniform in `min..=max` nanoseconds.
    pub delay_ns: (u64, u64),
    /// Probability of dropping a message, in parts per million.
    pub drop_ppm: u32,
    /// Probability of delivering a message twice (the copy with its own delay).
    pub dup_ppm: u32,
    /// Whether messages on one link may overtake each other. Off, each link is FIFO, as one
    /// TCP connection is; on, it models reconnects and multiple connections.
    pub reorder: bool,
}

impl NetParams {
    /// A calm LAN: 100 µs to 1 ms, nothing lost or duplicated.
    pub const CALM: NetParams = NetParams {
        delay_ns: (100_000, 1_000_000),
        drop_ppm: 0,
        dup_ppm: 0,
        reorder: false,
    };
}

/// Which way a partition cuts a client-node link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Neither direction passes.
    Both,
    /// Requests from the client do not reach the node.
    ToNode,
    /// Replies from the node do not reach the client.
    FromNode,
}

/// The network state.
#[derive(Clone, Debug)]
pub struct Net {
    /// Current link behaviour.
    pub params: NetParams,
    nodes: usize,
    /// Per (client, node): bit 0 = client->node cut, bit 1 = node->client cut.
    cut: Vec<u8>,
    /// Per (client, node, direction): the latest delivery time scheduled, for FIFO links.
    last: Vec<u64>,
    /// Per client: extra delay of every reply to it (a stalled connection), ns.
    slow: Vec<u64>,
    rng: Rng,
}

impl Net {
    /// A network of `clients` x `nodes` links.
    pub fn new(clients: usize, nodes: usize, params: NetParams, rng: Rng) -> Net {
        Net {
            params,
            nodes,
            cut: vec![0; clients * nodes],
            last: vec![0; 2 * clients * nodes],
            slow: vec![0; clients],
            rng,
        }
    }

    /// Cuts or heals one link (`client` None = every client).
    pub fn set_cut(&mut self, client: Option<usize>, node: usize, cut: Option<Cut>) {
        let bits = match cut {
            None => 0,
            Some(Cut::Both) => 3,
            Some(Cut::ToNode) => 1,
            Some(Cut::FromNode) => 2,
        };
        let clients = self.cut.len() / self.nodes.max(1);
        for c in 0..clients {
            if client.is_none_or(|x| x == c) {
                self.cut[c * self.nodes + node] = bits;
            }
        }
    }

    /// Delays every reply to `client` by `extra_ns` more (0: back to normal).
    pub fn set_slow(&mut self, client: usize, extra_ns: u64) {
        if let Some(s) = self.slow.get_mut(client) {
            *s = extra_ns;
        }
    }

    /// Heals every link and clears slow replies.
    pub fn heal_all(&mut self) {
        self.cut.iter_mut().for_each(|b| *b = 0);
        self.slow.iter_mut().for_each(|s| *s = 0);
    }

    /// Delivery times of the copies of one message sent at `now` from `client` to `node`
    /// (`to_node`) or back: none if dropped or cut, two if duplicated. Writes them to `out`,
    /// returns how many.
    pub fn send(
        &mut self,
        now: u64,
        client: usize,
        node: usize,
        to_node: bool,
        out: &mut [u64; 2],
    ) -> usize {
        let link = client * self.nodes + node;
        let bit = if to_node { 1 } else { 2 };
        if self.cut[link] & bit != 0 || self.rng.chance(self.params.drop_ppm) {
            return 0;
        }
        let copies = if self.rng.chance(self.params.dup_ppm) {
            2
        } else {
            1
        };
        let slot = 2 * link + usize::from(to_node);
        for at in out.iter_mut().take(copies) {
            *at = now + self.delay();
            if !to_node {
                *at += self.slow[client];
            }
            if !self.params.reorder {
                *at = (*at).max(self.last[slot] + 1);
                self.last[slot] = *at;
            }
        }
        copies
    }

    /// One delay draw.
    pub fn delay(&mut self) -> u64 {
        let (lo, hi) = self.params.delay_ns;
        self.rng.range(lo, hi)
    }
}
