//! virtio-rng (device id 4): gives the guest entropy from the host's getrandom(2), so
//! `/dev/hwrng` works and the guest's entropy pool is seeded early in boot.
//!
//! - `device.rs`: the device (no config space, no features) on the device core.
//! - `queue.rs`: fills the requests of the queue; needs only guest memory and a
//!   [`SignalGuest`](super::SignalGuest).
//! - `event_handler.rs`: what wakes the worker thread: the request queue's kick.

mod device;
mod event_handler;
mod queue;

pub use self::device::Rng;
#[doc(hidden)]
pub use self::queue::fill_requests;
pub use self::queue::getrandom;
