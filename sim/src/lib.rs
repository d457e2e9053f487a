//! Deterministic simulation of Lucky's lock machines against faulty server models.
