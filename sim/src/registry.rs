//! The registered backends: the one list that names them. A backend is a folder (server
//! model, protocol glue, scenarios, bugs) that declares a [`Backend`], plus one line in
//! [`BACKENDS`]. Everything that needs every scenario or every bug asks here.

use crate::scenario::{Backend, Injected, Scenario};

/// Every backend, in the order `list` and `sweep --scenario all` show their scenarios.
pub const BACKENDS: &[&Backend] = &[
    &crate::redis::BACKEND,
    &crate::etcd::BACKEND,
    &crate::lease::BACKEND,
    &crate::session::BACKEND,
    &crate::zookeeper::BACKEND,
];

/// Every scenario of every backend.
pub fn scenarios() -> impl Iterator<Item = &'static Scenario> {
    BACKENDS.iter().flat_map(|b| b.scenarios)
}

/// The scenario named `name`.
pub fn scenario(name: &str) -> Option<&'static Scenario> {
    scenarios().find(|s| s.name == name)
}

/// Every injectable bug: each backend's machine bugs, then the resource's.
pub fn bugs() -> impl Iterator<Item = Injected> {
    BACKENDS
        .iter()
        .flat_map(|b| b.bugs.iter().map(|&name| Injected::Machine(name)))
        .chain([Injected::FenceUnchecked])
}

/// The injectable bug named `name`.
pub fn bug(name: &str) -> Option<Injected> {
    bugs().find(|b| b.name() == name)
}

/// The scenarios a run with `bug` can change: with a machine bug, those of the backend it
/// lives in; otherwise all.
pub fn scenarios_for(bug: Option<Injected>) -> impl Iterator<Item = &'static Scenario> {
    BACKENDS
        .iter()
        .filter(move |b| bug.is_none_or(|bug| bug.applies_to(b)))
        .flat_map(|b| b.scenarios)
}

#[cfg(all(test, feature = "bugs"))]
mod tests {
    use super::*;

    #[test]
    fn every_machine_bug_belongs_to_exactly_one_backend() {
        for name in BACKENDS.iter().flat_map(|b| b.bugs) {
            let owners = BACKENDS.iter().filter(|b| b.bugs.contains(name)).count();
            assert_eq!(owners, 1, "{name} is registered by {owners} backends");
        }
    }

    #[test]
    fn scenario_names_are_unique() {
        for s in scenarios() {
            assert_eq!(
                scenarios().filter(|t| t.name == s.name).count(),
                1,
                "{}",
                s.name
            );
        }
    }
}
