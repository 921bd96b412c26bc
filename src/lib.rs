//! podvm: an rkt-style container runtime where every pod is a KVM microVM.
//!
//! The library holds everything; the `podvm` binary (`main.rs`) only parses the command line
//! and calls [`run`]. [`fuzzing`] is the entry point of the fuzz targets in `fuzz/`.

mod agent_link;
mod artifacts;
mod cli;
mod control;
mod exec_client;
#[doc(hidden)]
pub mod fuzzing;
mod image;
mod initramfs;
mod launch;
mod net;
mod pod;
mod private;
mod relay;
pub mod runtime;
mod stoppable;
mod store;
mod tree_copy;
mod vmm;

pub use cli::{run, Cli};
