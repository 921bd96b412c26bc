//! The vCPU thread: KVM_RUN, its port and MMIO exits, and what the guest driver starts from
//! there (a virtio device's activation and reset run on the vCPU that wrote the status register).

use std::mem::size_of;

use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

use super::rules::{group, with_arg, Group};

/// KVM's ioctl type.
const KVMIO: u32 = 0xAE;
/// vhost's ioctl type.
const VHOST: u32 = 0xAF;
/// The tun driver's ioctl type ('T').
const TUN: u32 = 0x54;

/// `size_of::<T>()` as the 14-bit size field of an ioctl number.
const fn size<T>() -> u32 {
    // Every struct here is a few hundred bytes at most.
    #[allow(clippy::cast_possible_truncation)]
    let size = size_of::<T>() as u32;
    size
}

/// The ioctl numbers the vCPU thread may use, with what needs each.
pub fn ioctls() -> Vec<u64> {
    vec![
        // The loop itself (vcpu.rs run_loop).
        ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0),
        // KVM_GET_REGS / KVM_GET_SREGS: where the vCPU was when the guest ended (describe_end).
        ioctl_expr(_IOC_READ, KVMIO, 0x81, size::<kvm_bindings::kvm_regs>()),
        ioctl_expr(_IOC_READ, KVMIO, 0x83, size::<kvm_bindings::kvm_sregs>()),
        // Activation of vhost-vsock and vhost-net (vhost_setup.rs start_vrings): features, the
        // memory table, each vring, the net backend (the tap) and vsock's running switch.
        ioctl_expr(_IOC_READ, VHOST, 0x00, size::<u64>()), // VHOST_GET_FEATURES
        ioctl_expr(_IOC_WRITE, VHOST, 0x00, size::<u64>()), // VHOST_SET_FEATURES
        ioctl_expr(_IOC_WRITE, VHOST, 0x03, 8), // VHOST_SET_MEM_TABLE (struct vhost_memory)
        ioctl_expr(_IOC_WRITE, VHOST, 0x10, 8), // VHOST_SET_VRING_NUM (vhost_vring_state)
        ioctl_expr(_IOC_WRITE, VHOST, 0x11, 40), // VHOST_SET_VRING_ADDR (vhost_vring_addr)
        ioctl_expr(_IOC_WRITE, VHOST, 0x12, 8), // VHOST_SET_VRING_BASE
        ioctl_expr(_IOC_WRITE, VHOST, 0x20, 8), // VHOST_SET_VRING_KICK (vhost_vring_file)
        ioctl_expr(_IOC_WRITE, VHOST, 0x21, 8), // VHOST_SET_VRING_CALL
        ioctl_expr(_IOC_WRITE, VHOST, 0x30, 8), // VHOST_NET_SET_BACKEND (also on reset)
        ioctl_expr(_IOC_WRITE, VHOST, 0x61, size::<libc::c_int>()), // VHOST_VSOCK_SET_RUNNING
        // virtio-net activation: the tap's offloads as the driver accepted them (TUNSETOFFLOAD).
        ioctl_expr(_IOC_WRITE, TUN, 0xd0, size::<libc::c_uint>()),
    ]
}

/// The vCPU thread's own groups (see also `common.rs`).
pub fn groups() -> Vec<Group> {
    vec![
        with_arg(
            "KVM_RUN and its exits; vhost and tap set-up when the driver activates a device",
            libc::SYS_ioctl,
            1,
            &ioctls(),
        ),
        group(
            "device activation: each device's worker gets an epoll set of the queue kicks \
             (worker.rs Watch) and vhost devices a call eventfd per queue (vhost_setup.rs)",
            &[
                libc::SYS_epoll_create1,
                libc::SYS_epoll_ctl,
                libc::SYS_eventfd2,
            ],
        ),
    ]
}
