//! The virtio-rng worker: fills the guest's buffers from getrandom(2) (allowed for every thread
//! in `common.rs`) and raises the interrupt (an irqfd write). Nothing of its own but its loop.

use super::rules::Group;

/// The rng worker's groups.
pub fn groups() -> Vec<Group> {
    vec![super::common::worker()]
}
