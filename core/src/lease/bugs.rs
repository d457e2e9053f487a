//! The lease-record protocol's deliberate bugs (feature `bugs`; never in a release build),
//! each caught by a simulator scenario.
// Without the feature only the machine's `bug()` checks name it (always false then).
#![cfg_attr(not(feature = "bugs"), allow(dead_code))]

crate::bugs::declare_bugs! {
    /// A deliberately wrong behaviour of the lease-record machine or of a store's encoding.
    pub enum LeaseBug {
        /// The store deletes the record on release (as several lock libraries' Mongo and SQL
        /// providers do): the fence restarts at 1 for the next holder.
        DeleteOnRelease => "lease-delete-on-release",
        /// Validity counts from when a take's or renewal's answer was read, not from when it
        /// was sent (a slow answer or a pause stretches the lock past the record's expiry).
        ValidityFromReceive => "lease-validity-from-receive",
        /// A take whose outcome is unknown counts as granted, without inspecting the record.
        UnknownAsGranted => "lease-unknown-as-granted",
        /// MongoDB's writes are acknowledged by the primary alone (`w: 1`): a failover rolls
        /// back a take or renewal its holder was told about.
        MongoW1 => "mongo-w1",
    }
}
