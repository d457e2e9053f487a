//! The session-lock protocol's deliberate bugs (feature `bugs`; never in a release build),
//! each caught by a simulator scenario.
// Without the feature only the machine's `bug()` checks name it (always false then).
#![cfg_attr(not(feature = "bugs"), allow(dead_code))]

crate::bugs::declare_bugs! {
    /// A deliberately wrong behaviour of the session-lock machine.
    pub enum SessionBug {
        /// The probe counts any answer as proof, without checking that the same server
        /// session still holds the lock: a session the server ended and a driver silently
        /// replaced (JDBC's `autoReconnect`, a pooler handing out another backend) keeps its
        /// holder believing.
        NoSessionCheck => "session-no-backend-check",
        /// A lock request whose answer was lost (the session broke after sending it, or no
        /// answer came) counts as locked, with the next fence guessed, instead of ending the
        /// session.
        ClaimUnconfirmed => "session-claim-unconfirmed",
        /// The file store deletes the lock file on release (as several popular file-lock
        /// libraries do): the next holder locks a new file, and must wait out the old
        /// holder's heartbeat before it may trust it.
        FileUnlinkOnRelease => "file-unlink-on-release",
        /// The file store reports the fence before it is durable (no fsync, no rename): a
        /// host crash loses it, and the next holder gets the same fence again.
        FileFenceNotDurable => "file-fence-not-durable",
    }
}
