//! virtio-rng (device id 4): gives the guest entropy from the host's getrandom(2), so
//! `/dev/hwrng` works and the guest's entropy pool is seeded early in boot.
//!
//! - `device.rs`: the device (features, activation state) and the queue logic, which only
//!   needs guest memory and a [`SignalGuest`](super::SignalGuest).
//! - `event_handler.rs`: the worker thread woken by the request queue's kick.

mod device;
mod event_handler;

#[doc(hidden)]
pub use self::device::fill_requests;
pub use self::device::{getrandom, Rng};
