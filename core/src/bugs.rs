//! What every protocol's deliberate bugs share: a set of them (`Bugs`) and the macro that
//! declares one protocol's list (`redlock/bugs.rs`, `etcd/bugs.rs`). Each protocol keeps its
//! bugs in its own folder; the simulator proves that its oracle catches each one. Compiled in
//! only with the `bugs` feature (without it the modules are private and every check is false).
// Without the feature only the machines' `bug()` checks name it (always false then).
#![cfg_attr(
    not(feature = "bugs"),
    allow(dead_code, unreachable_pub, unused_macros)
)]

use core::marker::PhantomData;

/// One protocol's deliberate bugs (declared with `declare_bugs!`).
pub trait Bug: Copy {
    /// Its bit in a [`Bugs`] set.
    fn bit(self) -> u32;
}

/// A set of one protocol's bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bugs<B>(u32, PhantomData<B>);

impl<B> Default for Bugs<B> {
    fn default() -> Self {
        Bugs(0, PhantomData)
    }
}

impl<B: Bug> Bugs<B> {
    /// Adds `bug`.
    pub fn insert(&mut self, bug: B) {
        self.0 |= 1 << bug.bit();
    }
    /// Whether `bug` is in the set.
    pub fn contains(self, bug: B) -> bool {
        self.0 & (1 << bug.bit()) != 0
    }
}

/// Declares a protocol's bug enum with its command-line names: `ALL`, `NAMES`, `name()`,
/// `from_name()` and the [`Bug`] bit.
macro_rules! declare_bugs {
    ($(#[$m:meta])* pub enum $name:ident { $( $(#[$vm:meta])* $variant:ident => $label:literal, )* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum $name { $( $(#[$vm])* $variant, )* }

        impl $name {
            /// Every bug, in a stable order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// Their command-line names, in the same order.
            pub const NAMES: &'static [&'static str] = &[$($label),*];
            /// The name used on the command line, e.g. `ignore-drift`.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $label),* }
            }
            /// The bug named `name`.
            pub fn from_name(name: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|b| b.name() == name)
            }
        }

        impl $crate::bugs::Bug for $name {
            fn bit(self) -> u32 {
                self as u32
            }
        }
    };
}
pub(crate) use declare_bugs;
