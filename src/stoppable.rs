//! Blocking waits that another thread can cut short: a descriptor and a stop eventfd polled
//! together.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

/// Waits until `fd` is readable (`Ok(true)`) or `stop` is signalled (`Ok(false)`); retries on
/// EINTR.
pub fn wait_readable(fd: BorrowedFd<'_>, stop: &EventFd) -> Result<bool, Errno> {
    // SAFETY: `stop` owns this descriptor and outlives the borrow, which ends with this call.
    let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
    loop {
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(stop_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(fds[1].revents().is_none_or(|events| events.is_empty())),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn readable_or_stopped() {
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        let stop = EventFd::new(0).expect("eventfd");
        std::io::Write::write_all(&mut writer, b"x").expect("write");
        assert_eq!(wait_readable(reader.as_fd(), &stop), Ok(true));
        let (idle, _keep) = std::io::pipe().expect("pipe");
        stop.write(1).expect("stop");
        assert_eq!(wait_readable(idle.as_fd(), &stop), Ok(false));
    }
}
