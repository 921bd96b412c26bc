//! The device core driven with plain guest memory and eventfds (no KVM, no real device).

use std::cell::Cell;
use std::ops::{ControlFlow, Range};
use std::sync::mpsc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::super::worker::{Kicks, Watch};
use super::*;

const NAME: &str = "test-device";
const MEM_SIZE: u64 = 0x40_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("test memory")
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

fn clone(fd: &EventFd) -> EventFd {
    fd.try_clone().expect("clone eventfd")
}

/// A ready queue at `base` holding one request the device may write.
fn queue_at(mem: &GuestMemoryMmap, base: u64) -> Queue {
    let mock = MockSplitQueue::create(mem, GuestAddress(base), 16);
    let write = u16::try_from(VRING_DESC_F_WRITE).expect("a flag bit");
    let request = RawDescriptor::from(Descriptor::new(0x30_0000, 64, write, 0));
    mock.add_desc_chains(&[request], 0).expect("chain");
    mock.create_queue().expect("queue")
}

/// An activation with `queues`, one new kick per queue; also returns copies of the kicks.
fn activation(mem: &GuestMemoryMmap, queues: Vec<Queue>) -> (Activation, Vec<EventFd>) {
    let kicks: Vec<EventFd> = queues.iter().map(|_| eventfd()).collect();
    let copies = kicks.iter().map(clone).collect();
    let activation = Activation {
        mem: mem.clone(),
        queues,
        kicks,
        interrupt: Interrupt::new(eventfd()),
        acked_features: 0,
    };
    (activation, copies)
}

/// What the worker started by [`start_serving`] reports for each kick: the queue's descriptor
/// table and how many requests it returned to the driver.
type Served = (u64, usize);

/// Serves each queue on its kick: returns every pending request, then reports on `report`.
fn start_serving(
    report: mpsc::Sender<Served>,
) -> impl FnOnce(Activation) -> Result<Box<dyn Serve>, ActivateError> {
    move |activation: Activation| {
        Ok(Box::new(activation.serve_queues(move |queue, mem, _| {
            let mut served = 0;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                queue
                    .add_used(mem, chain.head_index(), 0)
                    .expect("used ring inside memory");
                served += 1;
            }
            let _ = report.send((queue.desc_table(), served));
        })))
    }
}

/// The start of a device whose backend must not be touched.
fn must_not_start(activation: Activation) -> Result<Kicks<fn(usize)>, ActivateError> {
    drop(activation);
    panic!("the backend was started although a queue was refused");
}

fn assert_not_served_anymore(kick: &EventFd) {
    kick.write(1).expect("kick");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(kick.read().expect("still pending"), 1, "nobody drained it");
}

#[test]
fn activate_reset_and_activate_again_serves_the_fresh_queues() {
    let mem = memory();
    let mut core = DeviceCore::new(NAME, ThreadKind::Rng).expect("core");

    let (first, first_kicks) = activation(&mem, vec![queue_at(&mem, 0x1_0000)]);
    let (report, served) = mpsc::channel();
    core.activate(first, 0..1, start_serving(report))
        .expect("activate");
    assert!(core.is_active());
    first_kicks[0].write(1).expect("kick");
    let timeout = Duration::from_secs(5);
    assert_eq!(served.recv_timeout(timeout).expect("served"), (0x1_0000, 1));

    core.reset();
    assert!(!core.is_active());
    // reset returned only after the thread ended: it dropped its handler (and the sender).
    assert_eq!(served.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    assert_not_served_anymore(&first_kicks[0]);

    // The driver starts over with new queues elsewhere; they are the ones served.
    let (second, second_kicks) = activation(&mem, vec![queue_at(&mem, 0x2_0000)]);
    let (report, served) = mpsc::channel();
    core.activate(second, 0..1, start_serving(report))
        .expect("activate again");
    assert!(core.is_active());
    second_kicks[0].write(1).expect("kick");
    assert_eq!(served.recv_timeout(timeout).expect("served"), (0x2_0000, 1));
    assert_not_served_anymore(&first_kicks[0]);
    core.reset();
    assert_not_served_anymore(&second_kicks[0]);
}

/// Activates `core` needing the queues in `required`, expecting a refusal naming this device
/// (and the backend untouched, the device inactive); returns the queue named and the message.
fn refused(
    core: &mut DeviceCore,
    activation: Activation,
    required: Range<usize>,
) -> (usize, String) {
    let err = core
        .activate(activation, required, must_not_start)
        .expect_err("a queue is refused");
    assert!(!core.is_active(), "a failed activation leaves it inactive");
    match err {
        ActivateError::BadQueue {
            device: NAME,
            queue,
        } => (queue, err.to_string()),
        other => panic!("not a refused queue of {NAME}: {other:?}"),
    }
}

#[test]
fn a_queue_not_ready_or_outside_guest_memory_is_refused_with_device_and_queue_named() {
    let mem = memory();
    let mut core = DeviceCore::new(NAME, ThreadKind::Rng).expect("core");

    let unready = Queue::new(16).expect("queue");
    let (bad, _kicks) = activation(&mem, vec![queue_at(&mem, 0x1_0000), unready]);
    let (queue, message) = refused(&mut core, bad, 0..2);
    assert_eq!(queue, 1);
    assert_eq!(
        message,
        "test-device: queue 1 is not ready or not inside guest memory"
    );

    let mut outside = queue_at(&mem, 0x1_0000);
    outside.set_used_ring_address(Some(0xffff_f000), Some(0));
    let (bad, _kicks) = activation(&mem, vec![outside]);
    assert_eq!(refused(&mut core, bad, 0..1).0, 0);

    // A queue the device does not need (like virtio-fs's high-priority queue) may stay unready.
    let unready = Queue::new(16).expect("queue");
    let (good, _kicks) = activation(&mem, vec![unready, queue_at(&mem, 0x1_0000)]);
    let (report, _served) = mpsc::channel();
    core.activate(good, 1..2, start_serving(report))
        .expect("queue 0 is not required");
    assert!(core.is_active());

    // Asking for more queues than the driver has is refused with the first missing one (and
    // the running worker is stopped first, as on reset).
    let (short, _kicks) = activation(&mem, vec![queue_at(&mem, 0x2_0000)]);
    assert_eq!(refused(&mut core, short, 0..2).0, 1);
}

/// What a worker serves that cannot be watched: epoll refuses regular files.
struct Unwatchable(std::fs::File);

impl Serve for Unwatchable {
    fn watch(&self, watch: &Watch) -> std::io::Result<()> {
        watch.add(&self.0, 0)
    }

    fn serve(&mut self, _token: u64, _watch: &Watch) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

#[test]
fn a_backend_or_worker_that_fails_to_start_is_an_error_and_leaves_the_device_inactive() {
    let mem = memory();
    let mut core =
        DeviceCore::with_worker_name(NAME, "test-worker".into(), ThreadKind::Rng).expect("core");

    let (ok, _kicks) = activation(&mem, vec![queue_at(&mem, 0x1_0000)]);
    let err = core
        .activate(ok, 0..1, |_| -> Result<Unwatchable, _> {
            Err(ActivateError::Backend {
                device: NAME,
                what: "cannot claim the backend".into(),
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            })
        })
        .expect_err("backend fails");
    assert!(
        err.to_string()
            .starts_with("test-device: cannot claim the backend: "),
        "{err}"
    );
    assert!(!core.is_active());

    let file = tempfile::tempfile().expect("temp file");
    let (ok, _kicks) = activation(&mem, vec![queue_at(&mem, 0x1_0000)]);
    let err = core
        .activate(ok, 0..1, |_| Ok(Unwatchable(file)))
        .expect_err("worker fails");
    assert!(
        matches!(&err, ActivateError::Backend { device: NAME, what, .. }
            if what == "cannot start the worker thread"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("test-device: cannot start the worker thread: "),
        "{err}"
    );
    assert!(!core.is_active());
    let torn_down = Cell::new(false);
    core.reset_with(|| torn_down.set(true));
    assert!(
        !torn_down.get(),
        "nothing was started, nothing to tear down"
    );
}

#[test]
fn reset_of_an_inactive_device_is_a_no_op() {
    let mut core = DeviceCore::new(NAME, ThreadKind::Rng).expect("core");
    let torn_down = Cell::new(false);
    core.reset_with(|| torn_down.set(true));
    core.reset();
    assert!(!torn_down.get());
    assert!(!core.is_active());
    assert_eq!(core.name(), NAME);
}

#[test]
fn reset_tears_the_backend_down_while_the_worker_runs_then_joins_it() {
    let mem = memory();
    let mut core = DeviceCore::new(NAME, ThreadKind::Rng).expect("core");
    let (first, kicks) = activation(&mem, vec![queue_at(&mem, 0x1_0000)]);
    let (report, served) = mpsc::channel();
    core.activate(first, 0..1, start_serving(report))
        .expect("activate");

    let mut torn_down = 0;
    core.reset_with(|| {
        // The worker still serves while the backend is taken down.
        kicks[0].write(1).expect("kick");
        let report = served.recv_timeout(Duration::from_secs(5));
        assert_eq!(report.expect("served during teardown"), (0x1_0000, 1));
        torn_down += 1;
    });
    assert_eq!(torn_down, 1);
    assert_eq!(served.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    assert_not_served_anymore(&kicks[0]);

    core.reset_with(|| torn_down += 1);
    assert_eq!(torn_down, 1, "a second reset finds nothing to tear down");
}
