//! Task events to containerd, in the order they happened: every event is queued under the
//! task's lock when its state changes, and one thread forwards the queue to containerd's
//! events service, so a slow or absent containerd never blocks a request and a TaskExit is
//! never overtaken by the TaskDelete that follows it.

use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;

/// An event and its topic (`/tasks/create`, ...).
type Queued = (&'static str, Box<dyn MessageDyn + Send>);

/// The queue of events to containerd.
#[derive(Debug)]
pub struct EventQueue {
    tx: Mutex<Sender<Queued>>,
}

impl EventQueue {
    /// Starts the thread forwarding events of `namespace` through `publisher` (if it cannot
    /// start, events are dropped with an error logged each).
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        let (tx, rx) = mpsc::channel::<Queued>();
        let started = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for (topic, event) in rx {
                    let event: Box<dyn MessageDyn> = event;
                    if let Err(err) =
                        publisher.publish(Context::default(), topic, &namespace, event)
                    {
                        log::error!("cannot publish {topic}: {err}");
                    }
                }
            });
        if let Err(err) = started {
            log::error!("cannot start the events thread: {err}");
        }
        Self { tx: Mutex::new(tx) }
    }

    /// Queues `event` on `topic`.
    pub fn send(&self, topic: &'static str, event: Box<dyn MessageDyn + Send>) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send((topic, event)).is_err() {
            log::error!("the events thread has ended; {topic} dropped");
        }
    }
}
